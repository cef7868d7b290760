"""Where a face came from, and what happened to a model version: read from what each step wrote.

Lineage: a generated output's manifest names its model version (and content hash) -> the registry
version's provenance names its training run and data version -> the data catalog's record names
the import's source and the version it derives from (its parent), and so on back to the source.

History: a version's data version, training run, evaluations (versions/vN/evaluations/), promotion
decisions (decisions/), alias moves and the events of the registry's log (ganray.registry_events:
monitoring, drift alerts, retraining...), in time order. Each fact is read from one place, so
nothing shows twice.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ganray import registry_events, storage
from ganray.data import versions
from ganray.data.manifest import read_generated_manifest, read_manifest
from ganray.registry import LabelerRegistry, Registry, RegistryError, registry_url

MODELS = (registry_events.GENERATOR, registry_events.LABELER)
# Kinds in the order a version lives them (what breaks ties within one second).
LIFECYCLE_ORDER = {kind: i for i, kind in enumerate(("data_version", "training_run", "evaluation", "promotion",
                                                     "monitoring", "drift_alert", "retrain"))}
SUMMARY_FILE = "summary.json"  # a generate output's run summary (ganray/generate/output.py)
_MAX_PARENTS = 64  # a parent chain longer than this is a loop in the records


class LineageError(ValueError):
    """An output, version or record that cannot be traced (unknown, not ganray's, inconsistent)."""


# ---------------------------------------------------------------------------------------------
# Lineage


def _output(url: str) -> dict[str, Any] | None:
    """A finished generate output's facts, or None if `url` holds no generate output."""
    manifest = read_generated_manifest(url)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parameters"), dict):
        return None
    parameters = manifest["parameters"]
    try:  # the run's summary names the registry the model was read from
        summary = json.loads(storage.read_bytes(storage.join(url, SUMMARY_FILE)))
    except (FileNotFoundError, ValueError):
        summary = {}
    return {"url": url, "job_id": manifest.get("job_id"), "faces": manifest.get("faces"),
            "model_version": parameters.get("model_version"), "model_content_hash": parameters.get("model_content_hash"),
            "registry": summary.get("registry") if isinstance(summary, dict) else None,
            "data_version": (manifest.get("lineage") or {}).get("data_version")}


def _data_version_of(provenance: dict[str, Any]) -> dict[str, Any]:
    """What a version's provenance says of its data (older versions: from the manifest hash and config)."""
    if isinstance(provenance.get("data_version"), dict):
        return dict(provenance["data_version"])
    manifest_hash = provenance.get("dataset_manifest_hash")
    if not isinstance(manifest_hash, str):
        return {}
    data = provenance.get("train_config", {}).get("data") or provenance.get("data") or {}
    return versions.training_data_version(data, manifest_hash) if data.get("source") != "shards" or data.get("url") \
        else {"version": versions.version_id(manifest_hash), "manifest_hash": manifest_hash}


def _find_record(version: str, manifest_hash: str | None, catalogs: list[str | None],
                 location: str | None) -> dict[str, Any] | None:
    for catalog in dict.fromkeys(c for c in catalogs if c):
        try:
            record = versions.find_version(version, catalog)
        except versions.DataVersionError:
            continue
        if manifest_hash is None or record.get("manifest_hash") == manifest_hash:
            return record
    if location and location != versions.BUILT_IN:  # no record: the import itself, if it is still this data
        manifest = read_manifest(location)
        if manifest and manifest.get("manifest_hash") == manifest_hash:
            return {**versions.make_record(manifest, dst=location, catalog=manifest.get("data_catalog"),
                                           import_id=None, parent=manifest.get("parent"),
                                           license=manifest.get("license"), license_note=manifest.get("license_note")),
                    "created_at": None, "recorded": False}
    return None


def _data_chain(data: dict[str, Any], catalogs: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]], str | None]:
    """(the data version's record, its parents' records nearest first, the source at the end)."""
    version = data.get("version")
    if not version:
        return {"found": False}, [], None
    if data.get("location") == versions.BUILT_IN:
        record = {**data, "found": True, "source": "the built-in procedural faces (ganray.data.synthetic)"}
        return record, [], record["source"]
    location = data.get("location")
    record = _find_record(version, data.get("manifest_hash"),
                          [data.get("catalog"), *catalogs, versions.import_root(location) if location else None],
                          location)
    if record is None:
        return {**data, "found": False}, [], None
    record = {**record, "found": True}
    parents, seen, current = [], {record["version"]}, record
    while isinstance(current.get("parent"), dict) and len(parents) < _MAX_PARENTS:
        parent = current["parent"]
        found = _find_record(str(parent.get("version")), None, [parent.get("catalog"), *catalogs], None)
        if found is None or found["version"] in seen:
            parents.append({**parent, "found": found is not None})
            break
        seen.add(found["version"])
        parents.append({**found, "found": True})
        current = found
    return record, parents, (parents[-1] if parents else record).get("source")


