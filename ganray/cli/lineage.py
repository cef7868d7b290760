"""`ganray lineage OUT|VERSION`: the chain from a generated output (or a registry version) back to
the imported data it came from."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "lineage", help="the chain from generated faces back to the imported data: output -> model -> run -> data",
        description="Print where a generate output or a registry version came from: output -> model version -> "
                    "training run -> data version -> (the versions it derives from) -> source.")
    parser.add_argument("target", help="a generate output folder (local or s3://), or a registry version: "
                                       "v3, an alias, latest, generator:v3, labeler:v1")
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="registry URL (default: the one the output names, else $GANRAY_REGISTRY, else ./registry)")
    parser.add_argument("--catalog", action="append", default=[], metavar="URL",
                        help="a data catalog to look data versions up in, besides the one each record names "
                             "(repeatable)")
    parser.add_argument("--json", action="store_true", help="the chain as JSON")
    parser.set_defaults(handler=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> int:
    from ganray.data.versions import DataVersionError
    from ganray.lineage import LineageError, format_lineage, lineage
    from ganray.registry import RegistryError
    from ganray.storage import check_reachable, normalize_url

    for url in [args.registry, *args.catalog]:
        if url:
            check_reachable(normalize_url(url), "--registry" if url == args.registry else "--catalog")
    try:
        chain = lineage(args.target, args.registry, args.catalog)
    except (LineageError, RegistryError, DataVersionError) as e:
        raise UsageError(str(e)) from None
    print(json.dumps(chain, indent=2) if args.json else format_lineage(chain))
    return 0
