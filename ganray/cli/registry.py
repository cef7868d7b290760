"""`ganray registry push | list | show | promote | gate | decisions | history`: the model registry from the command line."""
from __future__ import annotations

import argparse
import json
import sys

from ganray.cli.common import UsageError

# Exit status of a promotion the alias's gate refused (2 stays "bad input").
EXIT_REFUSED = 1


def _registry(args: argparse.Namespace):
    from ganray.registry import Registry
    from ganray.storage import check_reachable

    registry = Registry(args.registry)
    check_reachable(registry.url, "--registry")  # credentials, bucket, endpoint: exit 2 before anything
    return registry


def _push(args: argparse.Namespace) -> int:
    from ganray.storage import check_reachable, normalize_url

    storage_path, run_name = args.from_run
    registry = _registry(args)
    check_reachable(normalize_url(storage_path), "--from-run STORAGE")
    from ganray.train.publish import push_run

    version = push_run(registry, storage_path, run_name, args.step)
    print(f"pushed {run_name} as {version} to {registry.url}")
    if args.promote:
        return _promote_through_gate(registry, version, args.promote, force=args.force)
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
    registry = _registry(args)
    info = registry.show(args.ref)
    print(json.dumps({**info.to_dict(), "evaluations": registry.evaluations(info.version)}, indent=2))
    return 0


def _promote_through_gate(registry, ref: str, alias: str, force: bool) -> int:
    from ganray.eval.gate import describe, promote

    decision = promote(registry, ref, alias, force=force)
    logged = f" (decision {decision.decision_id})" if decision.decision_id else ""
    if not decision.moved:
        stays = f"stays at {decision.holder}" if decision.holder else "stays unset"
        print(f"refused: {alias} {stays}: {decision.reason}. The gate of {alias}: {describe(decision.gate)}; "
              f"--force moves it anyway, recorded as forced in its decisions{logged}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"{alias} -> {decision.candidate}" + ("" if decision.outcome == "ungated"
                                                 else f": {decision.outcome}: {decision.reason}{logged}"))
    return 0


def _promote(args: argparse.Namespace) -> int:
    return _promote_through_gate(_registry(args), args.ref, args.alias, args.force)


def _gate(args: argparse.Namespace) -> int:
    from ganray.eval.gate import gate_of, make_gate

    registry = _registry(args)
    if args.remove:
        registry.set_gate(args.alias, None)
        print(f"{args.alias}: no gate")
        return 0
    if args.metric is None and args.margin is None:
        print(json.dumps(gate_of(registry, args.alias)))  # show it (null: no gate)
        return 0
    gate = make_gate(args.metric or "fid", args.margin or 0.0, args.evaluation)
    registry.set_gate(args.alias, gate)
    print(f"{args.alias}: gate {json.dumps(gate)}")
    return 0


def _decisions(args: argparse.Namespace) -> int:
    for entry in _registry(args).decisions():
        if args.alias in (None, entry.get("alias")):
            print(json.dumps(entry) if args.json else
                  f"{entry['id']}  {entry.get('recorded_at')}  {entry.get('alias')}: {entry.get('holder')} -> "
                  f"{entry.get('candidate')}  {entry.get('outcome')}: {entry.get('reason')}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from ganray.lineage import LineageError, format_history, history, split_ref

    registry = _registry(args)
    try:
        model, ref = split_ref(args.name)
        entries = history(model, ref, registry.url, args.catalog)
    except LineageError as e:
        raise UsageError(str(e)) from None
    if args.json:
        for entry in entries:
            print(json.dumps(entry))
    else:
        print(format_history(entries) if entries else f"no history for {args.name} in {registry.url}")
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
    parser = subparsers.add_parser("registry", help="model registry: push, list, show, promote, gate, decisions, history",
                                   description="Versioned generators and aliases on a local path or s3://.")
    commands = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--registry", default=None, metavar="URL",
                       help="registry URL (default: $GANRAY_REGISTRY, else ./registry)")
        p.set_defaults(handler=_handle(handler))
        return p

    push = add("push", _push, "store a training run's checkpoint's G_ema (the newest by default) as a new version")
    push.add_argument("--from-run", nargs=2, required=True, metavar=("STORAGE", "RUN_NAME"),
                      help="the run's storage_path (local or s3://) and name")
    push.add_argument("--step", type=int, default=None, metavar="N",
                      help="push the checkpoint of step N instead of the newest")
    push.add_argument("--promote", metavar="ALIAS", help="then point ALIAS at the new version, through its gate")
    push.add_argument("--force", action="store_true",
                      help="with --promote: move a gated alias even if the gate refuses (logged in the decisions log)")
    add("list", _list, "list versions with their aliases")
    show = add("show", _show, "print a version's config, provenance and aliases as JSON")
    show.add_argument("ref", help="version id (v3), alias, or 'latest'")
    promote = add("promote", _promote, "point an alias at a version (an atomic move); an alias with a gate "
                                       "(production has one from the start) moves only to a version that beats "
                                       f"its holder (else exit {EXIT_REFUSED})")
    promote.add_argument("ref", help="version id (v3), alias, or 'latest'")
    promote.add_argument("alias")
    promote.add_argument("--force", action="store_true",
                         help="move a gated alias even if the gate refuses (logged in the decisions log)")
    gate = add("gate", _gate, "set, show or remove the promotion gate of an alias (production: lower fid, "
                              "margin 0, until set or removed)")
    gate.add_argument("alias")
    gate.add_argument("--metric", choices=["fid", "kid_mean", "precision", "recall"], default=None,
                      help="metric compared (default fid; fid and kid_mean: lower is better)")
    gate.add_argument("--margin", type=float, default=None, help="how much better the candidate must be (default 0)")
    gate.add_argument("--evaluation", default="default", metavar="NAME",
                      help="the recorded evaluation compared (eval.record_as; default: default)")
    gate.add_argument("--remove", action="store_true",
                      help="remove the gate (a built-in one too: the alias then moves freely)")
    decisions = add("decisions", _decisions, "print the log of gated promotion decisions, oldest first")
    decisions.add_argument("--alias", default=None, help="only this alias's decisions")
    decisions.add_argument("--json", action="store_true", help="one JSON object per line, with both results")
    hist = add("history", _history, "a model's (or one version's) history in time order: data version, training "
                                    "run, evaluations, promotions, monitoring records, drift alerts, retraining")
    hist.add_argument("name", metavar="NAME[:VERSION]",
                      help="generator or labeler, optionally :VERSION (v3, an alias, latest); a bare version or "
                           "alias means generator:VERSION")
    hist.add_argument("--catalog", action="append", default=[], metavar="URL",
                      help="a data catalog to look data versions up in (repeatable)")
    hist.add_argument("--json", action="store_true", help="one JSON object per line")