def _store(model: str, url: str) -> Registry | LabelerRegistry:
    if model == registry_events.GENERATOR:
        return Registry(url)
    if model == registry_events.LABELER:
        return LabelerRegistry(url)
    raise LineageError(f"unknown model {model!r}: one of {', '.join(MODELS)}")


def version_lineage(store: Registry | LabelerRegistry, ref: str, catalogs: list[str] = ()) -> dict[str, Any]:
    """The chain from a registry version back to its data's source."""
    info = store.show(ref)
    provenance = info.provenance
    data, parents, source = _data_chain(_data_version_of(provenance), list(catalogs))
    run = {k: provenance.get(k) for k in ("run_name", "run", "storage_path", "run_url", "checkpoint", "step",
                                           "trained_at") if provenance.get(k) is not None}
    return {
        "model": {"registry": getattr(store, "registry_url", store.url),
                  "kind": registry_events.LABELER if isinstance(store, LabelerRegistry) else registry_events.GENERATOR,
                  "version": info.version, "content_hash": info.content_hash, "created_at": info.created_at,
                  "aliases": info.aliases},
        "training_run": run or None, "data_version": data, "parents": parents, "source": source,
    }


def lineage(target: str, registry: str | None = None, catalogs: list[str] = ()) -> dict[str, Any]:
    """The chain of `target`: a generate output's folder, or a registry version ([MODEL:]REF)."""
    output = None
    if "://" in target or target.startswith((".", "/", "~")) or storage.exists(storage.normalize_url(target)):
        output = _output(storage.normalize_url(target))
        if output is None:
            raise LineageError(f"{target} is not a finished ganray generate output (no manifest.json naming a "
                               "model version)")
    if output is None:
        model, ref = split_ref(target)
        store = _store(model, registry_url(registry))
        return {"output": None, **version_lineage(store, ref, catalogs)}
    store = Registry(registry_url(registry or output["registry"]))
    try:
        info = store.show(output["model_version"])
    except RegistryError as e:
        raise LineageError(f"{target} was made by model {output['model_version']}, which the registry cannot show: "
                           f"{e}") from None
    if output["model_content_hash"] and info.content_hash != output["model_content_hash"]:
        raise LineageError(f"{target} was made by {info.version} with content hash {output['model_content_hash']}, "
                           f"but {info.version} in {store.url} has {info.content_hash}: not the same model "
                           "(name the registry that made it with --registry)")
    return {"output": output, **version_lineage(store, info.version, catalogs)}


def split_ref(text: str) -> tuple[str, str | None]:
    """`generator:v3`, `labeler:latest`, `v3`, `production` or `generator` -> (model, ref or None)."""
    model, sep, ref = text.partition(":")
    if sep:
        if model not in MODELS:
            raise LineageError(f"unknown model {model!r} in {text!r}: one of {', '.join(MODELS)}")
        return model, ref or None
    return (text, None) if text in MODELS else (registry_events.GENERATOR, text)


def _describe_data(record: dict[str, Any]) -> str:
    if not record.get("found"):
        where = f" at {record['location']}" if record.get("location") else ""
        return f"{record.get('version') or 'unknown'}{where} (no record of it in any catalog)"
    if record.get("location") == versions.BUILT_IN:
        return f"{record['version']} (built-in faces)"
    counts = record.get("counts") or {}
    rows = counts.get("rows", counts.get("kept"))
    state = "current" if versions.is_current(record) else "since replaced"
    return (f"{record['version']} ({rows} rows at {record.get('location')}, {state}; license "
            f"{record.get('license', 'unknown')}" + (f": {record['license_note']}" if record.get("license_note") else "")
            + (f"; imported {record['created_at']}" if record.get("created_at") else "") + ")")


