"""`ganray data import | list | show`: folders or ZIPs of images -> training shards, and their data versions."""
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
    imp.add_argument("--parent", help="the data version this import derives from: a version id or an import's "
                                      "folder (overrides import.parent)")
    imp.set_defaults(handler=cmd_import)
    register_versions(data_sub)


def cmd_import(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    # Positional arguments and flags win over the file, and --set wins over everything.
    flags = {"import.src": args.src, "import.dst": args.dst, "import.labels.preset": args.preset,
             "import.resolution": args.resolution, "import.parent": args.parent}
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
    print(f"imported {counts['kept']} of {counts['seen']} images into {job.import_.dst}: data version "
          f"{manifest['data_version']} (in {manifest['data_catalog']})")
    for reason, n in sorted(manifest["dropped"].items()):
        if n:
            print(f"  dropped {n:6d}  {reason}")
    return 0


def register_versions(data_sub: argparse._SubParsersAction) -> None:
    """`ganray data list | show`: the data versions a catalog lists (ganray.data.versions)."""
    catalog_help = ("data catalog: a folder holding data-versions/ (default: $GANRAY_DATA_CATALOG, else ./data, "
                    "where imports into ./data/NAME record their versions)")
    listing = data_sub.add_parser("list", help="list the data versions of a catalog, oldest first",
                                  description="List the data versions (imports) a data catalog records.")
    listing.add_argument("catalog", nargs="?", help=catalog_help)
    listing.add_argument("--json", action="store_true", help="one JSON record per line")
    listing.set_defaults(handler=cmd_list)
    show = data_sub.add_parser("show", help="print a data version: manifest hash, counts per label, license, parent",
                               description="Print one data version's record: manifest hash, counts per label, "
                                           "license, where it was imported from and the version it derives from.")
    show.add_argument("version", help="data version id (or a prefix of at least 6 hex digits)")
    show.add_argument("--catalog", default=None, help=catalog_help)
    show.add_argument("--json", action="store_true", help="the record as JSON")
    show.set_defaults(handler=cmd_show)


def _catalog(url: str | None) -> str:
    from ganray.data.versions import default_catalog
    from ganray.storage import check_reachable

    catalog = default_catalog(url)
    check_reachable(catalog, "catalog")
    return catalog


def cmd_list(args: argparse.Namespace) -> int:
    from ganray.data.versions import DataVersionError, is_current, list_versions

    catalog = _catalog(args.catalog)
    try:
        records = list_versions(catalog)
    except DataVersionError as e:
        raise UsageError(str(e)) from None
    if args.json:
        for record in records:
            print(json.dumps(record))
        return 0
    if not records:
        print(f"no data versions in {catalog}")
        return 0
    print(f"{'version':<12}  {'rows':>7}  {'parent':<12}  {'license':<10}  {'created':<25}  location")
    for r in records:
        counts = r.get("counts") or {}
        parent = (r.get("parent") or {}).get("version") or "-"
        here = "" if is_current(r) else " (replaced)"
        print(f"{r['version']:<12}  {counts.get('rows', counts.get('kept', '-')):>7}  {parent:<12}  "
              f"{str(r.get('license')):<10}  {str(r.get('created_at')):<25}  {r.get('location')}{here}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ganray.data.versions import DataVersionError, find_version, is_current

    catalog = _catalog(args.catalog)
    try:
        record = find_version(args.version, catalog)
    except DataVersionError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({**record, "current": is_current(record)}, indent=2))
        return 0
    counts = record.get("counts") or {}
    parent = record.get("parent") or {}
    lines = [f"data version   {record['version']}", f"manifest hash  {record['manifest_hash']}",
             f"location       {record.get('location')} ({'current' if is_current(record) else 'since replaced'})",
             f"source         {record.get('source')}", f"imported       {record.get('created_at')}",
             f"license        {record.get('license')}" + (f": {record['license_note']}" if record.get("license_note") else ""),
             "parent         " + (f"{parent.get('version')} ({parent.get('location')})" if parent else "-"),
             f"rows           {counts.get('rows', counts.get('kept'))} ({counts.get('seen')} files seen, "
             f"{counts.get('dropped')} dropped)"]
    if record.get("balance"):
        lines.append(f"balance        {json.dumps(record['balance'])}")
    for name, values in (record.get("label_histograms") or {}).items():
        lines.append(f"  {name}: " + ", ".join(f"{v} {n}" for v, n in values.items()))
    print("\n".join(lines))
    return 0
