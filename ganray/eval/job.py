"""`ganray eval`: a model's (or a generated output's) faces against an imported reference dataset.

    generated faces:  registry model -> ray.data.range(count) -> render actors (ganray.models.face)
                      or a finished `ganray generate` output -> its Parquet shards (first `count` faces)
    reference images: the imported dataset's Parquet shards, its first `reference_count` rows
    both:             -> feature-extractor actors (Ray Data, ActorPoolStrategy) -> features on the driver
                      -> metrics (ganray.eval.metrics) -> results JSON (+ the version's registry entry)

Reference features are cached beside the dataset's manifest, in REF/eval_cache/, in a file named by
the sha256 of everything they depend on: the extractor's identity (name, weights sha256, resize
mode, feature size), the dataset's manifest hash and the sample count. Any change to one of these
names another file, so a stale cache is never read; the file's own copy of the key is checked on
load as well. Old files are left in place (delete the folder to reclaim the space).

Face i of a model is rendered from seed seed_offset + i, with open conditions drawn from the seed,
exactly as `ganray generate` renders it.

Besides the overall metrics: per-group metrics (`eval.groups`, ganray/eval/groups.py), for which the
reference's label columns and the generated faces' conditions travel beside the images through the
extractor actors; and the memorization check (`eval.memorization`, ganray/eval/memorization.py),
whose closest pairs are read back (a few rows, on the driver) and drawn into a PNG beside the JSON.
"""
from __future__ import annotations

import contextlib
import io
import json
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import ray
import ray.data
import torch

from ganray import storage
from ganray.config import EvalJob, ExtractorConfig
from ganray.data.manifest import (GENERATED_MANIFEST, column_names, generated_parquet_paths, read_dataset,
                                  read_generated_manifest, read_manifest, rows_at, shard_paths)
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor, extractor_identity
from ganray.eval.groups import per_group_metrics
from ganray.eval.memorization import memorization_report, pairs_grid
from ganray.images import decode_png, encode_png
from ganray.models.face import labels_for_conditions, render_faces
from ganray.registry import LabelerRegistry, Registry, RegistryError
from ganray.runtime import init_ray

CACHE_DIR = "eval_cache"
CACHE_FORMAT = 2  # bump when the cached content changes meaning (2: label columns cached too)
RENDER_ACTOR_CPUS = 0.5  # below 1: on a small machine the read tasks and the extractors keep a CPU
LABEL_PREFIX = "label__"  # cached reference label columns: npz entry LABEL_PREFIX + attribute
PAIRS_SUFFIX = "-closest-pairs.png"  # the memorization grid: eval.output without .json + this


class EvalError(ValueError):
    """An evaluation that cannot run as asked (missing dataset, too few images, mismatched sizes)."""


def log(message: str) -> None:
    print(f"[ganray eval] {message}", flush=True)


# -- actors ------------------------------------------------------------------------------------


class RenderFaces:
    """Ray Data actor: face ids -> uint8 faces of one registry version."""

    def __init__(self, registry_url: str, version: str, seed_offset: int, psi: float, precision: str):
        torch.set_num_threads(1)
        self.generator = Registry(registry_url).load_generator(version).generator
        self.seed_offset, self.psi, self.precision = seed_offset, psi, precision

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seeds = [self.seed_offset + int(i) for i in batch["id"]]
        labels = labels_for_conditions(self.generator, {}, len(seeds), seeds=seeds)
        out = {"pixels": render_faces(self.generator, seeds, self.psi, labels, self.precision)}
        # The conditions each face was drawn with, by value name (per-group metrics' strata).
        for a, (name, values) in enumerate(getattr(self.generator, "condition_values", {}).items()):
            out[name] = np.array([values[int(i)] for i in labels[:, a]], dtype=object)
        return out


