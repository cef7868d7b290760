"""`ganray labeler train | eval | list | show | promote`: ganray's own attribute classifier, stored as
labeler versions in the registry (beside generators, with their own numbers and aliases)."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args, add_verbose_arg
from ganray.config import LabelerEvalJob, LabelerTrainJob, load_config


def _bad_input():
    from ganray.registry import RegistryError
    from ganray.storage import UnsafePathError

    return (RegistryError, UnsafePathError, FileNotFoundError)


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(LabelerTrainJob, args.config, args.overrides)  # exit 2 before Ray on a bad config
    from ganray.labels.trainer import run_labeler_training

    try:
        outcome = run_labeler_training(job)
    except _bad_input() as e:
        raise UsageError(str(e)) from None
    print(f"\ntrained labeler run '{job.run.name}' to step {outcome.step}")
    print(f"  checkpoint: {outcome.checkpoint}")
    print(f"  labeler:    {outcome.version}" + (f" (alias {outcome.alias})" if outcome.alias else ""))
    for name, result in outcome.heldout["attributes"].items():
        print(f"  held-out {name}: accuracy {result['accuracy']:.3f} on {outcome.heldout['images']} images")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    job = load_config(LabelerEvalJob, args.config, args.overrides)
    from ganray.labels.trainer import run_labeler_eval

    try:
        run_labeler_eval(job)
    except _bad_input() as e:
        raise UsageError(str(e)) from None
    return 0


def _labelers(args: argparse.Namespace):
    from ganray.registry import LabelerRegistry

    return LabelerRegistry(args.registry)


def cmd_list(args: argparse.Namespace) -> int:
    registry = _labelers(args)
    try:
        infos = registry.list()
    except _bad_input() as e:
        raise UsageError(str(e)) from None
    if not infos:
        print(f"no labeler versions in {registry.url}")
        return 0
    print(f"{'version':<8} {'aliases':<20} {'res':>4} {'attributes':<36} {'run':<16} {'step':>7}  created")
    for info in infos:
        print(f"{info.version:<8} {','.join(info.aliases) or '-':<20} {info.resolution:>4} "
              f"{','.join(info.attributes):<36} {str(info.provenance.get('run', '-')):<16} "
              f"{str(info.provenance.get('step', '-')):>7}  {info.created_at}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    registry = _labelers(args)
    try:
        info = registry.show(args.ref)
        print(json.dumps({**info.to_dict(), "evaluations": registry.evaluations(info.version)}, indent=2))
    except _bad_input() as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    registry = _labelers(args)
    try:
        version = registry.promote(args.ref, args.alias)
    except _bad_input() as e:
        raise UsageError(str(e)) from None
    print(f"labeler alias {args.alias} -> {version}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "labeler", help="train and evaluate ganray's attribute classifier (labeler versions in the registry)",
        description="Train an attribute classifier on Ray Train on any labeled dataset (built-in faces or "
                    "`ganray data import`), evaluate it on a held-out split fixed by content hash, and store it "
                    "as a labeler version in the registry.")
    sub = parser.add_subparsers(dest="labeler_command", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a classifier (re-running the same run.name resumes it) and push it",
                           description="Train, evaluate on the held-out split, push a labeler version.")
    add_config_args(train, default_config=CONFIG_DIR / "labeler_demo.yaml")
    train.set_defaults(handler=cmd_train)
    evaluate = sub.add_parser("eval", help="evaluate a labeler version on a dataset's held-out split",
                              description="Per-class accuracy and confusion matrices of a labeler version on a "
                                          "dataset's held-out split, recorded in its registry entry.")
    add_config_args(evaluate)
    evaluate.set_defaults(handler=cmd_eval)
    for name, handler, helptext in (("list", cmd_list, "list labeler versions"),
                                    ("show", cmd_show, "one labeler version as JSON, with its evaluations"),
                                    ("promote", cmd_promote, "point a labeler alias at a version")):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--registry", default=None, help="registry URL (default: $GANRAY_REGISTRY or ./registry)")
        if name in ("show", "promote"):
            p.add_argument("ref", help="labeler version id, alias or 'latest'")
        if name == "promote":
            p.add_argument("alias", help="alias name")
        add_verbose_arg(p)
        p.set_defaults(handler=handler)
