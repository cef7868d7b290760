"""The balance report of a generation output: written beside its manifest when the job finishes.

    OUT/balance_report.json   counts per stratum against target, max deviation, and for labeled
                              jobs acceptance rate, labeler agreement and rejects by reason
    OUT/balance_report.png    the same as charts

Strata: a closed-loop job's (`closed_loop.strata`, target = the exact quotas), a balanced job's
(`balance`: every combination, target = count / combinations), else one stratum "all". Counts
are read from the rows written; acceptance, agreement and rejects from the shards' commit entries
(each entry holds the verdict counts of the candidates its shard went through), so the report
adds up what was committed, whichever runs wrote it. For the classifier labeler, each stratum also
gets its estimated true count and label precision with intervals (ganray.labels.true_balance,
from the labeler's held-out errors), beside the count the labeler saw. Deterministic: no times in it.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

from ganray import storage
from ganray.data.manifest import column_names, read_face_rows
from ganray.generate.output import (
    JOB_FILE,
    MANIFEST_FILE,
    PNG_DIR,
    PNG_METADATA_FILE,
    WEBDATASET_DIR,
    GenerateError,
    json_bytes,
    parquet_dir,
)
from ganray.labels.report import CHART_FILE, REPORT_FILE, draw_report


def _row_files(url: str, parameters: dict[str, Any]) -> list[str]:
    if parameters["format"] == "webdataset":
        return sorted(u for u in storage.ls(storage.join(url, WEBDATASET_DIR)) if u.endswith(".tar"))
    if parameters["format"] in ("parquet", "both"):
        return sorted(u for u in storage.ls(storage.join(url, parquet_dir(parameters))) if u.endswith(".parquet"))
    return sorted(storage.join(u.rstrip("/"), PNG_METADATA_FILE) for u in storage.ls(storage.join(url, PNG_DIR)))


def _read_columns(url: str, parameters: dict[str, Any], names: list[str]) -> dict[str, list]:
    columns: dict[str, list] = {n: [] for n in names}
    for file_url in _row_files(url, parameters):
        fs, path = storage.url_to_fs(file_url)
        present = [n for n in names if n in column_names(fs, path)]
        table = read_face_rows(fs, path, present)  # never the image column; labels as strings in any layout
        for n in present:
            columns[n] += table.column(n).to_pylist()
    return columns


def generated_report(url: str, condition_values: dict[str, list[str]] | None = None,
                     registry_url: str | None = None) -> dict[str, Any]:
    """The balance report of the finished output at `url` (read-only).

    `condition_values` (the model's attributes and values) lets a balanced job's report list
    combinations that got no face; without it they are taken from the rows.
    """
    url = storage.normalize_url(url)
    try:
        job = json.loads(storage.read_bytes(storage.join(url, JOB_FILE)))
        manifest = json.loads(storage.read_bytes(storage.join(url, MANIFEST_FILE)))
    except FileNotFoundError:
        raise GenerateError(f"{url} is a ganray generate output that is not finished (no {MANIFEST_FILE}): "
                            "re-run its job to finish it") from None
    parameters = job["parameters"]
    closed = parameters.get("closed_loop")
    labeler = (parameters.get("labeler") or {}).get("name") if parameters.get("labels_layout") else None
    if closed:
        attributes, mode = list(closed["strata"]), "closed_loop"
    elif parameters.get("balance"):
        attributes, mode = list(parameters["balance"]), "balanced"
    else:
        attributes, mode = [], "plain"

    label_names = [f"label_{a}" for a in attributes] if labeler else []
    columns = _read_columns(url, parameters, [*attributes, *label_names, "stratum"])
    n_rows = manifest["faces"]
    if closed:
        keys = list(columns["stratum"])
        targets = {name: int(q) for name, q in closed["quotas"].items()}
    elif attributes:
        keys = ["/".join(values) for values in zip(*(columns[a] for a in attributes))]
        values = [(condition_values or {}).get(a) or sorted(set(columns[a])) for a in attributes]
        combos = ["/".join(c) for c in itertools.product(*values)]
        targets = {c: round(parameters["count"] / len(combos), 3) for c in combos}
    else:
        keys = ["all"] * n_rows
        targets = {"all": parameters["count"]}
    counts = Counter(keys)

    # Verdict counts from the commit entries (labeled jobs).
    per_stratum: dict[str, Counter] = {}
    agree_by: dict[str, Counter] = {}
    short: set[str] = set()
    total_rejects: Counter = Counter()
    rejects_of: dict[str, Counter] = {}
    for entry in manifest["shards"]:
        verdicts = entry.get("verdicts")
        if not verdicts:
            continue
        key = verdicts.get("stratum", "all")
        c = per_stratum.setdefault(key, Counter())
        c["attempts"] += verdicts.get("examined", 0)
        c["accepted"] += verdicts.get("accepted", verdicts.get("examined", 0) - sum(verdicts.get("rejects", {}).values()))
        c["labeled"] += verdicts.get("labeled", 0)
        c["agree"] += verdicts.get("agree", 0)
        agree_by.setdefault(key, Counter()).update(verdicts.get("agree_by_attribute", {}))
        total_rejects.update(verdicts.get("rejects", {}))
        rejects_of.setdefault(key, Counter()).update(verdicts.get("rejects", {}))
        if verdicts.get("exhausted"):
            short.add(key)

    # Labeled, not closed loop: agreement of the written faces' labels with their requested conditions.
    written_agree: dict[str, list[int]] = {}
    if labeler and not closed and attributes:
        for i, key in enumerate(keys):
            ok = all(columns[f"label_{a}"][i] == columns[a][i] for a in attributes)
            written_agree.setdefault(key, [0, 0])
            written_agree[key][0] += ok
            written_agree[key][1] += 1

    strata = []
    for name, target in targets.items():
        row: dict[str, Any] = {"stratum": name, "target": target, "count": counts.get(name, 0),
                               "deviation": round(counts.get(name, 0) - target, 3)}
        if name in per_stratum or (closed and labeler):
            c = per_stratum.get(name, Counter())
            row["attempts"] = c["attempts"]
            row["accepted"] = c["accepted"]
            row["acceptance_rate"] = round(c["accepted"] / c["attempts"], 4) if c["attempts"] else None
            row["labeler_agreement"] = round(c["agree"] / c["labeled"], 4) if c["labeled"] else None
            row["agreement_by_attribute"] = {a: round(n / c["labeled"], 4) for a, n in
                                             sorted(agree_by.get(name, {}).items())} if c["labeled"] else {}
            row["rejects"] = dict(sorted(rejects_of.get(name, Counter()).items()))
        if name in written_agree:
            ok, n = written_agree[name]
            row["labeler_agreement"] = round(ok / n, 4) if n else None
        if closed:
            row["short"] = name in short
        strata.append(row)
    attempts = sum(c["attempts"] for c in per_stratum.values())
    accepted = sum(c["accepted"] for c in per_stratum.values())
    report = {
        "kind": "generated",
        "source": url,
        "job_id": job["job_id"],
        "mode": mode,
        "strata_attributes": attributes,
        "labeler": labeler,
        "quality_gate": parameters.get("quality"),
        "strata": strata,
        "total": {
            "target": parameters["count"],
            "count": n_rows,
            "max_abs_deviation": max((abs(r["deviation"]) for r in strata), default=0),
            "attempts": attempts,
            "acceptance_rate": round(accepted / attempts, 4) if attempts else None,
            "rejects": dict(sorted(total_rejects.items())),
            **({"short_strata": sorted(short)} if closed else {}),
        },
    }
    if labeler == "classifier":
        _add_true_balance(report, url, parameters, attributes, registry_url)
    return report


def _add_true_balance(report: dict[str, Any], url: str, parameters: dict[str, Any], attributes: list[str],
                      registry_url: str | None) -> None:
    """The estimated true make-up beside the labeler's counts: joint over the strata attributes
    (merged into the strata rows), or per labeled attribute when the output has no strata."""
    from ganray.labels.true_balance import estimate_true_balance, labeler_evidence

    version = (parameters.get("labeler") or {}).get("version")
    evidence, why = labeler_evidence(version, registry_url) if version else (None, "no labeler version recorded")
    if evidence is None:
        report["true_balance"] = {"available": False, "reason": why}
        return
    names = [a for a in (attributes or list(evidence)) if a in evidence]
    columns = _read_columns(url, parameters, [n for a in names for n in (f"label_{a}", f"label_{a}_confidence")])
    names = [a for a in names if columns.get(f"label_{a}")]
    rows = [i for i in range(len(columns[f"label_{names[0]}"]))
            if all(columns[f"label_{a}"][i] is not None for a in names)] if names else []
    if not rows:
        report["true_balance"] = {"available": False, "reason": "no labeled face to estimate from"}
        return

    def estimate(over: list[str]) -> dict[str, Any]:
        return estimate_true_balance({a: evidence[a] for a in over}, over,
                                     {a: [columns[f"label_{a}"][i] for i in rows] for a in over},
                                     {a: [columns[f"label_{a}_confidence"][i] for i in rows] for a in over})

    if attributes and names == attributes:
        result = estimate(attributes)
        by_name = {r["stratum"]: r for r in result["strata"]}
        for row in report["strata"]:
            row.update({k: v for k, v in by_name.get(row["stratum"], {}).items() if k != "stratum"})
        report["true_balance"] = {"available": True, **{k: v for k, v in result.items() if k != "strata"},
                                  "labeler_version": version}
    else:
        report["true_balance"] = {"available": True, "labeler_version": version,
                                  "by_attribute": {a: estimate([a]) for a in names}}


def write_balance_report(url: str, condition_values: dict[str, list[str]] | None = None,
                         registry_url: str | None = None) -> dict[str, Any]:
    """Write balance_report.json and balance_report.png beside the output's manifest; returns the report."""
    report = generated_report(url, condition_values, registry_url)
    from ganray.labels.second_opinion import second_opinion  # an independent judge, where installed

    parameters = json.loads(storage.read_bytes(storage.join(url, JOB_FILE)))["parameters"]
    opinion = second_opinion(_row_files(url, parameters), condition_values, report.get("labeler"))
    if opinion is not None:
        report["second_opinion"] = opinion
    # Without its location: a copy of the output (or the same job elsewhere) has the same bytes.
    storage.atomic_write(storage.join(url, REPORT_FILE), json_bytes({k: v for k, v in report.items() if k != "source"}))
    storage.atomic_write(storage.join(url, CHART_FILE), draw_report(report))
    return report
