"""`ganray generate`: the bulk generation job from the command line."""
from __future__ import annotations

import argparse

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import GenerateJob, load_config


def _generate(args: argparse.Namespace) -> int:
    job = load_config(GenerateJob, args.config, args.overrides)
    from ganray.generate.job import run_generate
    from ganray.generate.output import GenerateError

    try:
        run_generate(job)
    except GenerateError as e:
        raise UsageError(str(e)) from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="render N faces from a registry model into Parquet/PNG shards (resumable)",
        description="Render faces from a registry model into Parquet and/or PNG shards on Ray Data. "
                    "Re-running the same job resumes it; output of another job is refused.")
    add_config_args(parser, default_config=CONFIG_DIR / "generate_demo.yaml")
    parser.set_defaults(handler=_generate)