def format_lineage(chain: dict[str, Any]) -> str:
    lines = []
    if chain.get("output"):
        out = chain["output"]
        lines.append(f"output        {out['url']} ({out.get('faces')} faces, job {out.get('job_id')})")
    model = chain["model"]
    aliases = f", aliases {', '.join(model['aliases'])}" if model.get("aliases") else ""
    lines.append(f"model         {model['kind']} {model['version']} in {model['registry']} "
                 f"(content hash {model['content_hash'][:12]}{aliases})")
    run = chain.get("training_run") or {}
    if run:
        name = run.get("run_name") or run.get("run")
        where = run.get("storage_path") or run.get("run_url")
        lines.append(f"training run  {name} step {run.get('step')}" + (f" at {where}" if where else "")
                     + (f" (checkpoint {run['checkpoint']})" if run.get("checkpoint") else ""))
    else:
        lines.append("training run  (none recorded)")
    lines.append(f"data version  {_describe_data(chain['data_version'])}")
    for parent in chain.get("parents", []):
        lines.append(f"  derived from {_describe_data(parent)}")
    lines.append(f"source        {chain.get('source') or '(unknown)'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# History


def _time(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _metrics(result: dict[str, Any]) -> str:
    metrics = result.get("metrics") if isinstance(result.get("metrics"), dict) else result
    shown = [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(shown[:4]) or "recorded"


def _version_entries(store: Registry | LabelerRegistry, model: str, version: str,
                     logged_runs: set[str], catalogs: list[str]) -> list[dict[str, Any]]:
    info = store.show(version)
    entries = []
    data = _data_version_of(info.provenance)
    if data.get("version"):
        record, _, _ = _data_chain(data, catalogs)
        entries.append({"time": record.get("created_at"), "kind": "data_version", "version": version,
                        "summary": f"trained on data version {_describe_data(record)}", "details": record})
    if version not in logged_runs:  # pushed without a training_run event: its provenance names its run
        run = info.provenance
        entries.append({"time": info.created_at, "kind": "training_run", "version": version,
                        "summary": f"run {run.get('run_name') or run.get('run')} step {run.get('step')}, pushed as "
                                   f"{version}", "details": {k: run.get(k) for k in
                                                             ("run_name", "run", "storage_path", "checkpoint", "step")}})
    for name, result in store.evaluations(version).items():
        entries.append({"time": result.get("evaluated_at") or info.created_at, "kind": "evaluation",
                        "version": version, "summary": f"evaluation {name}: {_metrics(result)}", "details": result})
    return entries


def _promotion_entries(store: Registry | LabelerRegistry, chosen: set[str]) -> list[dict[str, Any]]:
    entries, decided = [], set()
    if isinstance(store, Registry):
        for d in store.decisions():
            if d.get("candidate") in chosen:
                moved = d.get("outcome") != "refused"
                if moved:
                    decided.add((d.get("alias"), d.get("candidate")))
                entries.append({"time": d.get("recorded_at"), "kind": "promotion", "version": d.get("candidate"),
                                "id": d.get("id"),
                                "summary": f"{d.get('alias')}: {d.get('holder')} -> {d.get('candidate')} "
                                           f"{d.get('outcome')}: {d.get('reason')}", "details": d})
    for alias, version in store.aliases().items():  # moves no decision records (aliases without a gate)
        if version in chosen and (alias, version) not in decided:
            moved_at = json.loads(storage.read_bytes(storage.child(store.url, f"aliases/{alias}.json"))).get("updated_at")
            entries.append({"time": moved_at, "kind": "promotion", "version": version,
                            "summary": f"{alias} -> {version} (no gate)", "details": {"alias": alias}})
    return entries


def history(model: str, ref: str | None, registry: str | None = None, catalogs: list[str] = ()) -> list[dict[str, Any]]:
    """`model`'s history (one version's if `ref`), oldest first."""
    store = _store(model, registry_url(registry))
    chosen = [store.resolve(ref)] if ref else store.versions()
    logged = registry_events.events(store.registry_url if isinstance(store, LabelerRegistry) else store.url, model)
    if ref:  # the version's events, and what they caused, transitively
        ids = {e["id"] for e in logged if e.get("version") in chosen}
        for e in logged:  # appended after their cause: one pass in log order finds every descendant
            if e.get("cause") in ids:
                ids.add(e["id"])
        logged = [e for e in logged if e["id"] in ids]
    runs = {e["version"] for e in logged if e.get("kind") == "training_run" and e.get("version")}
    entries = [entry for version in chosen for entry in _version_entries(store, model, version, runs, list(catalogs))]
    entries += _promotion_entries(store, set(chosen))
    entries += [{"time": e.get("time"), "kind": e.get("kind"), "version": e.get("version"), "id": e["id"],
                 "cause": e.get("cause"), "summary": _event_summary(e), "details": e.get("payload")} for e in logged]
    order = {id(e): i for i, e in enumerate(entries)}
    # Registry files stamp whole seconds, events microseconds: compared to the second, and within one
    # second in life-cycle order.
    return sorted(entries, key=lambda e: (_time(e.get("time")).replace(microsecond=0),
                                          LIFECYCLE_ORDER.get(e.get("kind"), len(LIFECYCLE_ORDER)),
                                          _time(e.get("time")), order[id(e)]))


def _event_summary(event: dict[str, Any]) -> str:
    payload = event.get("payload") or {}
    if event.get("kind") == "training_run" and payload.get("run_name"):
        return (f"run {payload['run_name']} step {payload.get('step')} on data {payload.get('data_version')}, "
                f"pushed as {event.get('version')}" + (f" (caused by {event['cause']})" if event.get("cause") else ""))
    text = payload.get("summary") or payload.get("message") or ", ".join(
        f"{k} {v}" for k, v in payload.items() if isinstance(v, (str, int, float, bool)))[:160]
    return text + (f" (caused by {event['cause']})" if event.get("cause") else "")


def format_history(entries: list[dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        stamp = str(e.get("time") or "-")[:19]
        lines.append(f"{stamp:<19}  {str(e.get('version') or '-'):<5}  {e['kind']:<13}  "
                     + (f"[{e['id']}] " if e.get("id") else "") + e["summary"])
    return "\n".join(lines)
