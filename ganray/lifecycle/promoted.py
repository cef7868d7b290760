"""The version an alias was last promoted to through its gate: what monitoring compares the served
faces with, and whose run config retraining starts from.

A forced move or an unchecked one (`Registry.promote`) is not a promotion through the gate: the
decisions log says which moves the gate allowed, so a bad reload behind the alias never becomes
its own baseline.
"""
from __future__ import annotations

from ganray.registry import Registry, RegistryError


class NoPromotedVersion(RegistryError):
    """The alias was never moved through its gate, and no version was named instead."""


def promoted_version(registry: Registry, alias: str) -> tuple[str, str | None]:
    """(version, decision id) of the newest gate decision that allowed `alias` to move."""
    for decision in reversed(registry.decisions()):
        if decision.get("alias") == alias and decision.get("outcome") == "allowed":
            return registry.resolve(decision["candidate"]), decision["id"]
    raise NoPromotedVersion(
        f"no version took {alias!r} in {registry.url} through its gate (the decisions log has no allowed move): "
        f"evaluate one and promote it (`ganray eval`, `ganray registry promote VERSION {alias}`), or name the "
        "version to compare with")
