"""`ganray eval utility`: does a synthetic set help a model? Train on synthetic, test on real.

    the labeler recipe (`labeler:`, one LabelerTrainJob) x three training sources (`source.use`):
        real            the real dataset's training split
        generated       a ganray generate output's faces only
        real+generated  both
    -> ganray.labels.trainer.run_labeler_training for each (Ray Train; same steps, batch, model, seed)
    -> each classifier on the SAME real held-out images (the dataset's content-hash split)
    -> accuracy per attribute: overall, per group (value combinations of `utility.groups`, by the
       held-out images' true labels), the worst group; percentile-bootstrap intervals from one set of
       resamples of the held-out images shared by all arms, so arm differences are paired
    -> OUT/utility.json, OUT/utility.png; the classifiers are labeler versions in OUT/registry

The synthetic set's generator must not have seen the held-out images, or (b) and (c) are tested
on their own training data. Its registry entry records the data it was trained on; the job
recomputes that data's content hashes (import: its `content_hash` column; built-in faces: the
rendered pixels at the classifier's resolution, as the held-out rule hashes them) and refuses the
job when any held-out image is among them, or when the training data cannot be read
(`utility.allow_unverified_generator` runs it anyway and says so in the result).
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

from ganray import storage
from ganray.config import ConfigError, DataConfig, LabelerTrainJob
from ganray.config.eval import UtilityJob

ARMS = ("real", "generated", "real+generated")
RESULT_FILE, CHART_FILE = "utility.json", "utility.png"


class UtilityError(ValueError):
    """A utility job that cannot run as asked (leaking generator, missing output). CLI exit 2."""


# -- the generator's training data against the held-out split ----------------------------------


def _training_hashes(data: dict[str, Any], resolution: int) -> set[str]:
    """Content hashes of the images a generator was trained on, by the held-out rule's definition."""
    cfg = DataConfig.model_validate(data)
    if cfg.source == "synthetic":
        from ganray.data.synthetic import render_batch

        hashes: set[str] = set()
        for start in range(0, cfg.synthetic.count, 512):
            ids = np.arange(start, min(start + 512, cfg.synthetic.count))
            hashes.update(hashlib.sha256(image.tobytes()).hexdigest()
                          for image in render_batch(ids, resolution, cfg.synthetic.seed)["image"])
        return hashes
    from ganray.data.dataset import shards_manifest
    from ganray.data.manifest import read_columns, shard_paths

    fs, root = storage.url_to_fs(cfg.url)
    return {h for path in shard_paths(root, shards_manifest(cfg))
            for h in read_columns(fs, path, ["content_hash"])["content_hash"].to_pylist()}


def check_generator(job: UtilityJob, heldout_hashes: list[str]) -> dict[str, Any]:
    """Whether the generator behind `utility.generated` was trained without the held-out images."""
    from ganray.data.manifest import read_generated_manifest
    from ganray.registry import Registry, RegistryError

    url = storage.normalize_url(job.utility.generated)
    manifest = read_generated_manifest(url)
    if manifest is None:
        raise UtilityError(f"utility.generated: {url} is not a finished `ganray generate` output")
    version = (manifest.get("parameters") or {}).get("model_version")
    out: dict[str, Any] = {"model_version": version, "heldout_images": len(heldout_hashes)}
    reason = None
    try:
        data = Registry(job.registry.url).show(version).provenance.get("train_config", {}).get("data")
    except RegistryError as e:
        data, reason = None, f"its generator {version} is not in registry {job.registry.url}: {e}"
    if data is None and reason is None:
        reason = f"its generator {version} records no training data (provenance train_config.data)"
    if data is not None:
        try:
            trained_on = _training_hashes(data, job.labeler.data.resolution)
        except (ConfigError, OSError, ValueError) as e:
            reason = f"the training data of {version} cannot be read ({e})"
        else:
            overlap = sum(h in trained_on for h in heldout_hashes)
            out.update(verified=True, generator_training_images=len(trained_on), heldout_in_generator_training=overlap)
            if overlap:
                raise UtilityError(f"utility.generated: its generator {version} was trained on {overlap} of the "
                                   f"{len(heldout_hashes)} held-out images: testing on them would leak; train the "
                                   "generator on data without them")
            return out
    if not job.utility.allow_unverified_generator:
        raise UtilityError(f"utility.generated: cannot check that {url} was made without the held-out images: "
                           f"{reason}; set utility.allow_unverified_generator=true to run anyway (stated in the result)")
    out.update(verified=False, reason=reason)
    return out


# -- accuracy, groups, bootstrap ----------------------------------------------------------------


