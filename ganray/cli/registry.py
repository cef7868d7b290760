"""`ganray registry push | list | show | promote`: the model registry from the command line."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError


def _registry(args: argparse.Namespace):
    from ganray.registry import Registry

    return Registry(args.registry)


def _push(args: argparse.Namespace) -> int:
    storage_path, run_name = args.from_run
    registry = _registry(args)
    from ganray.train.publish import push_run

    version = push_run(registry, storage_path, run_name)
    print(f"pushed {run_name} as {version} to {registry.url}")
    if args.promote:
        registry.promote(version, args.promote)
        print(f"{args.promote} -> {version}")
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    infos = registry.list()
    if not infos:
        print(f"no versions in {registry.url}")
        return 0
    print(f"{'version':<8} {'aliases':<20} {'res':>4} {'conditions':<24} {'run':<16} {'step':>7}  created")
    for info in infos:
        conditions = ",".join(info.conditions) or "-"
        print(f"{info.version:<8} {','.join(info.aliases) or '-':<20} {info.resolution:>4} {conditions:<24} "
              f"{str(info.provenance.get('run_name', '-')):<16} {str(info.provenance.get('step', '-')):>7}  "
              f"{info.created_at}")
    return 0


def _show(args: argparse.Namespace) -> int:
    print(json.dumps(_registry(args).show(args.ref).to_dict(), indent=2))
    return 0


def _promote(args: argparse.Namespace) -> int:
    version = _registry(args).promote(args.ref, args.alias)
    print(f"{args.alias} -> {version}")
    return 0


def _handle(handler):
    # Registry errors are bad input (an unknown ref, a bad alias): exit 2 like config errors.
    def run(args: argparse.Namespace) -> int:
        from ganray.registry import RegistryError

        try:
            return handler(args)
        except RegistryError as e:
            raise UsageError(str(e)) from None
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("registry", help="model registry: push, list, show, promote",
                                   description="Versioned generators and aliases on a local path or s3://.")
    commands = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--registry", default=None, metavar="URL",
                       help="registry URL (default: $GANRAY_REGISTRY, else ./registry)")
        p.set_defaults(handler=_handle(handler))
        return p

    push = add("push", _push, "store the newest checkpoint's G_ema of a training run as a new version")
    push.add_argument("--from-run", nargs=2, required=True, metavar=("STORAGE", "RUN_NAME"),
                      help="the run's storage_path (local or s3://) and name")
    push.add_argument("--promote", metavar="ALIAS", help="then point ALIAS at the new version")
    add("list", _list, "list versions with their aliases")
    show = add("show", _show, "print a version's config, provenance and aliases as JSON")
    show.add_argument("ref", help="version id (v3), alias, or 'latest'")
    promote = add("promote", _promote, "point an alias at a version (an atomic move)")
    promote.add_argument("ref", help="version id (v3), alias, or 'latest'")
    promote.add_argument("alias")
