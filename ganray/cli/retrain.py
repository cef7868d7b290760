"""`ganray retrain`: train again from the promoted version's run config (new data or a drift alert),
evaluate, and promote only through the gate (ganray.lifecycle.retrain)."""
from __future__ import annotations

import argparse

from ganray.cli.common import UsageError, add_verbose_arg
from ganray.config import RetrainJob


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "retrain", help="retrain the promoted model on new data or after a drift alert; promote only through the gate",
        description="Train a new run from the run config of the version ALIAS was last promoted to through its gate "
                    "(with --data, on that imported dataset), push it, evaluate it as that version's gate evaluation "
                    "was measured, and promote it through the gate; or stop and say why. Every step is a `retrain` "
                    "event in the registry's event log, tied to its cause. Exit 0: promoted; 1: stopped (the gate "
                    "refused); 2: bad input.")
    parser.add_argument("--data", metavar="PATH_OR_VERSION",
                        help="the new training data: an imported dataset folder, or its data version id")
    parser.add_argument("--cause", metavar="EVENT_ID", help="the drift alert (event id) this retraining answers")
    parser.add_argument("--alias", default="production", help="the alias retrained and promoted (default production)")
    parser.add_argument("--registry", default=None, metavar="URL", help="registry (default $GANRAY_REGISTRY or ./registry)")
    parser.add_argument("--run-name", default=None, help="the new run's name (default retrain-<version>-<time>)")
    parser.add_argument("--storage-path", default=None, metavar="URL",
                        help="where the new run's checkpoints go (default: the promoted run's storage_path)")
    parser.add_argument("--warm-start", action="store_true",
                        help="start the new generator from the promoted version's weights (the discriminator starts fresh)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default $RAY_ADDRESS, else local)")
    parser.add_argument("--set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the promoted run's train config, e.g. --set train.max_steps=400 (repeatable)")
    parser.add_argument("--eval-set", dest="eval_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the evaluation, e.g. --eval-set eval.count=2000 (repeatable)")
    add_verbose_arg(parser)
    parser.set_defaults(handler=cmd_retrain)


def cmd_retrain(args: argparse.Namespace) -> int:
    from ganray.config import load_config

    job = load_config(RetrainJob, base={"ray_address": args.ray_address, "registry": {"url": args.registry},
                                        "retrain": {"alias": args.alias, "data": args.data, "cause": args.cause,
                                                    "run_name": args.run_name, "storage_path": args.storage_path,
                                                    "warm_start": args.warm_start,
                                                    "train_overrides": args.train_overrides,
                                                    "eval_overrides": args.eval_overrides}})
    from ganray.eval.extractors import ExtractorError
    from ganray.eval.job import EvalError
    from ganray.lifecycle.retrain import RetrainError, run_retrain
    from ganray.registry import RegistryError
    from ganray.registry_events import EventLogError
    from ganray.storage import UnsafePathError

    try:
        outcome = run_retrain(job, say=lambda line: print(f"[ganray retrain] {line}", flush=True))
    except (RetrainError, RegistryError, EventLogError, EvalError, ExtractorError, UnsafePathError) as e:
        raise UsageError(str(e)) from None
    verb = "promoted" if outcome.promoted else "stopped: not promoted"
    print(f"[ganray retrain] {outcome.version} {verb} ({outcome.decision.outcome}: {outcome.reason}); "
          f"events {' -> '.join(outcome.events)}", flush=True)
    return 0 if outcome.promoted else 1
