"""Benchmark figures are data: every script in benchmarks/ writes benchmarks/results/NAME.json through
one writer, every result file is complete, and docs/benchmarks.md is exactly what the renderer makes
of the committed results (a hand edit fails here). Reads files only: no Ray, no torch."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import render_docs  # noqa: E402
from _result import BenchmarkRun  # noqa: E402

SCRIPTS = render_docs.benchmark_scripts()
RESULT_FILES = sorted((BENCHMARKS / "results").glob("*.json"))


def writes_its_result(script: Path) -> list[str]:
    """What is missing for `script` to write its result through benchmarks/_result.py."""
    tree = ast.parse(script.read_text(), str(script))
    problems = []
    if render_docs.script_facts(script)["result_name"] != script.stem:
        problems.append(f'no module-level RESULT_NAME = "{script.stem}"')
    imports_writer = any(isinstance(node, ast.ImportFrom) and node.module == "_result"
                         and any(a.name == "BenchmarkRun" for a in node.names) for node in ast.walk(tree))
    constructs = any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "BenchmarkRun"
                     and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "RESULT_NAME"
                     for node in ast.walk(tree))
    writes = any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "write"
                 and not node.args for node in ast.walk(tree))
    if not imports_writer:
        problems.append("does not import BenchmarkRun from _result")
    if not constructs:
        problems.append("never calls BenchmarkRun(RESULT_NAME, ...)")
    if not writes:
        problems.append("never calls .write()")
    return problems


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_benchmark_writes_its_result_through_the_writer(script):
    assert writes_its_result(script) == []


def test_the_wiring_check_can_fail(tmp_path):
    loose = tmp_path / "loose.py"
    loose.write_text('"""Prints a number."""\nprint(42)\n')
    assert len(writes_its_result(loose)) == 4


@pytest.mark.parametrize("path", RESULT_FILES, ids=[p.name for p in RESULT_FILES])
def test_every_result_file_is_complete(path):
    assert render_docs.result_problems(json.loads(path.read_text()), path.stem) == []
    assert path.stem in {render_docs.script_facts(s)["result_name"] for s in SCRIPTS}, "no script writes it"


def test_the_docs_page_is_the_rendered_results():
    page = REPO / "docs" / "benchmarks.md"
    assert page.read_text() == render_docs.render(), \
        "docs/benchmarks.md differs from the results: run .venv/bin/python benchmarks/render_docs.py"


def test_a_written_result_renders_and_a_missing_one_says_so(tmp_path):
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    for name in ("fast", "slow"):
        (scripts / f"{name}.py").write_text(f'"""The {name} one."""\nRESULT_NAME = "{name}"\n')
    run = BenchmarkRun("fast", mode="quick", title="The fast one.", argv=[str(scripts / "fast.py"), "--quick"])
    run.figure("job ÷ raw | prepared", 0.91234, note="goal >= 0.9")
    run.table("by clients", ["clients", "faces/s"], [[1, 120.5], [32, 480.0]])
    written = run.write(tmp_path / "results")
    record = json.loads(written.read_text())
    assert render_docs.result_problems(record, "fast") == []
    assert record["machine"]["bf16"] in ("AMX", "AVX512-BF16", "none")
    assert len(record["load_average"]["start"]) == 3

    page = render_docs.render(tmp_path / "results", scripts)
    fast, slow = page.split("## fast")[1].split("## slow")
    assert "| job ÷ raw \\| prepared | 0.912 |  | goal >= 0.9 |" in fast
    assert "| 32 | 480 |" in fast and "--quick`" in fast and "mode quick" in fast
    assert "_No result yet._" in slow and "benchmarks/slow.py" in slow


def test_an_incomplete_result_is_refused_by_name(tmp_path):
    (tmp_path / "fast.json").write_text(json.dumps({"name": "fast", "figures": []}))
    with pytest.raises(ValueError, match=r"fast\.json: missing field 'title'.*figures must be a non-empty list"):
        render_docs.load_results(tmp_path)
    with pytest.raises(ValueError, match="measured nothing"):
        BenchmarkRun("empty").write(tmp_path)


def test_docs_pages_quote_results_as_rendered_from_the_result_files():
    results = render_docs.load_results()
    for page in render_docs.quoting_pages():
        assert page.read_text() == render_docs.render_quotes(page.read_text(), results,
                                                             render_docs.benchmarks_link(page)), \
            f"{page.name} quotes results that differ from the files: run .venv/bin/python benchmarks/render_docs.py"


def test_a_quote_block_is_filled_from_its_result_and_a_hand_edit_is_undone(tmp_path):
    run = BenchmarkRun("fast", mode="quick", title="The fast one.", argv=["fast.py"])
    run.figure("faces per second", 480.0, unit="faces/s")
    run.table("by clients", ["clients", "faces/s"], [[1, 120.5], [32, 480.0]])
    record = json.loads(run.write(tmp_path).read_text())
    page = ('Intro.\n<!-- results: fast table="by clients" -->\n| clients | faces/s |\n| 32 | 999 |\n'
            '<!-- /results -->\nAfter.\n<!-- results: fast -->\n<!-- /results -->\n')
    filled = render_docs.render_quotes(page, {"fast": record})
    assert "| 32 | 480 |" in filled and "999" not in filled and "| faces per second | 480 | faces/s |" in filled
    assert filled.startswith("Intro.\n") and "\nAfter.\n" in filled and "benchmarks.md#fast" in filled
    assert render_docs.render_quotes(filled, {"fast": record}) == filled
    with pytest.raises(ValueError, match="no table titled 'missing'"):
        render_docs.render_quotes('<!-- results: fast table="missing" -->\n<!-- /results -->', {"fast": record})
    assert "No result yet" in render_docs.render_quotes("<!-- results: slow -->\n<!-- /results -->", {})
    subset = render_docs.render_quotes('<!-- results: fast figures="faces per second" -->\n<!-- /results -->',
                                       {"fast": record}, "docs/benchmarks.md")
    assert "| faces per second | 480 | faces/s |" in subset and "docs/benchmarks.md#fast" in subset
    with pytest.raises(ValueError, match="no figures named \\['nope'\\]"):
        render_docs.render_quotes('<!-- results: fast figures="nope" -->\n<!-- /results -->', {"fast": record})
