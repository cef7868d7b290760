"""The package's arrows only point down (docs/DEVELOPING.md): checked on every import statement,
at module level and inside functions, by reading the source."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ganray"

# Room -> the rooms it may import. Rooms not listed on the right are above it.
BASE = {"ganray.config", "ganray.storage", "ganray.images", "ganray.console", "ganray.local_web"}
ALLOWED = {
    "ganray.config": set(),
    "ganray.storage": set(),
    "ganray.images": set(),
    "ganray.console": set(),
    "ganray.local_web": set(),
    "ganray.runtime": {"ganray.console"},
    "ganray.checkpoints": {"ganray.storage"},
    "ganray.worker": {"ganray.checkpoints"},
    "ganray.models": {"ganray.config", "ganray.images", "ganray.console"},
    "ganray.data": BASE,
    "ganray.registry": BASE | {"ganray.models"},
    "ganray.registry_events": BASE,
    "ganray.lineage": BASE | {"ganray.data", "ganray.registry", "ganray.registry_events"},
    "ganray.train": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.checkpoints", "ganray.worker", "ganray.models", "ganray.data",
                            "ganray.registry"},
    "ganray.generate": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.models", "ganray.data", "ganray.registry",
                               "ganray.labels"},
    "ganray.serve": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.models", "ganray.registry"},
    "ganray.eval": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.models", "ganray.data", "ganray.registry", "ganray.labels"},
    "ganray.labels": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.checkpoints", "ganray.worker", "ganray.models", "ganray.data",
                             "ganray.registry"},
    "ganray.studio": BASE | {"ganray.data", "ganray.registry"},
    "ganray.lifecycle": BASE | {"ganray.registry_events", "ganray.runtime", "ganray.models", "ganray.data", "ganray.registry",
                                 "ganray.labels", "ganray.train", "ganray.eval"},  # monitor, retrain: used by cli only
    "ganray.cli": None,  # the top: may import every room
}


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def ganray_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ganray")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("ganray"):
            if node.module == "ganray":  # `from ganray import storage`
                found += [(node.lineno, f"ganray.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_imports_point_down(path):
    own = room_of(module_name(path))
    if own == "ganray":
        return  # ganray/__init__.py: the version only
    assert own in ALLOWED, f"{own} is a new room: add it to ALLOWED here and to docs/DEVELOPING.md"
    allowed = ALLOWED[own]
    if allowed is None:
        return
    wrong = [f"line {line}: {target}" for line, target in ganray_imports(path)
             if room_of(target) != own and room_of(target) not in allowed]
    assert not wrong, f"{path.relative_to(REPO)} ({own}) imports rooms above it: {wrong}"


def test_architectures_are_built_only_through_the_models_table():
    """Nothing outside ganray/models imports an architecture module (dcgan) directly."""
    offenders = []
    for path in SOURCES + sorted((REPO / "jobs").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        if path.is_relative_to(PACKAGE / "models"):
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}" for line, target in ganray_imports(path)
                      if target.startswith("ganray.models.dcgan")]
    assert not offenders


def test_jobs_are_thin_entry_points():
    for path in sorted((REPO / "jobs").glob("*.py")):
        assert {t for _, t in ganray_imports(path)} == {"ganray.cli"}, path.name


def test_the_checker_sees_function_level_and_package_imports(tmp_path):
    """The checker itself can fail: it finds an upward import hidden inside a function."""
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from ganray.train.loop import run\n    from ganray import storage\n")
    assert ganray_imports(source) == [(2, "ganray.train.loop"), (3, "ganray.storage")]
