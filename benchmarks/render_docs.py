"""Renders docs/benchmarks.md from benchmarks/results/*.json: the page is never edited by hand.

    .venv/bin/python benchmarks/render_docs.py           # writes docs/benchmarks.md
    .venv/bin/python benchmarks/render_docs.py --check   # exit 1 if the page differs from the results

One section per script in benchmarks/ (its docstring's first line as the heading): the machine,
commit, date, mode and load average of its latest result, the command that reproduces it, its
figures and tables. A script without a result file is listed with its command and "no result yet".
tests/test_benchmarks.py checks that the committed page equals this script's output.

Other docs pages quote results the same way, never by hand: a block

    <!-- results: NAME -->                 the figures of result NAME
    <!-- results: NAME table="TITLE" -->   or one of its tables
    <!-- results: NAME figures="A|B" -->   or the figures named A and B
    <!-- /results -->

is filled by this script with the table and the machine and date it was measured on (`--check`
compares those blocks too). README.md may quote results the same way.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

from _result import MACHINE_FIELDS, REQUIRED

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
PAGE = REPO / "docs" / "benchmarks.md"
# Not benchmarks: the result writer and this renderer.
NOT_BENCHMARKS = {"_result.py", "render_docs.py"}


def benchmark_scripts(directory: Path = BENCHMARKS) -> list[Path]:
    return sorted(p for p in directory.glob("*.py") if p.name not in NOT_BENCHMARKS)


def script_facts(script: Path) -> dict[str, str]:
    """A script's title (docstring's first line) and RESULT_NAME, read without importing it."""
    tree = ast.parse(script.read_text(), str(script))
    doc = ast.get_docstring(tree) or ""
    name = ""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RESULT_NAME" for t in node.targets)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            name = node.value.value
    return {"title": doc.strip().splitlines()[0].strip() if doc.strip() else script.stem, "result_name": name}


def result_problems(record: Any, name: str) -> list[str]:
    """What is missing or wrong in one result record (empty when it is complete)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    problems = [f"missing field {field!r}" for field in REQUIRED if field not in record]
    if record.get("name", name) != name:
        problems.append(f"name {record.get('name')!r} is not the file's name {name!r}")
    machine = record.get("machine")
    if "machine" in record:
        if not isinstance(machine, dict):
            problems.append("machine is not an object")
        else:
            problems += [f"machine lacks {field!r}" for field in MACHINE_FIELDS if field not in machine]
    load = record.get("load_average")
    if "load_average" in record and not (isinstance(load, dict) and all(
            isinstance(load.get(k), list) for k in ("start", "end"))):
        problems.append("load_average needs lists 'start' and 'end'")
    figures = record.get("figures")
    if "figures" in record:
        if not isinstance(figures, list) or not figures:
            problems.append("figures must be a non-empty list")
        elif not all(isinstance(f, dict) and "name" in f and "value" in f for f in figures):
            problems.append("every figure needs a name and a value")
    return problems


def load_results(directory: Path = RESULTS) -> dict[str, dict]:
    """Result records by name; ValueError naming the file for one that is incomplete."""
    results = {}
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from e
        problems = result_problems(record, path.stem)
        if problems:
            raise ValueError(f"{path}: {'; '.join(problems)}")
        results[path.stem] = record
    return results


