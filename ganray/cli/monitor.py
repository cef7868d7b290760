"""`ganray monitor`: the running face API's faces against the promoted version's baseline; exit 3 and a
drift alert when a threshold is crossed (ganray.lifecycle.monitor)."""
from __future__ import annotations

import argparse
import sys

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import MonitorJob, load_config

EXIT_DRIFT = 3  # 1 stays "could not run" (API unreachable, storage), 2 "bad input"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "monitor", help="sample the running face API and compare its faces with the promoted version's baseline",
        description="Sample monitor.count faces from the running face API across its conditions, compute FID/KID "
                    "(and labeler agreement) against the promoted version's baseline, write a monitoring event "
                    "to the registry's event log, and exit 3 with a drift_alert event and a DRIFT ALERT line on "
                    "stderr when a threshold is crossed. Meant to run on a schedule.")
    add_config_args(parser, default_config=CONFIG_DIR / "monitor.yaml")
    parser.set_defaults(handler=cmd_monitor)


def cmd_monitor(args: argparse.Namespace) -> int:
    job = load_config(MonitorJob, args.config, args.overrides)
    from ganray.eval.extractors import ExtractorError
    from ganray.eval.job import EvalError
    from ganray.eval.metrics import MetricError
    from ganray.labels.base import LabelerError
    from ganray.lifecycle.api_client import APIError
    from ganray.lifecycle.baseline import MonitorError
    from ganray.lifecycle.monitor import alert_line, describe, run_monitor
    from ganray.registry import RegistryError
    from ganray.registry_events import EventLogError
    from ganray.storage import UnsafePathError

    try:
        outcome = run_monitor(job, say=lambda line: print(f"[ganray monitor] {line}", flush=True))
    except APIError as e:
        print(f"ganray monitor: error: {e}", file=sys.stderr)
        return 1
    except (MonitorError, EvalError, ExtractorError, LabelerError, MetricError, RegistryError, EventLogError,
            UnsafePathError) as e:
        raise UsageError(str(e)) from None
    print(f"[ganray monitor] {describe(outcome)}", flush=True)
    if outcome.drift:
        print(alert_line(outcome), file=sys.stderr, flush=True)
        return EXIT_DRIFT
    return 0
