"""Every third-party module ganray and jobs/ import is installed by `pip install .` alone.

The test environment holds the dev extras too (pytest, moto, selenium, ...), so a runtime import of
one of them would pass every other test and fail for a user. This reads every import statement of
the package and the job entry points, maps each top-level module to the distributions that provide
it here, and checks them against the closure of pyproject.toml's runtime dependencies (with the
extras each requirement names), resolved through the installed distributions' own metadata. A
module-level import must come from the runtime closure; an import inside a function may also come
from a declared optional extra other than `dev` (ganray.labels.age_and_gender: `labelers`), and the
module that does it must still import without that extra. The other way round, every runtime
dependency must be imported somewhere in ganray/ or jobs/, or be listed in USED_WITHOUT_IMPORT with
the reason it is installed.
"""
from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "ganray").rglob("*.py"), *(REPO / "jobs").glob("*.py")])

# Runtime dependencies that nothing in ganray/ or jobs/ imports, and why they are installed anyway.
USED_WITHOUT_IMPORT = {
    "s3fs": "fsspec opens s3:// URLs with it (fsspec's registry maps the s3 protocol to s3fs)",
    "tqdm": "Ray Data draws its progress bars with it on a terminal (an optional dependency of Ray's)",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    env = default_environment()
    return any(req.marker.evaluate({**env, "extra": extra}) for extra in (extras or {""}))


def closure(requirements: list[Requirement], extras_of_parent: set[str] = frozenset()) -> set[str]:
    """The distributions `requirements` install, following each installed distribution's metadata."""
    seen: dict[str, set[str]] = {}
    todo = [(req, set(extras_of_parent)) for req in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if not applies(req, parent_extras):
            continue
        name = canonical(req.name)
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen[name] = seen.get(name, set()) | extras
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue  # a dependency for another platform (markers) or not installed here
        todo += [(Requirement(r), seen[name]) for r in requires]
    return set(seen)


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, at module level?) for every absolute import in `path`."""
    tree = ast.parse(path.read_text(), str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(child) for child in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) not in in_function) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], id(node) not in in_function))
    return [(top, module_level) for top, module_level in found
            if top not in sys.stdlib_module_names and top != "ganray"]


@functools.cache
def _distributions_of_modules() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # reads every installed distribution's file list: once


def providers(top: str) -> set[str]:
    return {canonical(d) for d in _distributions_of_modules().get(top, [])}


def test_every_import_is_a_declared_dependency():
    runtime = closure([Requirement(r) for r in project()["dependencies"]])
    optional = {extra: closure([Requirement(r) for r in reqs])
                for extra, reqs in project()["optional-dependencies"].items() if extra != "dev"}
    problems = []
    for path in SOURCES:
        for top, module_level in imports(path):
            found = providers(top)
            where = path.relative_to(REPO)
            if not found:
                problems.append(f"{where}: no installed distribution provides {top!r}")
            elif module_level and not found & runtime:
                problems.append(f"{where}: imports {top!r} ({sorted(found)}) at module level, "
                                "and no runtime dependency installs it")
            elif not found & (runtime | set().union(*optional.values())):
                problems.append(f"{where}: imports {top!r} ({sorted(found)}), which only the dev extra installs")
    assert not problems, "\n".join(problems)
    assert {"torch", "ray", "pyarrow", "fsspec", "s3fs"} <= runtime
    assert "pytest" not in runtime and "moto" not in runtime  # dev-only stays out of the closure


def test_the_checker_sees_dev_only_and_function_level_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import numpy\nfrom moto import server\n\ndef f():\n    import pytest\n")
    assert imports(source) == [("numpy", True), ("moto", True), ("pytest", False)]
    runtime = closure([Requirement(r) for r in project()["dependencies"]])
    assert providers("moto") and not providers("moto") & runtime
    assert providers("numpy") & runtime
    # The extras a requirement names are followed: ray[serve] brings fastapi's and uvicorn's dists.
    assert {"uvicorn"} <= closure([Requirement("ray[serve]")]) - closure([Requirement("ray")])


def modules_of(distribution: str) -> set[str]:
    """The top-level modules an installed distribution provides (pyyaml -> yaml, pillow -> PIL)."""
    return {top for top, dists in _distributions_of_modules().items()
            if canonical(distribution) in {canonical(d) for d in dists}}


def unused_dependencies(requirements: list[str], sources: list[Path]) -> list[str]:
    imported = {top for path in sources for top, _ in imports(path)}
    return [req.name for req in map(Requirement, requirements)
            if not modules_of(req.name) & imported and canonical(req.name) not in USED_WITHOUT_IMPORT]


def test_every_runtime_dependency_is_used():
    declared = project()["dependencies"]
    unused = unused_dependencies(declared, SOURCES)
    assert not unused, (f"runtime dependencies that nothing in ganray/ or jobs/ imports: {unused} "
                        "(move them to an extra, or list them in USED_WITHOUT_IMPORT with the reason)")
    names = {canonical(Requirement(r).name) for r in declared}
    assert set(USED_WITHOUT_IMPORT) <= names, "USED_WITHOUT_IMPORT names a dependency that is not declared"
    imported = {top for path in SOURCES for top, _ in imports(path)}
    stale = [d for d in USED_WITHOUT_IMPORT if modules_of(d) & imported]
    assert not stale, f"imported after all, drop them from USED_WITHOUT_IMPORT: {stale}"


def test_the_dependencies_used_without_an_import_are_used_that_way():
    import fsspec
    from ray.experimental import tqdm_ray

    assert fsspec.get_filesystem_class("s3").__module__.split(".")[0] == "s3fs"
    assert tqdm_ray.real_tqdm is not None  # else Ray Data's bars are off ("tqdm is not installed")


def test_the_unused_dependency_check_can_fail(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import yaml\nfrom PIL import Image\n")
    assert unused_dependencies(["pyyaml>=6", "pillow>=10", "httpx>=0.27", "s3fs"], [source]) == ["httpx"]
