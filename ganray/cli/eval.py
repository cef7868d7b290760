"""`ganray eval`: FID, KID, precision/recall (and IS) of a model's faces against an imported dataset;
`ganray eval human serve|results`: human pairwise judgments (ganray.eval.human);
`ganray eval utility`: train on synthetic, test on real (ganray.eval.utility)."""
from __future__ import annotations

import argparse

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import EvalJob, HumanEvalJob, load_config


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


def _utility(args: argparse.Namespace) -> int:
    from ganray.config.eval import UtilityJob

    job = load_config(UtilityJob, args.config, args.overrides)
    from ganray.config import ConfigError
    from ganray.eval.utility import UtilityError, run_utility
    from ganray.registry import RegistryError
    from ganray.storage import UnsafePathError

    try:
        run_utility(job)
    except (UtilityError, ConfigError, RegistryError, UnsafePathError) as e:
        raise UsageError(str(e)) from None
    return 0


def _register_utility(subparsers: argparse._SubParsersAction) -> None:
    utility = subparsers.add_parser(
        "utility", help="train on synthetic, test on real: the attribute classifier trained on real, generated "
                        "and real+generated faces, tested on the same real held-out images",
        description="Train the attribute classifier (the `labeler:` recipe, on Ray Train) on the real dataset's "
                    "training split, on a generated output, and on both; test each on the real held-out split; "
                    "write accuracy overall, per group and the worst group with bootstrap intervals to "
                    "OUT/utility.json and OUT/utility.png. Refuses a generated output whose generator was "
                    "trained on held-out images.")
    add_config_args(utility, default_config=CONFIG_DIR / "eval_utility_demo.yaml")
    utility.set_defaults(handler=_utility)


def _human_serve(args: argparse.Namespace) -> int:
    job = load_config(HumanEvalJob, args.config, args.overrides)
    from ganray.eval.human.app import serve, token_of
    from ganray.eval.human.faces import HumanEvalError
    from ganray.eval.human.session import HumanEvalSession
    from ganray.registry import RegistryError
    from ganray.storage import UnsafePathError

    try:
        session = HumanEvalSession(job)
        serve(session, job.human.host, job.human.port, token_of(job.human.token))
    except (HumanEvalError, RegistryError, UnsafePathError, OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    return 0


def _human_results(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ganray.eval.human import results
    from ganray.eval.human.store import JudgmentStore
    from ganray.storage import atomic_write

    try:
        store = JudgmentStore(args.db, create=False)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    if args.prior_wins < 0:
        raise UsageError(f"--prior-wins must be >= 0, got {args.prior_wins}")
    report = results.compute(store.judgments(), args.prior_wins)
    report["database"] = str(Path(args.db).resolve())
    report.update(store.counts())
    output = Path(args.output) if args.output else Path(args.db).with_suffix(".results.json")
    print(results.format_text(report))
    atomic_write(str(output.resolve()), json.dumps(report, indent=1).encode())
    print(f"results: {output}")
    return 0


def _register_human(subparsers: argparse._SubParsersAction) -> None:
    human = subparsers.add_parser(
        "human", help="human pairwise evaluation: a local web page asks which face looks more real",
        description="Serve a page that shows two faces side by side (two models, or a generated face and a "
                    "real one) and stores each choice in SQLite; report win rates, Bradley-Terry scores and "
                    "the fool rate.")
    actions = human.add_subparsers(dest="human_command", metavar="ACTION", required=True)
    serve = actions.add_parser("serve", help="serve the judging page (127.0.0.1:8765 by default)",
                               description="Render or read the faces, then serve the page until Ctrl-C. "
                                           "Judgments go to human.db (SQLite).")
    add_config_args(serve, default_config=CONFIG_DIR / "human_eval.yaml")
    serve.set_defaults(handler=_human_serve)
    report = actions.add_parser("results", help="win rates, Bradley-Terry scores and fool rate of a judgments DB",
                                description="Print the results of a judgments database and write them as JSON.")
    report.add_argument("db", metavar="DB", help="the SQLite file of `ganray eval human serve` (human.db)")
    report.add_argument("--output", "-o", default=None, metavar="JSON",
                        help="where to write the JSON (default: DB with the suffix .results.json)")
    report.add_argument("--prior-wins", type=float, default=0.5,
                        help="Bradley-Terry: virtual wins each way per compared pair (0 = plain MLE; default 0.5)")
    report.set_defaults(handler=_human_results)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="FID/KID/precision/recall of a model's faces against an imported dataset",
        description="Render a registry model's faces (or read a generated output's shards), extract features "
                    "on Ray Data actors, compare them with an imported reference dataset (features cached "
                    "beside its manifest), write the results JSON and record it in the model's registry entry.")
    add_config_args(parser, default_config=CONFIG_DIR / "eval_demo.yaml")
    parser.set_defaults(handler=_eval)
    # `ganray eval` alone runs the metrics job; `ganray eval human ...` the human evaluation.
    commands = parser.add_subparsers(dest="eval_command", metavar="{human,utility}", required=False)
    _register_human(commands)
    _register_utility(commands)
