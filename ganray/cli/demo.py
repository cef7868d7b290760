"""`ganray demo`: train -> register -> generate, end to end on the built-in faces."""
from __future__ import annotations

import argparse

from ganray.cli.common import CONFIG_DIR, add_config_args
from ganray.config import GenerateJob, TrainJob, load_config

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
DEMO_GENERATE_CONFIG = CONFIG_DIR / "generate_demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="end to end on the built-in faces: train, register, generate (a few minutes on 2 cores)",
        description=f"Train a small conditional DCGAN ({DEMO_CONFIG.name}) on a local Ray and the built-in "
                    "procedural faces, push it to the registry, and generate a balanced set of labeled "
                    "faces with it. Ends by printing where the checkpoint, sample grid, loss plot, faces and "
                    "balance report are.")
    add_config_args(demo, default_config=DEMO_CONFIG)
    demo.add_argument("--registry", default="./registry", metavar="URL", help="registry to push the model to")
    demo.add_argument("--faces", type=int, default=2000, metavar="N", help="faces to generate (0: skip)")
    demo.add_argument("--output", default="./out", metavar="URL", help="where the generated faces go")
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ganray.cli.train import training_evaluator
    from ganray.train.trainer import run_training

    job = load_config(TrainJob, args.config or DEMO_CONFIG, args.overrides)
    generate_job = None
    if args.faces > 0:
        # Validated now, so that a bad flag fails before minutes of training; the model is set after.
        generate_job = load_config(GenerateJob, DEMO_GENERATE_CONFIG, [
            f"registry.url={args.registry}", f"generate.count={args.faces}", "generate.shard_size=500",
            f"generate.balance={list(job.model.condition_on or []) or ['age_group', 'skin_tone']}"
            if job.model.conditional else "generate.balance=[]",
        ])
    outcome = run_training(job, training_evaluator(job))
    made = [("checkpoint", outcome.checkpoint), ("sample grid", outcome.samples_png),
            ("loss plot", outcome.loss_png)]
    if generate_job is not None:
        made += _register_and_generate(args, job, generate_job)
    # The last thing printed: what a newcomer looks at next, one location a line.
    print(f"\nganray demo: done (run '{job.run.name}', step {outcome.step}). What it made:")
    for what, where in made:
        print(f"  {what + ':':<16}{where}")
    return 0


def _register_and_generate(args: argparse.Namespace, job: TrainJob, generate_job: GenerateJob) -> list[tuple[str, str]]:
    """Push the run's newest checkpoint, alias it 'demo', render the faces; returns (what, where) lines."""
    from ganray import storage
    from ganray.generate.job import run_generate
    from ganray.labels.report import CHART_FILE
    from ganray.registry import Registry
    from ganray.train.publish import push_run
    from ganray.train.trainer import storage_root

    registry = Registry(args.registry)
    version = push_run(registry, storage_root(job), job.run.name)
    registry.promote(version, "demo")
    # One output folder per model version: a folder belongs to exactly one generation job.
    output = f"{args.output.rstrip('/')}/demo-faces-{version}"
    generate_job.generate = generate_job.generate.model_copy(update={"model": version, "output": output})
    summary = run_generate(generate_job)
    faces = summary["output"]
    return [("model", f"{version} in {storage.normalize_url(args.registry)} (alias 'demo')"),
            ("faces", f"{faces} ({summary['faces']} labeled faces, {summary['format']} shards)"),
            ("balance report", storage.join(faces, CHART_FILE))]
