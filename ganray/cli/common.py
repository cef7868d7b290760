"""What every `ganray` subcommand shares: the bad-input error, the config options, the shipped configs."""
from __future__ import annotations

import argparse
from pathlib import Path

# The example job configs ship inside the package (package data), so `ganray demo` works from any
# directory after a plain `pip install .`; the repository's top-level `configs` links here.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class UsageError(Exception):
    """Bad input that is not a config file problem (a missing path, a refused output). Exit 2."""


def add_config_args(parser: argparse.ArgumentParser, default_config: str | Path | None = None) -> None:
    """The two options every job takes: a YAML file and dotted overrides."""
    parser.add_argument("--config", "-c", default=None if default_config is None else str(default_config),
                        metavar="YAML",
                        help=f"job config file (default: {default_config or 'built-in defaults'})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.batch_size=64 (repeatable)")
    add_verbose_arg(parser)


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show Ray's own log lines and worker output on the console "
                             "(otherwise they go to the Ray session's log files)")
