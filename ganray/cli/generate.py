"""`ganray generate`: the bulk generation job from the command line; `--verify OUT` re-checks an output."""
from __future__ import annotations

import argparse
import sys

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import GenerateJob, load_config

# Exit status of `--verify` when a shard is damaged (2 stays "cannot run as asked").
EXIT_DAMAGED = 1
# Exit status of a closed-loop job whose attempt budget ran out before a quota was met.
EXIT_QUOTA_NOT_MET = 1


def _verify(url: str) -> int:
    from ganray.generate.output import GenerateError, verify_output

    try:
        report = verify_output(url)
    except GenerateError as e:
        raise UsageError(str(e)) from None
    for name, why in report["damaged"].items():
        print(f"damaged: {name}: {why}")
    if report["damaged"]:
        print(f"{report['output']}: {len(report['damaged'])} of {report['shards']} shards damaged or missing "
              f"(job {report['job_id']}); re-run the job to rewrite them")
        return EXIT_DAMAGED
    print(f"{report['output']}: all {report['shards']} shards intact (job {report['job_id']}, checked by sha256)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    if args.verify is not None:
        if args.overrides:
            raise UsageError("--verify OUT takes no --set: it reads the job from OUT/job.json")
        return _verify(args.verify)
    job = load_config(GenerateJob, args.config, args.overrides)
    from ganray.generate.job import QuotaNotMet, run_generate
    from ganray.generate.output import GenerateError

    try:
        run_generate(job)
    except GenerateError as e:
        raise UsageError(str(e)) from None
    except QuotaNotMet as e:  # the job ran, but a stratum's attempt budget was spent (on_budget_exhausted: error)
        print(f"ganray generate: error: {e}", file=sys.stderr)
        return EXIT_QUOTA_NOT_MET
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate", help="render N faces from a registry model into Parquet/PNG shards (resumable)",
        description="Render faces from a registry model into Parquet and/or PNG shards on Ray Data. "
                    "Re-running the same job resumes it; output of another job, or one another driver "
                    "is writing, is refused.")
    add_config_args(parser, default_config=CONFIG_DIR / "generate_demo.yaml")
    parser.add_argument("--verify", metavar="OUT", default=None,
                        help="re-check every shard of the output OUT by sha256 and report damaged ones "
                             f"(exit {EXIT_DAMAGED}); writes nothing")
    parser.set_defaults(handler=_generate)
