"""`ganray report OUT`: the balance report of a generation output or an imported dataset (local or s3://)."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError, add_verbose_arg


def _report(args: argparse.Namespace) -> int:
    from ganray import storage
    from ganray.data.manifest import read_manifest
    from ganray.generate.output import JOB_FILE, GenerateError, json_bytes
    from ganray.generate.report import generated_report
    from ganray.labels.report import CHART_FILE, REPORT_FILE, draw_report, format_report, import_report

    url = storage.normalize_url(args.out)
    try:
        if storage.exists(storage.join(url, JOB_FILE)):
            stored = storage.join(url, REPORT_FILE)
            # A finished job wrote its report (with its model's full list of strata); recompute for older outputs.
            report = ({**json.loads(storage.read_bytes(stored)), "source": url} if storage.exists(stored)
                      else generated_report(url))
        elif (manifest := read_manifest(url)) is not None:
            report = import_report(url, manifest)
            if args.write:
                storage.atomic_write(storage.join(url, REPORT_FILE), json_bytes(report))
                storage.atomic_write(storage.join(url, CHART_FILE), draw_report(report))
        else:
            raise UsageError(f"{url} is neither a ganray generate output (no {JOB_FILE}) nor an imported dataset "
                             "(no ganray import manifest.json): nothing to report")
    except GenerateError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot read a report from {url}: {e!r}") from None
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="the balance report of a generated output or an imported dataset",
        description="Print the balance report of OUT (local path or s3://): counts per stratum against target, "
                    "the largest deviation, and for labeled outputs acceptance rate, labeler agreement and "
                    "rejects by reason. Generated outputs carry it (balance_report.json/.png beside the manifest).")
    parser.add_argument("out", metavar="OUT", help="a `ganray generate` output or a `ganray data import` folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--write", action="store_true",
                        help="imported dataset: also write balance_report.json and .png beside its manifest")
    add_verbose_arg(parser)
    parser.set_defaults(handler=_report)
