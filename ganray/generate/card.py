"""The dataset card of a generation output: OUT/README.md (Hugging Face card layout) and OUT/card.json.

Written when a job finishes, after the manifest and the balance report; `ganray card OUT` writes it
again from what the output holds (and what the registry knows of its model), so a card never says
more than the output and the registry can show. Everything in it is read, not typed in:

    provenance   model version and content hash, the training data's manifest hash, source and
                 license, ganray's version and git commit, the job's parameters
    counts       faces per attribute value and per stratum (the balance report's)
    labels       the labeler, its held-out accuracy, and the balance report's estimates where present
    evaluations  what the registry holds for the model version (FID/KID, memorization, ...)
    cost         the finishing run's wall time, CPU- and GPU-seconds (cluster size x pipeline time),
                 bytes per face
    uses         intended uses and limitations (synthetic faces, not identities; the vocabulary's limits)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from importlib import metadata
from typing import Any

import yaml

from ganray import storage
from ganray.generate.output import JOB_FILE, MANIFEST_FILE, SUMMARY_FILE, GenerateError, json_bytes, parquet_dir
from ganray.labels.report import REPORT_FILE

CARD_FILE = "card.json"
README_FILE = "README.md"
BUILT_IN_DATA_LICENSE = "apache-2.0"  # the built-in procedural faces are drawn by ganray's own code
# The evaluation names whose results speak to memorization (ganray eval's result keys).
MEMORIZATION_KEYS = ("memorization",)

INTENDED_USES = [
    "Training and evaluating face-attribute models where real faces are scarce for some groups, "
    "together with real data and tested on real data.",
    "Testing face pipelines (detection, cropping, storage, serving) without personal data.",
]
LIMITATIONS = [
    "The faces are synthetic: they depict no real person and must not be used to identify anyone; "
    "a generator can still reproduce a training face closely (see the memorization figures, when measured).",
    "Attribute labels come from a labeler or from the generator's conditions, not from people: "
    "their accuracy is the labeler's held-out accuracy, stated below when a labeler ran.",
    "The attribute vocabulary is the training data's (for example binary gender and five coarse race "
    "groups in UTKFace): it cannot describe people outside it and is not a statement of how people identify.",
    "Balance holds across the strata listed below and only as the labeler sees them.",
]


def _read_json(url: str) -> dict[str, Any] | None:
    return json.loads(storage.read_bytes(url)) if storage.exists(url) else None


def _ganray_commit() -> str | None:
    """The git commit of the running ganray: its checkout's HEAD, or the one a VCS install recorded."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        direct = metadata.distribution("ganray").read_text("direct_url.json")
        return (json.loads(direct).get("vcs_info") or {}).get("commit_id") if direct else None
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _ganray_version() -> str:
    try:
        return metadata.version("ganray")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _training_data(provenance: dict[str, Any]) -> dict[str, Any]:
    """What the model was trained on, as its registry provenance and the data's own manifest say."""
    data = (provenance.get("train_config") or {}).get("data") or {}
    facts: dict[str, Any] = {"manifest_hash": provenance.get("dataset_manifest_hash"),
                             "source": data.get("source")}
    if provenance.get("data_version"):
        facts["data_version"] = provenance["data_version"]  # `ganray lineage OUT` follows it back
    if data.get("source", "synthetic") == "synthetic" and provenance.get("train_config"):
        facts.update(description="the built-in procedural faces (drawn by ganray; no photographs)",
                     license=BUILT_IN_DATA_LICENSE)
    elif data.get("url"):
        facts["url"] = data["url"]
        try:
            manifest = _read_json(storage.join(storage.normalize_url(data["url"]), "manifest.json")) or {}
        except (OSError, ValueError):
            manifest = {}
        facts["license"] = manifest.get("license") or "unknown"
        if manifest.get("license_note"):
            facts["license_note"] = manifest["license_note"]
    facts.setdefault("license", "unknown")
    return facts


def _counts(report: dict[str, Any]) -> dict[str, Any]:
    """Faces per stratum, and per attribute value when strata are attribute combinations."""
    per_stratum = {row["stratum"]: row["count"] for row in report.get("strata", [])}
    per_attribute: dict[str, dict[str, int]] = {}
    attributes = report.get("strata_attributes") or []
    for name, count in per_stratum.items():
        values = name.split("/")
        if len(values) != len(attributes):
            continue
        for attribute, value in zip(attributes, values):
            bucket = per_attribute.setdefault(attribute, {})
            bucket[value] = bucket.get(value, 0) + count
    return {"per_stratum": per_stratum, "per_attribute": per_attribute}


