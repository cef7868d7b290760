"""The `ganray` console script.

Each area of the package registers its own subcommands (a `register(subparsers)` function in its
`commands.py`), so this file stays a table of contents. Every handler takes the parsed args and
returns an exit status. Config errors exit with status 2 before any Ray work starts.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ganray.config import ConfigError

# Modules that register subcommands, in the order `ganray --help` lists them.
COMMAND_MODULES = (
    "ganray.train.commands",     # ganray train, ganray demo
    "ganray.data.commands",      # ganray data import | synth
    "ganray.registry_commands",  # ganray registry push | list | show | promote
    "ganray.generate.commands",  # ganray generate
    "ganray.serve.commands",     # ganray serve
)


class UsageError(Exception):
    """Bad input that is not a config file problem (a missing path, a refused output). Exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganray",
        description="Train face GANs on Ray; generate labeled synthetic-face datasets; serve faces.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # An area still being built must not take the whole CLI down with it.
            if e.name and e.name.startswith("ganray"):
                continue
            raise
        module.register(sub)
    return parser


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """The two options every job takes: a YAML file and dotted overrides."""
    parser.add_argument("--config", "-c", default=default_config, metavar="YAML",
                        help=f"job config file (default: {default_config or 'built-in defaults'})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.batch_size=64 (repeatable)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, UsageError) as e:
        print(f"ganray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
