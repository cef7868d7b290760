"""`ganray eval`: FID, KID, precision/recall (and IS) of a model's faces against an imported dataset."""
from __future__ import annotations

import argparse

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import EvalJob, load_config


def _eval(args: argparse.Namespace) -> int:
    job = load_config(EvalJob, args.config, args.overrides)
    from ganray.eval.extractors import ExtractorError
    from ganray.eval.job import EvalError, run_evaluation
    from ganray.eval.metrics import MetricError
    from ganray.registry import RegistryError
    from ganray.storage import UnsafePathError

    try:
        run_evaluation(job)
    except (EvalError, ExtractorError, MetricError, RegistryError, UnsafePathError) as e:
        raise UsageError(str(e)) from None
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="FID/KID/precision/recall of a model's faces against an imported dataset",
        description="Render a registry model's faces (or read a generated output's shards), extract features "
                    "on Ray Data actors, compare them with an imported reference dataset (features cached "
                    "beside its manifest), write the results JSON and record it in the model's registry entry.")
    add_config_args(parser, default_config=CONFIG_DIR / "eval_demo.yaml")
    parser.set_defaults(handler=_eval)