def _labels(parameters: dict[str, Any], report: dict[str, Any], registry_url: str | None) -> dict[str, Any] | None:
    labeler = parameters.get("labeler") if parameters.get("labels_layout") else None
    if not labeler:
        return None
    facts: dict[str, Any] = {"labeler": {k: labeler.get(k) for k in ("name", "ref", "version", "content_hash")
                                         if labeler.get(k) is not None},
                             "agreement_with_strata": {row["stratum"]: row.get("labeler_agreement")
                                                       for row in report.get("strata", [])
                                                       if row.get("labeler_agreement") is not None}}
    if labeler.get("version") and registry_url:
        from ganray.registry import LabelerRegistry, RegistryError

        try:
            heldout = LabelerRegistry(registry_url).evaluation(labeler["version"], "heldout")
        except (RegistryError, OSError):
            heldout = None
        if heldout:
            facts["heldout_accuracy"] = {name: attr.get("accuracy") for name, attr in
                                         (heldout.get("attributes") or {}).items() if isinstance(attr, dict)}
            facts["heldout_images"] = heldout.get("images")
    # Estimates the balance report carries (true composition, label precision) are quoted as they are.
    for key in ("true_balance", "label_precision", "second_opinion"):
        if report.get(key) is not None:
            facts[key] = report[key]
    return facts