class ExtractFeatures:
    """Ray Data actor: images (PNG bytes in `image`, or uint8 arrays in `pixels`) -> features."""

    def __init__(self, cfg: ExtractorConfig):
        torch.set_num_threads(1)
        self.extractor = build_extractor(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "pixels" in batch:
            images = np.asarray(batch["pixels"], dtype=np.uint8)
        else:
            images = np.stack([decode_png(bytes(data)) for data in batch["image"]])
        out = self.extractor(images)
        # Everything else in the batch (label and condition columns) travels through unchanged.
        out.update({name: values for name, values in batch.items() if name not in ("pixels", "image")})
        out["height"] = np.full(len(images), images.shape[1], dtype=np.int64)
        out["width"] = np.full(len(images), images.shape[2], dtype=np.int64)
        return out


def check_extractor(cfg: ExtractorConfig) -> None:
    """Build the extractor once, on the driver's CPU (its weights are read and checked): the driver
    may run on a GPU cluster's head, which has no GPU; the actors build it on `cfg.device`."""
    build_extractor(cfg.model_copy(update={"device": "cpu"}))


def extractor_resources(cfg: ExtractorConfig) -> dict[str, float]:
    """An extractor actor's Ray options: a GPU for a network on cuda; the pixels extractor has none."""
    if cfg.device == "cuda" and cfg.name != "pixels":
        return {"num_gpus": 1}
    return {"num_cpus": cfg.actor_num_cpus}


def extract(dataset: ray.data.Dataset, cfg: ExtractorConfig) -> dict[str, np.ndarray]:
    """Features (and logits, sizes) of every image of `dataset`, in its order."""
    resources = extractor_resources(cfg)
    features = dataset.map_batches(ExtractFeatures, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_size,
                                   compute=ray.data.ActorPoolStrategy(size=cfg.actors), **resources)
    parts: dict[str, list[np.ndarray]] = {}
    for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
        for name, values in batch.items():
            parts.setdefault(name, []).append(np.asarray(values))
    return {name: np.concatenate(values) for name, values in parts.items()}


@contextlib.contextmanager
def _ordered_rows():
    # "The first N rows" must be the same rows on every run: keep the shards' order while we read.
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


# -- reference ---------------------------------------------------------------------------------


def reference_manifest(url: str) -> dict[str, Any]:
    manifest = read_manifest(url)
    if manifest is None:
        raise EvalError(f"eval.reference: no imported dataset at {url} (no ganray manifest.json); "
                        "make one with `ganray data import`")
    return manifest


def cache_key_fields(cfg: ExtractorConfig, manifest: dict[str, Any], count: int) -> dict[str, Any]:
    identity = {k: v for k, v in extractor_identity(cfg).items() if k not in ("note", "comparable_to_published")}
    return {"format": CACHE_FORMAT, "extractor": identity, "dataset_manifest_hash": manifest["manifest_hash"],
            "count": count}


def cache_url(reference: str, key_fields: dict[str, Any]) -> str:
    key = storage.sha256_hex(json.dumps(key_fields, sort_keys=True).encode())
    return storage.join(reference, CACHE_DIR, f"reference-{key[:32]}.npz")


def read_cached(url: str, key_fields: dict[str, Any]) -> dict[str, np.ndarray] | None:
    if not storage.exists(url):
        return None
    try:
        with np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False) as npz:
            if json.loads(str(npz["key"])) != key_fields:
                return None
            return {name: npz[name] for name in npz.files if name != "key"}
    except (ValueError, KeyError, OSError):
        return None  # unreadable: computed again and rewritten


def write_cached(url: str, key_fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(json.dumps(key_fields, sort_keys=True)), **arrays)
    storage.atomic_write(url, buf.getvalue())


