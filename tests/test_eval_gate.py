"""Promotion gates: beats / fails / forced / no metrics / not comparable, the decisions log, the CLI."""
from __future__ import annotations

import json
import threading

import pytest
import torch

from ganray import storage
from ganray.cli import main as cli
from ganray.config import DCGANConfig
from ganray.eval.gate import make_gate, promote
from ganray.models import build_generator
from ganray.registry import Registry, RegistryError

MODEL = DCGANConfig(z_dim=8, g_width=4).model_dump()
SAME_WAY = {"extractor": {"name": "pixels"}, "reference": "abc", "count": 100, "reference_count": 100}


def push(registry: Registry, seed: int) -> str:
    torch.manual_seed(seed)
    return registry.push(build_generator(DCGANConfig(**MODEL), 32, {}).state_dict(), MODEL, 32, {}, {"seed": seed})


def result(fid: float, comparable: dict | None = None) -> dict:
    return {"metrics": {"fid": fid, "kid_mean": fid / 1000}, "comparable": comparable or SAME_WAY}


@pytest.fixture
def registry(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    for seed in range(4):
        push(registry, seed)
    registry.set_gate("production", make_gate("fid", margin=1.0))
    return registry


def test_gate_allows_a_version_that_beats_the_holder_by_the_margin(registry):
    registry.record("v1", "default", result(10.0))
    registry.record("v2", "default", result(8.9))
    first = promote(registry, "v1", "production")
    assert (first.outcome, first.holder, registry.resolve("production")) == ("allowed", None, "v1")
    second = promote(registry, "v2", "production")
    assert second.outcome == "allowed" and "beats" in second.reason and registry.resolve("production") == "v2"
    entry = registry.decisions()[-1]
    assert (entry["id"], entry["candidate"], entry["holder"], entry["outcome"]) == ("d-00000002", "v2", "v1", "allowed")
    assert entry["candidate_result"]["metrics"]["fid"] == 8.9 and entry["holder_result"]["metrics"]["fid"] == 10.0
    assert entry["gate"] == {"metric": "fid", "margin": 1.0, "evaluation": "default"}
    assert entry["user"] and entry["host"] and entry["recorded_at"] and "beats" in entry["reason"]


def test_gate_refuses_a_version_that_does_not_beat_by_the_margin_and_force_overrides(registry):
    registry.record("v1", "default", result(10.0))
    registry.record("v2", "default", result(9.5))  # better, but by less than the margin of 1.0
    promote(registry, "v1", "production")
    refused = promote(registry, "v2", "production")
    assert (refused.outcome, refused.moved, registry.resolve("production")) == ("refused", False, "v1")
    assert "does not beat" in refused.reason and "9.5 vs 10" in refused.reason
    forced = promote(registry, "v2", "production", force=True)
    assert forced.outcome == "forced" and registry.resolve("production") == "v2"
    assert [d["outcome"] for d in registry.decisions()] == ["allowed", "refused", "forced"]
    assert registry.decisions()[-1]["holder_result"]["metrics"]["fid"] == 10.0  # both sets kept when forced


def test_gate_refuses_without_metrics_or_comparable_measurements(registry):
    assert "has no recorded fid" in promote(registry, "v1", "production").reason  # candidate unmeasured
    assert not registry.aliases()
    registry.record("v1", "default", result(10.0))
    promote(registry, "v1", "production")
    registry.record("v3", "default", result(1.0, {**SAME_WAY, "count": 50000}))
    assert "not measured the same way" in promote(registry, "v3", "production").reason
    registry.promote("v2", "production")  # the unchecked move: a holder without results
    registry.record("v4", "default", result(1.0))
    assert "holder v2 has no recorded fid" in promote(registry, "v4", "production").reason
    assert registry.resolve("production") == "v2"
    assert [d["outcome"] for d in registry.decisions()] == ["refused", "allowed", "refused", "refused"]


def test_higher_is_better_metrics_and_aliases_without_a_gate(registry):
    registry.set_gate("production", make_gate("recall", margin=0.05))
    registry.record("v1", "default", {"metrics": {"recall": 0.50}, "comparable": SAME_WAY})
    registry.record("v2", "default", {"metrics": {"recall": 0.54}, "comparable": SAME_WAY})
    registry.record("v3", "default", {"metrics": {"recall": 0.56}, "comparable": SAME_WAY})
    promote(registry, "v1", "production")
    assert promote(registry, "v2", "production").outcome == "refused"
    assert promote(registry, "v3", "production").outcome == "allowed"
    before = len(registry.decisions())
    ungated = promote(registry, "v4", "staging")  # no gate: moves as always, nothing logged
    assert ungated.outcome == "ungated" and registry.resolve("staging") == "v4"
    assert len(registry.decisions()) == before
    with pytest.raises(RegistryError, match="unknown gate metric"):
        make_gate("accuracy")
    with pytest.raises(RegistryError, match="margin must be >= 0"):
        make_gate("fid", -1)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_records_and_decision_log_entries_are_atomic_and_never_shared(where, tmp_path, request):
    url = str(tmp_path / "r") if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}/r"
    registry = Registry(url)
    push(registry, 0)
    registry.record("v1", "default", result(3.0))
    registry.record("latest", "default", result(2.0))  # replaces, by ref
    registry.record("v1", "fid10k", result(5.0))
    assert registry.evaluations("v1") == {"default": result(2.0), "fid10k": result(5.0)}
    with pytest.raises(RegistryError, match="not an evaluation name"):
        registry.record("v1", "../x", result(1.0))
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(registry.append_decision({"n": i}))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ids) == [f"d-{n:08d}" for n in range(1, 7)]
    assert sorted(d["n"] for d in registry.decisions()) == list(range(6))


