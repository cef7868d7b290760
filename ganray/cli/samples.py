"""`ganray samples VERSION`: a psi sweep grid and (style-based models) a style-mixing grid, as PNGs.

Everything is checked (the version, the seeds, the conditions, the crossover) before anything is
written; each PNG is written atomically, so an output folder never holds half a grid.
"""
from __future__ import annotations

import argparse
import json

from ganray.cli.common import UsageError, add_verbose_arg

PSI_SWEEP_FILE = "psi_sweep.png"
MIXING_FILE = "style_mixing.png"
INDEX_FILE = "samples.json"  # what the grids show: version, seeds, psi values, crossover


def _seeds(text: str, option: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option}: expected comma-separated non-negative integers, got {text!r}") from None
    if not seeds or any(s < 0 or s >= 2**63 for s in seeds):
        raise UsageError(f"{option}: expected comma-separated seeds in [0, 2^63), got {text!r}")
    return seeds


def _conditions(pairs: list[str]) -> dict[str, str]:
    conditions = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--condition: expected NAME=VALUE, got {pair!r}")
        conditions[name] = value
    return conditions


def _samples(args: argparse.Namespace) -> int:
    from ganray import storage
    from ganray.images import encode_png
    from ganray.models.face import prepare_for_render, resolve_conditions
    from ganray.models.samples import default_crossover, psi_sweep, psi_values, style_mixing_grid
    from ganray.registry import Registry, RegistryError

    from ganray.config import PSI_MAX, PSI_MIN

    if not PSI_MIN <= args.psi <= PSI_MAX:
        raise UsageError(f"--psi must be from {PSI_MIN} to {PSI_MAX}, got {args.psi}")
    seeds = _seeds(args.seeds, "--seeds")
    sources = _seeds(args.mix_sources, "--mix-sources")
    conditions = _conditions(args.condition)
    try:
        psis = psi_values(args.psi_steps)
        loaded = Registry(args.registry).load_generator(args.version)
    except (ValueError, RegistryError) as e:
        raise UsageError(str(e)) from None
    generator = prepare_for_render(loaded.generator, args.precision)
    precision = generator.prepared_for_precision  # "auto" resolved on this machine
    try:
        resolve_conditions(generator, conditions, seed=0)  # names a bad attribute or value
    except ValueError as e:
        raise UsageError(f"--condition: {e}") from None
    style_based = default_crossover(generator) is not None
    crossover = args.crossover if args.crossover is not None else default_crossover(generator)
    if style_based and not 0 <= crossover <= generator.num_ws:
        raise UsageError(f"--crossover must be a w index from 0 to {generator.num_ws} (the number of styles of "
                         f"{loaded.version}), got {crossover}")
    out = storage.normalize_url(args.out or f"samples/{loaded.version}")

    files = {PSI_SWEEP_FILE: encode_png(psi_sweep(generator, seeds, psis, conditions, precision))}
    index = {"version": loaded.version, "resolution": generator.resolution, "conditions": conditions,
             "precision": precision,
             "psi_sweep": {"file": PSI_SWEEP_FILE, "rows_seeds": seeds, "columns_psi": psis}}
    if style_based:
        grid = style_mixing_grid(generator, sources, seeds, crossover, args.psi, conditions, precision)
        files[MIXING_FILE] = encode_png(grid)
        index["style_mixing"] = {"file": MIXING_FILE, "columns_source_seeds": sources, "rows_destination_seeds": seeds,
                                 "crossover": crossover, "num_ws": generator.num_ws, "psi": args.psi}
    files[INDEX_FILE] = json.dumps(index, indent=2).encode()
    for name, data in files.items():
        storage.atomic_write(storage.join(out, name), data)
    print(f"{loaded.version}: psi sweep ({len(seeds)} seeds x psi {psis}) -> {storage.join(out, PSI_SWEEP_FILE)}")
    if style_based:
        print(f"{loaded.version}: style mixing (sources {sources} x destinations {seeds}, crossover {crossover} of "
              f"{generator.num_ws}) -> {storage.join(out, MIXING_FILE)}")
    else:
        print(f"{loaded.version}: no style-mixing grid: it is a {loaded.info.model.get('arch')} with a single latent "
              "input; style mixing needs a style-based model (model.arch stylegan2)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "samples", help="write a psi sweep grid and a style-mixing grid of a registry version as PNGs",
        description="Grids of a registry version's faces (the bulk job's and the API's bytes per face): a psi "
                    f"sweep ({PSI_SWEEP_FILE}: rows = seeds, columns = psi from 0 to 1) and, for style-based "
                    f"models, a style-mixing grid ({MIXING_FILE}: top row = source seeds, left column = "
                    "destination seeds, each cell the source's styles below the crossover and the "
                    f"destination's from it on), with {INDEX_FILE} saying what they show.")
    parser.add_argument("version", help="version id (v3), alias, or 'latest'")
    parser.add_argument("--registry", default=None, metavar="URL",
                        help="registry URL (default: $GANRAY_REGISTRY, else ./registry)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder, local or s3:// (default: samples/VERSION)")
    parser.add_argument("--seeds", default="0,1,2,3,4,5", metavar="S,S,...",
                        help="rows of the psi sweep and destinations of the mixing grid (default 0..5)")
    parser.add_argument("--psi-steps", type=int, default=6, metavar="N",
                        help="columns of the psi sweep: N values from 0 to 1 (default 6)")
    parser.add_argument("--mix-sources", default="100,101,102,103,104", metavar="S,S,...",
                        help="source seeds of the mixing grid (its top row; default 100..104)")
    parser.add_argument("--crossover", type=int, default=None, metavar="K",
                        help="mixing grid: w indices below K from the source (default 4, the coarse styles)")
    parser.add_argument("--psi", type=float, default=1.0, help="truncation psi of the mixing grid (default 1)")
    parser.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                        help="a fixed condition for every face (repeatable); others are drawn per seed")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="autocast dtype, as the bulk job's generate.precision (default auto: bf16 where "
                             "the CPU computes it, else fp32)")
    add_verbose_arg(parser)
    parser.set_defaults(handler=_samples)