def group_keys(heldout: dict[str, np.ndarray], attributes: dict[str, list[str]], by: list[str]) -> np.ndarray:
    names = [np.array(attributes[a], dtype=object)[np.asarray(heldout[a], np.int64)] for a in by]
    return np.array(["/".join(values) for values in zip(*names)], dtype=object)


def _interval(samples: np.ndarray, confidence: float) -> list[float] | None:
    samples = samples[np.isfinite(samples)]
    if len(samples) == 0:
        return None
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(samples, tail)), float(np.percentile(samples, 100 - tail))]


def accuracy_table(correct: dict[str, dict[str, np.ndarray]], keys: np.ndarray, *, resamples: np.ndarray,
                   confidence: float, min_group_images: int) -> dict[str, Any]:
    """`correct[arm][attribute]`: 0/1 per held-out image. Per arm and attribute: overall accuracy, per
    group, worst group (among groups with at least `min_group_images`), each with an interval from the
    shared `resamples` (B x n indices); per attribute, each arm's difference from the real arm."""
    groups = sorted(set(keys.tolist()))
    masks = {g: keys == g for g in groups}
    eligible = [g for g in groups if masks[g].sum() >= min_group_images]
    out: dict[str, Any] = {}
    worst_samples: dict[tuple[str, str], np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for arm, by_attribute in correct.items():
            out[arm] = {}
            for attribute, hits in by_attribute.items():
                hits = hits.astype(np.float64)
                drawn = hits[resamples]  # B x n
                per_group, group_samples = {}, {}
                for g in groups:
                    m = masks[g]
                    counts = m[resamples].sum(1)
                    group_samples[g] = (drawn * m[resamples]).sum(1) / counts
                    per_group[g] = {"images": int(m.sum()), "accuracy": float(hits[m].mean()) if m.any() else None,
                                    "interval": _interval(group_samples[g], confidence)}
                worst = min(eligible, key=lambda g: per_group[g]["accuracy"]) if eligible else None
                samples = np.nanmin(np.stack([group_samples[g] for g in eligible]), axis=0) if eligible else None
                worst_samples[(arm, attribute)] = samples
                out[arm][attribute] = {
                    "accuracy": float(hits.mean()), "interval": _interval(drawn.mean(1), confidence),
                    "groups": per_group,
                    "worst_group": None if worst is None else {
                        "group": worst, "accuracy": per_group[worst]["accuracy"],
                        "interval": _interval(samples, confidence)},
                }
    if "real" in correct:
        for arm in correct:
            if arm == "real":
                continue
            for attribute in correct[arm]:
                entry = out[arm][attribute]
                diff = correct[arm][attribute].astype(np.float64) - correct["real"][attribute]
                entry["minus_real"] = {"accuracy": float(diff.mean()),
                                       "interval": _interval(diff[resamples].mean(1), confidence)}
                a, r = worst_samples[(arm, attribute)], worst_samples[("real", attribute)]
                if a is not None and r is not None:
                    entry["minus_real"]["worst_group"] = float(entry["worst_group"]["accuracy"]
                                                               - out["real"][attribute]["worst_group"]["accuracy"])
                    entry["minus_real"]["worst_group_interval"] = _interval(a - r, confidence)
    return {"groups": groups, "eligible_groups": eligible, "arms": out}


# -- the job ------------------------------------------------------------------------------------


def arm_job(job: UtilityJob, arm: str) -> LabelerTrainJob:
    """The labeler recipe with this arm's training source, its own run and a registry under OUT."""
    out = storage.normalize_url(job.utility.output)
    recipe = job.labeler.model_dump(mode="json")
    recipe["run"] = {**recipe["run"], "name": f"{job.labeler.run.name}-{arm.replace('+', '-')}",
                     "storage_path": storage.join(out, "runs")}
    recipe["publish"] = {"registry": storage.join(out, "registry"), "alias": None}
    recipe["source"] = {"use": arm, "generated": None if arm == "real" else storage.normalize_url(job.utility.generated),
                        "labels": job.utility.labels}
    recipe["ray_address"] = job.ray_address
    return LabelerTrainJob.model_validate(recipe)


def draw_chart(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = result["accuracy"]
    arms = list(table["arms"])
    attributes = list(table["arms"][arms[0]])
    groups = table["groups"]
    fig, axes = plt.subplots(len(attributes), 1, figsize=(max(6, 0.9 * len(groups) + 3), 3.2 * len(attributes)),
                             squeeze=False)
    width = 0.8 / len(arms)
    for ax, attribute in zip(axes[:, 0], attributes):
        labels = ["overall", *groups]
        for k, arm in enumerate(arms):
            entry = table["arms"][arm][attribute]
            values = [entry["accuracy"], *[entry["groups"][g]["accuracy"] or 0 for g in groups]]
            intervals = [entry["interval"], *[entry["groups"][g]["interval"] for g in groups]]
            low = [v - (i[0] if i else v) for v, i in zip(values, intervals)]
            high = [(i[1] if i else v) - v for v, i in zip(values, intervals)]
            x = np.arange(len(labels)) + (k - (len(arms) - 1) / 2) * width
            ax.bar(x, values, width, yerr=[low, high], capsize=2, label=arm)
            worst = entry["worst_group"]
            if worst:
                ax.plot(1 + groups.index(worst["group"]) + (k - (len(arms) - 1) / 2) * width,
                        worst["accuracy"], "kv", markersize=6)
        ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"{attribute} accuracy")
        ax.set_title(f"{attribute}: real held-out images, {int(result['confidence'] * 100)}% bootstrap "
                     "intervals (v: worst group)", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def run_utility(job: UtilityJob) -> dict[str, Any]:
    """Train the three classifiers, test them on the real held-out images, write the JSON and chart."""
    import ray
    import ray.data

    from ganray.labels.dataset import choose_attributes, generated_label_columns, heldout_arrays
    from ganray.labels.evaluate import predict_probabilities
    from ganray.labels.trainer import run_labeler_training
    from ganray.registry import LabelerRegistry
    from ganray.runtime import init_ray

    cfg = job.utility
    out = storage.normalize_url(cfg.output)
    attributes = choose_attributes(job.labeler.data, job.labeler.attributes)
    unknown = [g for g in cfg.groups if g not in attributes]
    if unknown:
        raise UtilityError(f"utility.groups: {unknown} are not among the classifier's attributes {list(attributes)}")
    jobs = {arm: arm_job(job, arm) for arm in cfg.arms}  # bad recipes fail here, before any work
    try:
        generated_label_columns(storage.normalize_url(cfg.generated), attributes, cfg.labels)
    except ConfigError as e:
        raise UtilityError(str(e).replace("source.generated", "utility.generated")) from None
    init_ray(job.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = False
    context = ray.data.DataContext.get_current()
    preserve, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        heldout = heldout_arrays(job.labeler.data, attributes, job.labeler.heldout)
    finally:
        context.execution_options.preserve_order = preserve
    generator = check_generator(job, list(heldout["content_hash"]))

    keys = group_keys(heldout, attributes, cfg.groups)
    correct, versions = {}, {}
    for arm, arm_cfg in jobs.items():
        print(f"[ganray utility] training on {arm}", flush=True)
        outcome = run_labeler_training(arm_cfg)
        versions[arm] = outcome.version
        classifier = LabelerRegistry(arm_cfg.publish.registry).load_classifier(outcome.version).classifier
        probabilities = predict_probabilities(classifier, heldout["image"])
        correct[arm] = {a: probabilities[a].argmax(1) == np.asarray(heldout[a], np.int64) for a in attributes}
    n = len(heldout["image"])
    resamples = np.random.default_rng(cfg.seed).integers(0, n, size=(cfg.bootstrap, n))
    result = {
        "heldout_images": n, "heldout_rule": {"fraction": job.labeler.heldout.fraction},
        "generated": storage.normalize_url(cfg.generated), "generator_check": generator,
        "groups_by": list(cfg.groups), "min_group_images": cfg.min_group_images,
        "bootstrap": cfg.bootstrap, "confidence": cfg.confidence, "labels": cfg.labels,
        "recipe": {"max_steps": job.labeler.train.max_steps, "batch_size": job.labeler.train.batch_size,
                   "seed": job.labeler.train.seed, "model": job.labeler.model.model_dump(mode="json")},
        "labeler_versions": versions, "registry": storage.join(out, "registry"),
        "accuracy": accuracy_table(correct, keys, resamples=resamples, confidence=cfg.confidence,
                                   min_group_images=cfg.min_group_images),
    }
    storage.atomic_write(storage.join(out, CHART_FILE), draw_chart(result))
    storage.atomic_write(storage.join(out, RESULT_FILE), (json.dumps(result, indent=2) + "\n").encode())
    for arm in cfg.arms:
        for attribute, entry in result["accuracy"]["arms"][arm].items():
            worst = entry["worst_group"]
            print(f"[ganray utility] {arm}: {attribute} accuracy {entry['accuracy']:.3f}"
                  + (f", worst group {worst['group']} {worst['accuracy']:.3f}" if worst else ""), flush=True)
    print(f"[ganray utility] results {storage.join(out, RESULT_FILE)}, chart {storage.join(out, CHART_FILE)}",
          flush=True)
    return result
