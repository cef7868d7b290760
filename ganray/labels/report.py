"""Balance reports: how a dataset's faces spread over attribute strata, against a target.

A report is a JSON-able dict (`kind` "generated" or "imported"); `format_report` prints it and
`draw_report` draws its charts (PNG, matplotlib Agg). Reports of generated outputs are built in
ganray/generate/report.py; an imported dataset's comes from its manifest here
(`import_report`): per attribute, the label counts against an even share, and whatever
`balance` section (before/after counts of a resampling) the manifest carries, read tolerantly.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

REPORT_FILE = "balance_report.json"
CHART_FILE = "balance_report.png"


def _rows_for(histogram: Mapping[str, Any]) -> list[dict[str, Any]]:
    counts = {str(v): int(n) for v, n in histogram.items() if isinstance(n, (int, float))}
    total = sum(counts.values())
    target = total / len(counts) if counts else 0.0
    return [{"stratum": v, "target": round(target, 3), "count": n, "deviation": round(n - target, 3)}
            for v, n in counts.items()]


def import_report(url: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The balance report of an imported dataset, from its manifest (label_histograms, balance)."""
    histograms = manifest.get("label_histograms") or {}
    attributes = {}
    for name, histogram in histograms.items():
        if isinstance(histogram, Mapping):
            rows = _rows_for(histogram)
            attributes[name] = {"strata": rows,
                                "max_abs_deviation": max((abs(r["deviation"]) for r in rows), default=0.0)}
    report: dict[str, Any] = {"kind": "imported", "source": url, "faces": (manifest.get("counts") or {}).get("kept"),
                              "target": "even share per value (an imported dataset has no quota)",
                              "attributes": attributes,
                              "rejects": {k: v for k, v in (manifest.get("dropped") or {}).items() if v}}
    balance = manifest.get("balance")
    if isinstance(balance, Mapping):  # a resampling's before/after, as the importer records it
        report["balance"] = dict(balance)
        after = balance.get("after")
        if isinstance(after, Mapping) and isinstance(after.get("label_histograms", after), Mapping):
            after = after.get("label_histograms", after)
            report["after"] = {name: {"strata": _rows_for(h)} for name, h in after.items() if isinstance(h, Mapping)}
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text, one stratum a line."""
    lines = [f"balance report: {report.get('source')} ({report.get('kind')})"]
    if report.get("kind") == "generated":
        total = report["total"]
        lines.append(f"mode {report.get('mode')}, strata over {report.get('strata_attributes') or '(none)'}, "
                     f"labeler {report.get('labeler') or '(none)'}; {total['count']} faces, target {total['target']}, "
                     f"max |count - target| {total['max_abs_deviation']}")
        header = f"  {'stratum':<28} {'target':>9} {'count':>7} {'dev':>7} {'attempts':>9} {'accept':>7} {'agree':>7}"
        lines.append(header)
        estimated = any("estimated_true_count" in r for r in report["strata"])
        if estimated:
            lines[-1] += f" {'true count (est.)':>26} {'label precision (est.)':>24}"
        for r in report["strata"]:
            rate, agree = r.get("acceptance_rate"), r.get("labeler_agreement")
            line = (f"  {r['stratum']:<28} {r['target']:>9} {r['count']:>7} {r['deviation']:>7} "
                    f"{r.get('attempts', '-')!s:>9} {'-' if rate is None else f'{rate:.3f}':>7} "
                    f"{'-' if agree is None else f'{agree:.3f}':>7}")
            if estimated:
                lo, hi = r.get("true_count_interval", [0, 0])
                true = f"{r.get('estimated_true_count', 0):.1f} [{lo:.1f}, {hi:.1f}]"
                p, (plo, phi) = r.get("label_precision"), r.get("label_precision_interval", [0, 0])
                line += f" {true:>26} {'-' if p is None else f'{p:.3f} [{plo:.3f}, {phi:.3f}]':>24}"
            lines.append(line + ("  SHORT" if r.get("short") else ""))
        tb = report.get("true_balance") or {}
        if tb.get("available"):
            lines.append(f"  estimated from labeler {tb.get('labeler_version')}'s held-out errors, "
                         f"{round(100 * tb.get('level', 0.95))} % intervals (docs/labels-and-balance.md)")
            for name, block in (tb.get("by_attribute") or {}).items():
                lines.append(f"  {name}: " + ", ".join(
                    f"{r['stratum']} labeled {r['labeled_count']}, true {r['estimated_true_count']:.1f} "
                    f"[{r['true_count_interval'][0]:.1f}, {r['true_count_interval'][1]:.1f}]" for r in block["strata"]))
        elif tb:
            lines.append(f"  true balance not estimated: {tb.get('reason')}")
        if total.get("rejects"):
            lines.append("  rejects: " + ", ".join(f"{k} {v}" for k, v in sorted(total["rejects"].items())))
        if total.get("short_strata"):
            lines.append(f"  short of their quota (attempt budget spent): {total['short_strata']}")
    else:
        lines.append(f"{report.get('faces')} images; target: {report.get('target')}")
        for name, block in report.get("attributes", {}).items():
            lines.append(f"  {name}: max |count - target| {block['max_abs_deviation']}")
            for r in block["strata"]:
                lines.append(f"    {r['stratum']:<24} {r['count']:>8}  (target {r['target']}, dev {r['deviation']})")
        if report.get("after"):
            lines.append("  after balancing:")
            for name, block in report["after"].items():
                lines.append(f"    {name}: " + ", ".join(f"{r['stratum']} {r['count']}" for r in block["strata"]))
        if report.get("rejects"):
            lines.append("  dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(report["rejects"].items())))
    return "\n".join(lines)


def draw_report(report: Mapping[str, Any]) -> bytes:
    """PNG charts of the report: counts against target per stratum; for generated outputs also the
    acceptance rate and labeler agreement per stratum, and rejects by reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report.get("kind") == "generated":
        panels = [("count vs target per stratum", report["strata"])]
    else:
        panels = [(f"{name}: count vs even share", block["strata"]) for name, block in report["attributes"].items()]
    generated = report.get("kind") == "generated"
    # Panels with nothing to show are left out: no labeler or gate ran, or no candidate was rejected.
    rates = generated and any(r.get("acceptance_rate") is not None or r.get("labeler_agreement") is not None
                              or r.get("label_precision") is not None for r in report["strata"])
    rejects = sorted(report["total"].get("rejects", {}).items()) if generated else []
    rows = len(panels) + rates + bool(rejects)
    fig, axes = plt.subplots(rows, 1, figsize=(max(6, 0.35 * max(len(p[1]) for p in panels) + 2), 2.6 * rows),
                             squeeze=False)
    for ax, (title, strata) in zip(axes[:, 0], panels):
        x = range(len(strata))
        ax.bar(x, [r["count"] for r in strata], color="#4c78a8", label="count (as labeled)")
        ax.scatter(x, [r["target"] for r in strata], color="#e45756", marker="_", s=300, label="target", zorder=3)
        if any("estimated_true_count" in r for r in strata):
            est = [r.get("estimated_true_count", 0.0) for r in strata]
            lo = [max(e - r.get("true_count_interval", [e, e])[0], 0.0) for e, r in zip(est, strata)]
            hi = [max(r.get("true_count_interval", [e, e])[1] - e, 0.0) for e, r in zip(est, strata)]
            ax.errorbar(list(x), est, yerr=[lo, hi], fmt="o", ms=3, color="#54a24b", capsize=2, zorder=4,
                        label="estimated true count")
        ax.set_xticks(list(x), [r["stratum"] for r in strata], rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    if rates:
        strata = report["strata"]
        x = range(len(strata))
        ax = axes[len(panels), 0]
        ax.bar([i - 0.2 for i in x], [r.get("acceptance_rate") or 0 for r in strata], width=0.4, label="acceptance rate")
        ax.bar([i + 0.2 for i in x], [r.get("labeler_agreement") or 0 for r in strata], width=0.4,
               label="labeler agrees with requested")
        if any("label_precision" in r for r in strata):
            p = [r.get("label_precision", float("nan")) for r in strata]
            interval = [r.get("label_precision_interval", [v, v]) for v, r in zip(p, strata)]
            ax.errorbar(list(x), p, yerr=[[max(v - i[0], 0.0) for v, i in zip(p, interval)],
                                          [max(i[1] - v, 0.0) for v, i in zip(p, interval)]],
                        fmt="D", ms=3, color="#54a24b", capsize=2, label="label precision (est.)")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(list(x), [r["stratum"] for r in strata], rotation=60, ha="right", fontsize=7)
        ax.set_title("per stratum", fontsize=9)
        ax.legend(fontsize=7)
    if rejects:
        ax = axes[-1, 0]
        ax.bar(range(len(rejects)), [n for _, n in rejects], color="#f58518")
        ax.set_xticks(range(len(rejects)), [k for k, _ in rejects], rotation=30, ha="right", fontsize=7)
        ax.set_title("rejected candidates by reason", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})  # no version stamp: same bytes each run
    plt.close(fig)
    return buf.getvalue()