def _model(parameters: dict[str, Any], registry_url: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's identity from job.json, and its provenance and evaluations from the registry."""
    model = {"version": parameters.get("model_version"), "content_hash": parameters.get("model_content_hash"),
             "resolution": parameters.get("resolution")}
    extra: dict[str, Any] = {"provenance": {}, "evaluations": {}}
    if not registry_url:
        return model, extra
    from ganray.registry import Registry, RegistryError

    registry = Registry(registry_url)
    try:
        info = registry.show(model["version"])
    except (RegistryError, OSError):
        model["registry"] = f"{registry.url} (version not found there)"
        return model, extra
    if info.content_hash != model["content_hash"]:
        model["registry"] = f"{registry.url} (its {info.version} has another content hash: not this output's model)"
        return model, extra
    model.update(registry=registry.url, architecture=info.model.get("arch"), aliases=info.aliases,
                 run=info.provenance.get("run_name"), step=info.provenance.get("step"))
    extra["provenance"] = info.provenance
    try:
        extra["evaluations"] = registry.evaluations(info.version)
    except (RegistryError, OSError):
        pass
    return model, extra


def _cost(summary: dict[str, Any] | None, manifest: dict[str, Any]) -> dict[str, Any]:
    faces = manifest.get("faces") or 0
    cost: dict[str, Any] = {"bytes": manifest.get("bytes"),
                            "bytes_per_face": round(manifest["bytes"] / faces, 1) if faces and manifest.get("bytes") else None}
    if summary:
        cost.update({k: summary.get(k) for k in ("wall_s", "pipeline_s", "cpu_seconds", "gpu_seconds", "cluster")
                     if summary.get(k) is not None})
        cost["measured_run"] = "the run that finished the output" + (" (a resumed job)" if summary.get("resumed") else "")
    return cost


_SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def parse_splits(text: str) -> dict[str, float]:
    """`train=0.9,test=0.1` as {name: share}; GenerateError naming what is wrong."""
    splits: dict[str, float] = {}
    for part in text.split(","):
        name, _, share = part.partition("=")
        name = name.strip()
        try:
            value = float(share)
        except ValueError:
            raise GenerateError(f"splits: {part.strip()!r} is not NAME=SHARE (e.g. train=0.9,test=0.1)") from None
        if not _SPLIT_NAME.fullmatch(name) or name in splits:
            raise GenerateError(f"splits: {name!r} is not a new split name (lower-case letters, digits, _)")
        if not 0 < value <= 1:
            raise GenerateError(f"splits: the share of {name!r} must be in (0, 1], got {share}")
        splits[name] = value
    if abs(sum(splits.values()) - 1) > 1e-6:
        raise GenerateError(f"splits: the shares must add up to 1, got {sum(splits.values()):g}")
    return splits


def _split_shards(manifest: dict[str, Any], splits: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Whole Parquet shards per split, in shard order: the first share of the shards to the first split..."""
    folder = parquet_dir(manifest.get("parameters") or {})
    shards = [(rel, entry["rows"]) for entry in manifest.get("shards", []) for rel in sorted(entry.get("files", {}))
              if rel.startswith(folder + "/") and rel.endswith(".parquet")]
    out, start, total = {}, 0, 0.0
    for name, share in splits.items():
        total += share
        stop = round(total * len(shards))
        if stop <= start:
            raise GenerateError(f"splits: {len(shards)} Parquet shards cannot give split {name!r} a whole shard; "
                                "splits are made of whole shards (use a smaller generate.shard_size)")
        part = shards[start:stop]
        out[name] = {"shards": [rel for rel, _ in part], "faces": sum(rows for _, rows in part)}
        start = stop
    return out


def build_card(url: str, registry_url: str | None = None, splits: dict[str, float] | None = None) -> dict[str, Any]:
    """card.json's content for the finished output at `url` (read-only). `splits` ({name: share}) cuts
    the Parquet shards into named splits of whole shards; None: one split, `train`."""
    url = storage.normalize_url(url)
    job = _read_json(storage.join(url, JOB_FILE))
    manifest = _read_json(storage.join(url, MANIFEST_FILE))
    if job is None or manifest is None:
        raise GenerateError(f"{url} is not a finished ganray generate output (no {JOB_FILE} or {MANIFEST_FILE}): "
                            "a card describes a finished output")
    parameters = job["parameters"]
    report = _read_json(storage.join(url, REPORT_FILE)) or {}
    summary = _read_json(storage.join(url, SUMMARY_FILE))
    model, extra = _model(parameters, registry_url)
    evaluations = extra["evaluations"]
    if splits and parameters.get("format") not in ("parquet", "both"):
        raise GenerateError(f"splits: they name Parquet shards, and this output's format is {parameters.get('format')}")
    return {
        "splits": _split_shards(manifest, splits) if splits else None,
        "card_format": 1,
        "faces": manifest.get("faces"),
        "shards": len(manifest.get("shards", [])),
        "format": parameters.get("format"),
        "resolution": parameters.get("resolution"),
        "provenance": {
            "model": model,
            "training_data": _training_data(extra["provenance"]) if extra["provenance"] else None,
            "ganray": {"version": _ganray_version(), "git_commit": _ganray_commit()},
            "job_id": job.get("job_id"),
            "job": parameters,
        },
        "counts": _counts(report),
        "balance": {"mode": report.get("mode"), "strata_attributes": report.get("strata_attributes"),
                    "max_abs_deviation": (report.get("total") or {}).get("max_abs_deviation")},
        "labels": _labels(parameters, report, registry_url),
        "evaluations": evaluations,
        "memorization": {k: evaluations[k] for k in MEMORIZATION_KEYS if k in evaluations} or None,
        "cost": _cost(summary, manifest),
        "intended_uses": INTENDED_USES,
        "limitations": LIMITATIONS,
    }


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _card_features(hf_features: dict[str, Any]) -> list[dict[str, Any]]:
    """The `datasets` features of the Parquet shards, in the card's `dataset_info` spelling."""
    out = []
    for name, feature in hf_features.items():
        kind = feature.get("_type") if isinstance(feature, dict) else None
        if kind == "Image":
            out.append({"name": name, "dtype": "image"})
        elif kind == "ClassLabel":
            out.append({"name": name, "dtype": {"class_label": {"names": {str(i): n for i, n in
                                                                          enumerate(feature.get("names", []))}}}})
        elif kind == "Value":
            out.append({"name": name, "dtype": feature.get("dtype")})
    return out


def _shard_features(url: str, card: dict[str, Any]) -> dict[str, Any] | None:
    """The `huggingface` features stored in the first Parquet shard's schema (None: none there)."""
    if card["format"] not in ("parquet", "both"):
        return None
    import pyarrow.parquet as pq

    shards = sorted(u for u in storage.ls(storage.join(url, parquet_dir(card["provenance"]["job"])))
                    if u.endswith(".parquet"))
    if not shards:
        return None
    fs, path = storage.url_to_fs(shards[0])
    with fs.open(path, "rb") as f:
        metadata_ = pq.ParquetFile(f).schema_arrow.metadata or {}
    raw = metadata_.get(b"huggingface")
    return ((json.loads(raw).get("info") or {}).get("features")) if raw else None


def _front_matter(card: dict[str, Any], hf_features: dict[str, Any] | None) -> dict[str, Any]:
    data = (card["provenance"].get("training_data") or {})
    license_id = str(data.get("license") or "unknown")
    matter: dict[str, Any] = {"license": license_id} if re.fullmatch(r"[a-z0-9.\-]+", license_id) else \
        {"license": "other", "license_name": license_id}
    matter.update({
        "task_categories": ["image-classification", "unconditional-image-generation"],
        "size_categories": [_size_category(card["faces"] or 0)],
        "tags": ["synthetic", "faces", "ganray"],
        "pretty_name": f"ganray synthetic faces ({card['faces']} faces, model {card['provenance']['model']['version']})",
    })
    if card["format"] in ("parquet", "both"):
        files = ([{"split": name, "path": split["shards"]} for name, split in card["splits"].items()]
                 if card.get("splits") else
                 [{"split": "train", "path": f"{parquet_dir(card['provenance']['job'])}/*.parquet"}])
        matter["configs"] = [{"config_name": "default", "data_files": files}]
    if hf_features:
        matter["dataset_info"] = {"features": _card_features(hf_features)}
    return matter


def _table(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("—" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_readme(card: dict[str, Any], hf_features: dict[str, Any] | None = None) -> str:
    """OUT/README.md: YAML front matter the Hub and `datasets` read, then the card in prose and tables."""
    prov = card["provenance"]
    model, data = prov["model"], prov.get("training_data") or {}
    parts = ["---", yaml.safe_dump(_front_matter(card, hf_features), sort_keys=False).rstrip(), "---", "",
             f"# Synthetic faces: {card['faces']} faces at {card['resolution']}×{card['resolution']}", "",
             "Generated by ganray from a face GAN. Every figure below is read from the output and the model "
             "registry (`ganray card OUT` writes this file again).", "",
             "## Provenance", "",
             _table([["model version", model.get("version")], ["model content hash", model.get("content_hash")],
                     ["architecture", model.get("architecture")], ["training run", model.get("run")],
                     ["training data manifest hash", data.get("manifest_hash")],
                     ["training data", data.get("description") or data.get("url") or data.get("source")],
                     ["training data license", data.get("license")],
                     ["ganray", f"{prov['ganray']['version']} (commit {prov['ganray']['git_commit'] or 'unknown'})"],
                     ["job id", prov.get("job_id")]], ["", ""]), ""]
    if card.get("splits"):
        parts += ["## Splits", "", _table([[name, split["faces"], len(split["shards"])]
                                           for name, split in card["splits"].items()], ["split", "faces", "shards"]),
                  "", "Splits are made of whole Parquet shards, in shard order (the README's `configs` name them).", ""]
    counts = card["counts"]
    if counts["per_stratum"]:
        parts += ["## Counts", "", _table(sorted(counts["per_stratum"].items()), ["stratum", "faces"]), ""]
        for attribute, values in counts["per_attribute"].items():
            parts += [_table(sorted(values.items()), [attribute, "faces"]), ""]
    labels = card.get("labels")
    if labels:
        parts += ["## Labels", "", f"Labeler: `{json.dumps(labels['labeler'])}`.", ""]
        if labels.get("heldout_accuracy"):
            parts += [f"Held-out accuracy of the labeler ({labels.get('heldout_images')} real images it never saw):",
                      "", _table(sorted(labels["heldout_accuracy"].items()), ["attribute", "accuracy"]), ""]
        parts += ["Agreement of a face's labels with its stratum is true by construction in a closed-loop set "
                  "(a face is kept when they agree); the held-out accuracy above is what measures the labels.", ""]
        if labels.get("true_balance"):
            parts += ["The estimated true composition of each stratum is in card.json (`labels.true_balance`).", ""]
    if card["evaluations"]:
        parts += ["## Evaluation of the model", "", "```json", json.dumps(card["evaluations"], indent=1)[:4000], "```", ""]
    cost = card["cost"]
    parts += ["## Generation cost", "",
              _table([[k, v] for k, v in cost.items()], ["", ""]), "",
              "CPU- and GPU-seconds are the cluster's CPUs and GPUs times the pipeline's wall time (an upper bound).", "",
              "## Intended uses", "", *[f"- {u}" for u in card["intended_uses"]], "",
              "## Limitations", "", *[f"- {u}" for u in card["limitations"]], ""]
    return "\n".join(parts)


def write_card(url: str, registry_url: str | None = None, splits: dict[str, float] | None = None) -> dict[str, Any]:
    """Write OUT/card.json and OUT/README.md for the finished output at `url`; returns the card."""
    url = storage.normalize_url(url)
    card = build_card(url, registry_url, splits)
    storage.atomic_write(storage.join(url, CARD_FILE), json_bytes(card))
    storage.atomic_write(storage.join(url, README_FILE), render_readme(card, _shard_features(url, card)).encode())
    return card