def reference_features(reference: str, manifest: dict[str, Any], count: int, cfg: ExtractorConfig
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Features of the dataset's first `count` images, from the cache when it holds them."""
    key_fields = cache_key_fields(cfg, manifest, count)
    url = cache_url(reference, key_fields)
    cached = read_cached(url, key_fields)
    if cached is not None:
        log(f"reference features: cached ({url})")
        return cached, {"url": url, "hit": True}
    available = sum(int(s.get("rows", 0)) for s in manifest["shards"])
    if available < count:
        raise EvalError(f"eval.reference_count: {count} images asked, but {reference} holds {available}")
    fs, root = storage.url_to_fs(reference)
    attributes = list(manifest.get("attributes") or {})
    dataset = read_dataset(fs, shard_paths(root, manifest), ["image", *attributes]).limit(count)
    log(f"reference features: extracting {count} images of {reference}")
    extracted = extract(dataset, cfg)
    arrays = {k: v for k, v in extracted.items() if k in ("features", "logits")}
    arrays.update({LABEL_PREFIX + name: extracted[name].astype(np.int64) for name in attributes})
    try:
        write_cached(url, key_fields, arrays)
    except OSError as e:  # a read-only dataset location: evaluate anyway, without caching
        log(f"reference features not cached: cannot write {url}: {e}")
        return arrays, {"url": None, "hit": False}
    return arrays, {"url": url, "hit": False}


# -- generated ---------------------------------------------------------------------------------


def generated_from_model(job: EvalJob, registry: Registry) -> tuple[ray.data.Dataset, dict[str, Any]]:
    cfg = job.eval
    info = registry.show(cfg.model)
    faces = ray.data.range(cfg.count).map_batches(
        RenderFaces, batch_size=cfg.render_batch_size, compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=RENDER_ACTOR_CPUS, fn_constructor_kwargs=dict(
            registry_url=registry.url, version=info.version, seed_offset=cfg.seed_offset, psi=cfg.psi,
            precision=cfg.precision))
    return faces, {"model": cfg.model, "model_version": info.version, "resolution": info.resolution,
                   "seed_offset": cfg.seed_offset, "psi": cfg.psi}


def generated_shards(url: str) -> tuple[dict[str, Any], list[str]]:
    """A finished generate output's manifest and its Parquet shards' paths, in face order."""
    manifest = read_generated_manifest(url)
    if manifest is None:
        raise EvalError(f"eval.generated: {url} is not a finished `ganray generate` output "
                        f"(no readable {GENERATED_MANIFEST})")
    paths = generated_parquet_paths(url, manifest)
    if not paths:
        raise EvalError(f"eval.generated: {url} has no Parquet shards (generated with format png?)")
    return manifest, paths


def generated_from_output(job: EvalJob) -> tuple[ray.data.Dataset, dict[str, Any]]:
    cfg = job.eval
    url = storage.normalize_url(cfg.generated)
    manifest, paths = generated_shards(url)
    if int(manifest.get("faces", 0)) < cfg.count:
        raise EvalError(f"eval.count: {cfg.count} faces asked, but {url} holds {manifest.get('faces', 0)}")
    fs, _ = storage.url_to_fs(url)
    if cfg.groups:
        columns = set(column_names(fs, paths[0]))
        missing = [name for name in cfg.groups if name not in columns]
        if missing:
            raise EvalError(f"eval.groups: the generated output {url} has no condition column for {missing} "
                            "(its model does not condition on them)")
    faces = read_dataset(fs, paths, ["image", *cfg.groups]).limit(cfg.count)
    parameters = manifest.get("parameters") or {}  # what the generate job rendered (ganray.generate.plan)
    return faces, {"generated": url, "model_version": parameters.get("model_version"),
                   "resolution": parameters.get("resolution"), "psi": parameters.get("psi"),
                   "seed_offset": parameters.get("seed_offset")}


# -- the job -----------------------------------------------------------------------------------


def _check_size(arrays: dict[str, np.ndarray], resolution: int, what: str) -> None:
    sizes = set(zip(arrays["height"].tolist(), arrays["width"].tolist()))
    if sizes != {(resolution, resolution)}:
        raise EvalError(f"{what} images are {sorted(sizes)} (height, width), the reference's {resolution}x"
                        f"{resolution}: compare faces at one resolution")


def compute_metrics(real: dict[str, np.ndarray], fake: dict[str, np.ndarray], job: EvalJob) -> dict[str, Any]:
    cfg = job.eval
    out: dict[str, Any] = {"fid": metrics.fid(real["features"], fake["features"])}
    out.update(metrics.kid(real["features"], fake["features"], cfg.kid_subset_size, cfg.kid_subsets))
    out.update(metrics.precision_recall(real["features"], fake["features"], cfg.pr_k))
    if "logits" in fake:
        splits = min(metrics.IS_SPLITS, len(fake["logits"]))
        out.update(metrics.inception_score(fake["logits"], splits))
    return out


def pin_classifier_extractor(job: EvalJob, registry: Registry) -> EvalJob:
    """The `classifier` extractor's labeler, pinned: in the job's registry unless another is named, and
    by version id (an alias that moves during the job cannot mix two feature spaces)."""
    extractor = job.eval.extractor
    if extractor.name != "classifier":
        return job
    labeler_registry = extractor.labeler_registry or registry.url
    try:
        version = LabelerRegistry(labeler_registry).resolve(extractor.labeler)
    except RegistryError as e:
        raise EvalError(f"eval.extractor.labeler: {e}") from None
    pinned = extractor.model_copy(update={"labeler_registry": labeler_registry, "labeler": version})
    return job.model_copy(update={"eval": job.eval.model_copy(update={"extractor": pinned})})


def _check_groups(cfg, manifest: dict[str, Any], info) -> None:
    """Every grouping attribute must be labeled in the reference and known for the generated faces."""
    unlabeled = [name for name in cfg.groups if name not in (manifest.get("attributes") or {})]
    if unlabeled:
        raise EvalError(f"eval.groups: {unlabeled} are not label columns of the reference {cfg.reference} "
                        f"(its labels: {sorted(manifest.get('attributes') or {})})")
    if info is not None:
        unconditioned = [name for name in cfg.groups if name not in info.conditions]
        if unconditioned:
            raise EvalError(f"eval.groups: {cfg.model} ({info.version}) does not condition on {unconditioned} "
                            f"(its conditions: {sorted(info.conditions)}), so its faces have no such value")


def reference_labels(real: dict[str, np.ndarray], manifest: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The reference's numbered labels as value names (the manifest's `attributes` lists them in order)."""
    out = {}
    for name in names:
        vocabulary = np.array(manifest["attributes"][name], dtype=object)
        out[name] = vocabulary[real[LABEL_PREFIX + name]]
    return out


def reference_images(reference: str, manifest: dict[str, Any], indices: list[int]) -> np.ndarray:
    fs, root = storage.url_to_fs(reference)
    rows = rows_at(fs, shard_paths(root, manifest), indices)
    return np.stack([decode_png(rows[i]) for i in indices])


def generated_images(job: EvalJob, registry: Registry, source: dict[str, Any], indices: list[int]) -> np.ndarray:
    """Generated faces by index: rendered again (face i: seed seed_offset + i) or read from the output."""
    cfg = job.eval
    if cfg.model is not None:
        generator = registry.load_generator(source["model_version"]).generator
        seeds = [cfg.seed_offset + i for i in indices]
        labels = labels_for_conditions(generator, {}, len(seeds), seeds=seeds)
        return render_faces(generator, seeds, cfg.psi, labels, cfg.precision)
    url = storage.normalize_url(cfg.generated)
    fs, _ = storage.url_to_fs(url)
    rows = rows_at(fs, generated_shards(url)[1], indices)
    return np.stack([decode_png(rows[i]) for i in indices])


def pairs_png_url(output: str) -> str:
    base = output[:-len(".json")] if output.endswith(".json") else output
    return base + PAIRS_SUFFIX


def run_evaluation(job: EvalJob) -> dict[str, Any]:
    """Evaluate, write the results JSON, record it in the registry (eval.model); returns the results."""
    started = time.monotonic()
    registry = Registry(job.registry.url)
    job = pin_classifier_extractor(job, registry)
    cfg = job.eval
    manifest = reference_manifest(cfg.reference)
    info = None
    if cfg.model is not None:
        info = registry.show(cfg.model)  # an unknown ref fails here, before Ray starts
        if info.resolution != manifest["resolution"]:
            raise EvalError(f"{cfg.model} ({info.version}) renders {info.resolution}x{info.resolution} faces; the "
                            f"reference {cfg.reference} holds {manifest['resolution']}x{manifest['resolution']}")
    _check_groups(cfg, manifest, info)
    identity = extractor_identity(cfg.extractor)
    if cfg.extractor.name in ("inception_v3", "classifier"):
        check_extractor(cfg.extractor)  # a missing or mismatching weights file fails here, before Ray
    init_ray(job.ray_address)
    with _ordered_rows():
        real, cache = reference_features(storage.normalize_url(cfg.reference), manifest, cfg.reference_count,
                                         cfg.extractor)
        faces, source = generated_from_model(job, registry) if cfg.model is not None else generated_from_output(job)
        log(f"generated features: {cfg.count} faces of {source.get('model') or source.get('generated')}")
        fake = extract(faces, cfg.extractor)
        training = real  # the memorization check's training images: every reference row by default
        if cfg.memorization.enabled:
            searched = cfg.memorization.reference_count or sum(int(s.get("rows", 0)) for s in manifest["shards"])
            if searched != cfg.reference_count:
                training = reference_features(storage.normalize_url(cfg.reference), manifest, searched,
                                              cfg.extractor)[0]
    _check_size(fake, manifest["resolution"], "generated")

    values = compute_metrics(real, fake, job)
    small = cfg.small_count if cfg.small_count is not None else cfg.count // 4
    bias = metrics.fid_bias_report(real["features"], fake["features"], small) if 2 <= small < cfg.count else None
    per_group = None
    if cfg.groups:
        per_group = per_group_metrics(real["features"], reference_labels(real, manifest, cfg.groups),
                                      fake["features"], {name: fake[name] for name in cfg.groups},
                                      cfg.groups, cfg.group_min_samples, cfg.pr_k)
    memorization = None
    pairs_image = None
    if cfg.memorization.enabled:
        memo = cfg.memorization
        memorization = memorization_report(training["features"], fake["features"], threshold=memo.threshold,
                                           threshold_ratio=memo.threshold_ratio, pairs=memo.pairs)
        if memorization["closest"]:
            closest = memorization["closest"]
            pairs_image = encode_png(pairs_grid(
                generated_images(job, registry, source, [p["generated_index"] for p in closest]),
                reference_images(storage.normalize_url(cfg.reference), manifest,
                                 [p["reference_index"] for p in closest])))
            memorization["pairs_png"] = pairs_png_url(cfg.output)
    comparable = {"extractor": {k: v for k, v in identity.items() if k != "note"},
                  "reference_manifest_hash": manifest["manifest_hash"], "count": cfg.count,
                  "reference_count": cfg.reference_count, "psi": source.get("psi"),
                  "kid": [cfg.kid_subset_size, cfg.kid_subsets], "pr_k": cfg.pr_k}
    result = {
        "metrics": values,
        "comparable_to_published": identity["comparable_to_published"],
        "note": identity["note"],
        "fid_sample_size_bias": bias,
        "comparable": comparable,
        "per_group": per_group,
        "memorization": memorization,
        **source,
        "reference": storage.normalize_url(cfg.reference),
        "reference_cache": cache,
        "wall_s": round(time.monotonic() - started, 2),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if pairs_image is not None:  # first: the JSON that names it appears only once it is there
        storage.atomic_write(memorization["pairs_png"], pairs_image)
    storage.atomic_write(cfg.output, (json.dumps(result, indent=2) + "\n").encode())
    if cfg.model is not None:
        registry.record(source["model_version"], cfg.record_as, result)
        result["recorded_as"] = f"{source['model_version']}/{cfg.record_as}"
    log(f"FID {values['fid']:.4g}  KID {values['kid_mean']:.4g} ± {values['kid_std']:.2g}  "
        f"precision {values['precision']:.3f}  recall {values['recall']:.3f}"
        + ("" if identity["comparable_to_published"]
           else f"  ({identity['name']} extractor: not comparable to published FID)")
        + f"; results {cfg.output}")
    if memorization is not None:
        log(f"memorization: {memorization['share_below_threshold']:.1%} of generated faces within "
            f"{memorization['threshold']:.4g} of a training image (nearest distance median "
            f"{memorization['nn_distance']['median']:.4g}; reference's own {memorization['reference_nn_median']:.4g})")
    for stratum in (per_group or {}).get("strata", []):
        name = ", ".join(f"{k}={v}" for k, v in stratum["values"].items())
        log(f"  {name}: " + (f"skipped: {stratum['skipped']}" if "skipped" in stratum else
                             f"FID {stratum['fid']:.4g}  precision {stratum['precision']:.3f}  "
                             f"recall {stratum['recall']:.3f}  ({stratum['generated_count']} vs "
                             f"{stratum['reference_count']})"))
    return result
