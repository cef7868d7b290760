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

    demo = sub.add_parser(
        "demo", help="end to end on the built-in faces: train, register, generate (a few minutes on 2 cores)",
        description=f"Train a small conditional DCGAN ({DEMO_CONFIG.name}) on a local Ray and the built-in "
                    "procedural faces, push it to the registry, and generate a balanced set of labeled "
                    "faces with it. Prints where the checkpoint, samples, loss plot and faces are.")
    add_config_args(demo, default_config=str(DEMO_CONFIG))
    demo.add_argument("--registry", default="./registry", metavar="URL", help="registry to push the model to")
    demo.add_argument("--faces", type=int, default=2000, metavar="N", help="faces to generate (0: skip)")
    demo.add_argument("--output", default="./out", metavar="URL", help="where the generated faces go")
    demo.set_defaults(handler=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(TrainJob, args.config, args.overrides)  # exits 2 on a bad config, before Ray starts
    train_and_report(job)
    return 0


def train_and_report(job: TrainJob):
    from ganray.train.trainer import run_training

    outcome = run_training(job)
    print(f"\ntrained run '{job.run.name}' to step {outcome.step}")
    print(f"  checkpoint:  {outcome.checkpoint}")
    print(f"  sample grid: {outcome.samples_png}")
    print(f"  loss plot:   {outcome.loss_png}")
    print(f"  metrics:     {outcome.metrics_jsonl}")
    return outcome


def cmd_demo(args: argparse.Namespace) -> int:
    job = load_config(TrainJob, args.config, args.overrides)
    generate_job = None
    if args.faces > 0:
        from ganray.config import GenerateJob

        # Validated now, so that a bad flag fails before minutes of training; the model is set after.
        generate_job = load_config(GenerateJob, CONFIG_DIR / "generate_demo.yaml", [
            f"registry.url={args.registry}", f"generate.count={args.faces}", "generate.shard_size=500",
            f"generate.balance={list(job.model.condition_on or []) or ['age_group', 'skin_tone']}"
            if job.model.conditional else "generate.balance=[]",
        ])
    outcome = train_and_report(job)
    if generate_job is None:
        return 0

    from ganray.generate.job import run_generate
    from ganray.registry import Registry
    from ganray.train.trainer import storage_root

    registry = Registry(args.registry)
    version = registry.push_from_run(storage_root(job), job.run.name)
    registry.promote(version, "demo")
    print(f"\npushed step {outcome.step} of run '{job.run.name}' to {args.registry} as {version} (alias 'demo')")
    # One output folder per model version: a folder belongs to exactly one generation job.
    output = f"{args.output.rstrip('/')}/demo-faces-{version}"
    generate_job.generate = generate_job.generate.model_copy(update={"model": version, "output": output})
    summary = run_generate(generate_job)
    print(f"\ngenerated {summary['faces']} labeled faces with {version}: {output}")
    return 0
