"""`ganray train`."""
from __future__ import annotations

import argparse

from ganray.cli.common import UsageError, add_config_args
from ganray.config import TrainJob, load_config


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a GAN with Ray Train (resumes a run of the same name)",
                           description="Train a GAN on Ray Train. Re-running the same run.name and "
                                       "storage_path resumes from its latest checkpoint.")
    add_config_args(train)
    train.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(TrainJob, args.config, args.overrides)  # exits 2 on a bad config, before Ray starts
    train_and_report(job)
    return 0


def training_evaluator(job: TrainJob):
    """The evaluator for `eval.every_images` (None when off), checked before Ray starts: a bad
    reference, resolution or weights file exits 2. The CLI wires it in: train may not import eval."""
    if job.eval.every_images is None:
        return None
    from ganray.eval.extractors import ExtractorError
    from ganray.eval.job import EvalError
    from ganray.eval.training import TrainingEvaluator
    from ganray.storage import UnsafePathError

    try:
        evaluator = TrainingEvaluator(job)
    except (EvalError, ExtractorError, UnsafePathError) as e:
        raise UsageError(str(e)) from None
    print(f"[ganray] {evaluator.describe()}", flush=True)
    return evaluator


def train_and_report(job: TrainJob):
    from ganray.train.trainer import run_training

    outcome = run_training(job, training_evaluator(job))
    print(f"\ntrained run '{job.run.name}' to step {outcome.step}")
    print(f"  checkpoint:  {outcome.checkpoint}")
    print(f"  sample grid: {outcome.samples_png}")
    print(f"  loss plot:   {outcome.loss_png}")
    print(f"  metrics:     {outcome.metrics_jsonl}")
    return outcome
