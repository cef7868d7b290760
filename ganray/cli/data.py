"""`ganray data import`: folders or ZIPs of images -> training shards."""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError, add_config_args
from ganray.config import ImportJob, load_config


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    imp = data_sub.add_parser(
        "import", help="convert a folder or ZIP of images into Parquet training shards",
        description="Convert a folder or ZIP of images at any fsspec URL (local path or s3://) into "
                    "Parquet shards plus manifest.json, as a Ray Data pipeline. Bad files are dropped "
                    "and counted by reason; they never abort the import.")
    imp.add_argument("src", nargs="?", help="folder or .zip of images (overrides import.src)")
    imp.add_argument("dst", nargs="?", help="output folder (overrides import.dst)")
    imp.add_argument("--preset", choices=["utkface"], help="label preset (overrides import.labels.preset)")
    imp.add_argument("--resolution", type=int, help="output resolution (overrides import.resolution)")
    add_config_args(imp)
    imp.set_defaults(handler=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    # Positional arguments and flags win over the file, and --set wins over everything.
    flags = {"import.src": args.src, "import.dst": args.dst, "import.labels.preset": args.preset,
             "import.resolution": args.resolution}
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + overrides
    job = load_config(ImportJob, args.config, overrides)

    from ganray.data.importer import run_import
    from ganray.runtime import init_ray

    init_ray(job.ray_address)
    try:
        manifest = run_import(job.import_)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    counts = manifest["counts"]
    print(f"imported {counts['kept']} of {counts['seen']} images into {job.import_.dst}")
    for reason, n in sorted(manifest["dropped"].items()):
        if n:
            print(f"  dropped {n:6d}  {reason}")
    return 0