def test_cli_gate_promote_force_decisions_and_show(registry, capsys):
    url = registry.url
    registry.record("v1", "default", result(10.0))
    registry.record("v2", "default", result(9.5))
    assert cli(["registry", "gate", "production", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"metric": "fid", "margin": 1.0, "evaluation": "default"}
    assert cli(["registry", "promote", "v1", "production", "--registry", url]) == 0
    assert cli(["registry", "promote", "v2", "production", "--registry", url]) == 1
    err = capsys.readouterr().err
    assert "refused: production stays at v1" in err and "does not beat" in err
    assert cli(["registry", "promote", "v2", "production", "--force", "--registry", url]) == 0
    assert "forced" in capsys.readouterr().out and registry.resolve("production") == "v2"
    assert cli(["registry", "decisions", "--alias", "production", "--registry", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[6] for line in lines] == ["allowed:", "refused:", "forced:"]
    assert cli(["registry", "show", "v2", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out)["evaluations"]["default"]["metrics"]["fid"] == 9.5
    assert cli(["registry", "gate", "production", "--margin", "-1", "--registry", url]) == 2
    assert "margin must be >= 0" in capsys.readouterr().err
    assert cli(["registry", "gate", "production", "--remove", "--registry", url]) == 0
    assert registry.gate("production") is None
    assert cli(["registry", "promote", "v4", "production", "--registry", url]) == 0  # ungated again


def test_push_with_promote_goes_through_the_gate(tmp_path, capsys):
    from test_registry import _write_checkpoint, generator  # a training run's checkpoint, as push reads it

    _write_checkpoint(str(tmp_path / "runs"), "demo", generator(5))
    url = str(tmp_path / "registry")
    Registry(url).set_gate("production", make_gate("fid"))
    assert cli(["registry", "push", "--from-run", str(tmp_path / "runs"), "demo", "--promote", "production",
                "--registry", url]) == 1  # pushed, but unmeasured: the gate refuses
    assert "pushed demo as v1" in capsys.readouterr().out
    assert Registry(url).versions() == ["v1"] and Registry(url).aliases() == {}
    assert Registry(url).decisions()[0]["outcome"] == "refused"


def test_a_corrupt_alias_file_is_an_error_not_an_empty_alias(registry):
    registry.record("v1", "default", result(10.0))
    storage.atomic_write(storage.join(registry.url, "aliases", "production.json"), b'{"version": "../x"}')
    with pytest.raises(RegistryError, match="refusing to follow it"):
        promote(registry, "v1", "production")
    assert registry.decisions() == []
