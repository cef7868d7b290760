"""`ganray card OUT`: write an output's dataset card (OUT/README.md and OUT/card.json) from what it holds."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError, add_verbose_arg


def _card(args: argparse.Namespace) -> int:
    from ganray import storage
    from ganray.generate.card import CARD_FILE, README_FILE, build_card, parse_splits, write_card
    from ganray.generate.output import GenerateError
    from ganray.registry import registry_url

    url = storage.normalize_url(args.out)
    try:
        splits = parse_splits(args.splits) if args.splits else None
        card = (build_card if args.dry_run else write_card)(url, registry_url(args.registry), splits)
    except GenerateError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(f"cannot write a card for {url}: {e!r}") from None
    if args.json or args.dry_run:
        print(json.dumps(card, indent=2))
    else:
        print(f"card: {storage.join(url, README_FILE)} and {storage.join(url, CARD_FILE)} "
              f"({card['faces']} faces, model {card['provenance']['model']['version']})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "card", help="write a generated output's dataset card (README.md + card.json)",
        description="Write OUT/README.md (Hugging Face dataset card layout) and OUT/card.json from the finished "
                    "output OUT (local path or s3://) and what the registry knows of its model: provenance, "
                    "counts, labels, evaluations, cost, intended uses and limitations. A job writes it when it "
                    "finishes; this writes it again (after an evaluation, say).")
    parser.add_argument("out", metavar="OUT", help="a finished `ganray generate` output")
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="the model registry (default: $GANRAY_REGISTRY or ./registry)")
    parser.add_argument("--splits", metavar="NAME=SHARE,...",
                        help="cut the Parquet shards into named splits of whole shards, e.g. train=0.9,test=0.1 "
                             "(default: one split, train)")
    parser.add_argument("--json", action="store_true", help="also print card.json")
    parser.add_argument("--dry-run", action="store_true", help="print card.json, write nothing")
    add_verbose_arg(parser)
    parser.set_defaults(handler=_card)