def number(value: Any) -> str:
    """A cell: numbers to about 3 significant digits (more left of the point), text as it is."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        size = abs(value)
        if size >= 100:
            return f"{value:,.0f}"
        if size >= 10:
            return f"{value:.1f}"
        if size >= 1 or size == 0:
            return f"{value:.2f}"
        return f"{value:#.3g}"
    return str(value)


def cell(value: Any) -> str:
    return number(value).replace("|", "\\|").replace("\n", " ")


def machine_line(record: dict) -> str:
    m, load = record["machine"], record["load_average"]
    gpu = "no GPU" if m["gpu"] == "none" else f"GPU {m['gpu']}"
    versions = ", ".join(f"{k} {m[k]}" for k in ("torch", "ray") if k in m)
    dirty = " (with uncommitted changes)" if record.get("uncommitted_changes") else ""

    def first(values: list) -> str:
        return number(float(values[0])) if values else "?"

    return (f"**Machine:** {m['cpu']}, {m['cores']} cores, bf16: {m['bf16']}, {gpu}"
            f"{'; ' + versions if versions else ''}.  \n"
            f"**Run:** {record['date']}, commit `{record['commit']}`{dirty}, mode {record['mode']}, "
            f"{number(float(record['duration_s']))} s; load average (1 min) {first(load['start'])} at start, "
            f"{first(load['end'])} at end.")


def section(script: Path, record: dict | None) -> list[str]:
    facts = script_facts(script)
    name = facts["result_name"] or script.stem
    lines = [f"## {name}", "", facts["title"], ""]
    if record is None:
        lines += [f"Reproduce: `.venv/bin/python benchmarks/{script.name}` (see the script's docstring for its "
                  "arguments)", "", "_No result yet._", ""]
        return lines
    lines += [machine_line(record), "", f"Reproduce: `{record['command']}`", ""]
    for note in record.get("notes", []):
        lines += [note, ""]
    lines += ["| measurement | value | unit | note |", "|---|---|---|---|"]
    for f in record["figures"]:
        lines.append(f"| {cell(f['name'])} | {cell(f['value'])} | {cell(f.get('unit', ''))} | "
                     f"{cell(f.get('note', ''))} |")
    lines.append("")
    for table in record.get("tables", []):
        lines += [f"**{table['title']}**", "", "| " + " | ".join(cell(c) for c in table["columns"]) + " |",
                  "|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in table["rows"]]
        lines.append("")
    return lines


def render(results_dir: Path = RESULTS, scripts_dir: Path = BENCHMARKS) -> str:
    results = load_results(results_dir)
    scripts = benchmark_scripts(scripts_dir)
    names = {script_facts(s)["result_name"] or s.stem for s in scripts}
    orphans = sorted(set(results) - names)
    if orphans:
        raise ValueError(f"result files without a benchmark script: {orphans}")
    lines = [
        "# Benchmarks",
        "",
        "Rendered by `.venv/bin/python benchmarks/render_docs.py` from `benchmarks/results/*.json`; do not edit",
        "by hand (tests/test_benchmarks.py fails when this page differs from the results). To update a figure,",
        "re-run its benchmark with the command under its heading (it rewrites its result file), then the renderer.",
        "",
        "Each result names the machine it ran on (CPU, cores, how the CPU computes bf16: AMX, AVX512-BF16 or",
        "none, GPU), the commit, the date, the mode (a quick mode runs fewer faces or requests) and the load",
        "average at start and end: the machines are shared, so ratios measured side by side in one run are the",
        "figures to trust; absolute rates move with whatever else ran.",
        "",
    ]
    for script in scripts:
        name = script_facts(script)["result_name"] or script.stem
        lines += section(script, results.get(name))
    return "\n".join(lines).rstrip("\n") + "\n"


QUOTE = re.compile(r'(<!-- results: (?P<name>[A-Za-z0-9_]+)(?: table="(?P<table>[^"]+)")?'
                   r'(?: figures="(?P<figures>[^"]+)")? -->\n)(?P<body>.*?)(<!-- /results -->)', re.DOTALL)


def table_lines(columns: list[Any], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def quote(results: dict[str, dict], name: str, table: str | None, figures: str | None = None,
          page: str = "benchmarks.md") -> str:
    """A quote block's body: one table of result `name` (its figures, the ones named `A|B`, or the
    table titled `table`) and where and when it was measured; `page`: the benchmarks page's link."""
    record = results.get(name)
    if record is None:
        return f"_No result yet: run the [{name}]({page}#{name}) benchmark._\n"
    if table is None:
        chosen = record["figures"]
        if figures is not None:
            wanted = figures.split("|")
            chosen = [f for f in record["figures"] if f["name"] in wanted]
            missing = sorted(set(wanted) - {f["name"] for f in chosen})
            if missing:
                raise ValueError(f"result {name!r} has no figures named {missing}")
        noted = any(f.get("note") for f in chosen)  # a note (a goal, an interval) is part of the figure
        lines = table_lines(["measurement", "value", "unit", *(["note"] if noted else [])],
                            [[f["name"], f["value"], f.get("unit", ""), *([f.get("note", "")] if noted else [])]
                             for f in chosen])
    else:
        found = [t for t in record.get("tables", []) if t["title"] == table]
        if not found:
            raise ValueError(f"result {name!r} has no table titled {table!r}")
        lines = table_lines(found[0]["columns"], found[0]["rows"])
    m = record["machine"]
    lines += ["", f"_Measured {record['date'][:10]} on {m['cpu']} ({m['cores']} cores"
                  f"{'' if m['gpu'] == 'none' else ', ' + m['gpu']}), mode {record['mode']}: "
                  f"[{name}]({page}#{name}) has the command and the full result._"]
    return "\n".join(lines) + "\n"


def render_quotes(text: str, results: dict[str, dict], page: str = "benchmarks.md") -> str:
    """`text` with every results block filled from `results` (`page`: the benchmarks page, relative to it)."""
    return QUOTE.sub(lambda m: m.group(1) + quote(results, m.group("name"), m.group("table"), m.group("figures"),
                                                  page) + m.group(6), text)


def quoting_pages(docs: Path = PAGE.parent) -> list[Path]:
    """Pages with results blocks: docs pages, and the README (which links the page as docs/benchmarks.md)."""
    pages = [p for p in docs.glob("*.md") if p != PAGE] + [REPO / "README.md"]
    return sorted(p for p in pages if p.exists() and QUOTE.search(p.read_text()))


def benchmarks_link(page: Path) -> str:
    return "benchmarks.md" if page.parent == PAGE.parent else str(PAGE.relative_to(page.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 if the page is out of date")
    args = parser.parse_args()
    try:
        pages = {PAGE: render()}
        results = load_results()
        pages.update({p: render_quotes(p.read_text(), results, benchmarks_link(p)) for p in quoting_pages()})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = [p for p, text in pages.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(REPO)} is out of date: run .venv/bin/python benchmarks/render_docs.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(pages[p])
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
