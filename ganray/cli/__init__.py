"""The `ganray` console script.

Each subcommand lives in its own module in this package with a `register(subparsers)` function;
this file is the table of contents. Every handler takes the parsed args and returns an exit status.
Config and usage errors, and locations refused by the path policy (ganray/storage.py), exit with
status 2 before any Ray work starts. The command modules import
the rest of the package lazily (inside handlers), so `ganray --help` does not import torch or Ray.
"""
from __future__ import annotations

import argparse
import sys

from ganray import console
from ganray.cli import card, data, demo, generate, labeler, registry, serve, train
from ganray.cli import eval as eval_command  # not `eval`: that name is a builtin
from ganray.cli import report as report_command  # not shadowing the module-level name `report`
from ganray.cli import samples, studio
from ganray.cli import monitor, retrain
from ganray.cli import lineage as lineage_command  # not shadowing ganray.lineage
from ganray.cli.common import UsageError
from ganray.config import ConfigError
from ganray.storage import LocationError, describe_failure, endpoint_words, storage_error_in

# Exit status of a job stopped by a storage request that failed while it ran (2 stays "bad input").
EXIT_STORAGE_FAILED = 1

# In the order `ganray --help` lists them.
COMMAND_MODULES = (demo, train, data, registry, generate, samples, report_command, card, eval_command, labeler, serve, studio, monitor, retrain, lineage_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganray",
        description="Train face GANs on Ray; generate labeled synthetic-face datasets; serve faces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.configure(getattr(args, "verbose", False))
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, UsageError, LocationError) as e:  # LocationError: ganray/storage.py's path policy
        print(f"ganray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only storage failures are handled here; the rest re-raise
        if storage_error_in(e) is None:
            raise
        # The endpoint went away mid-job (or similar): what the job committed stays valid, nothing
        # half-written is listed as done, and the same command finishes the job.
        print(f"ganray {args.command}: error: a storage request failed ({endpoint_words()}): {describe_failure(e)}\n"
              "Nothing unfinished is listed as done; run the same command again to finish the job.", file=sys.stderr)
        return EXIT_STORAGE_FAILED
