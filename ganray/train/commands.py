"""`ganray train` and `ganray demo`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ganray.config import TrainJob, load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    from ganray.cli import add_config_args

    train = sub.add_parser("train", help="train a GAN with Ray Train (resumes a run of the same name)",
                           description="Train a GAN on Ray Train. Re-running the same run.name and "
                                       "storage_path resumes from its latest checkpoint.")
    add_config_args(train)
    train.set_defaults(handler=cmd_train)

    demo = sub.add_parser("demo", help="train a small GAN on the built-in faces (a few minutes on 2 cores)",
                          description=f"Run {DEMO_CONFIG.name}: a local Ray, the built-in procedural faces, "
                                      "a small DCGAN. Prints where the checkpoint, samples and loss plot are.")
    add_config_args(demo, default_config=str(DEMO_CONFIG))
    demo.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(TrainJob, args.config, args.overrides)  # exits 2 on a bad config, before Ray starts
    from ganray.train.trainer import run_training

    outcome = run_training(job)
    print(f"\ntrained run '{job.run.name}' to step {outcome.step}")
    print(f"  checkpoint:  {outcome.checkpoint}")
    print(f"  sample grid: {outcome.samples_png}")
    print(f"  loss plot:   {outcome.loss_png}")
    print(f"  metrics:     {outcome.metrics_jsonl}")
    return 0
