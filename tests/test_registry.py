"""Model registry on a local folder and on S3 (moto): versions, aliases, safe loading, the CLI."""
from __future__ import annotations

import io
import json
import re
import threading

import pytest
import torch

from ganray import storage
from ganray.cli import main as cli
from ganray.config import DCGANConfig
from ganray.models.face import render_faces
from ganray.models import build_generator
from ganray.registry import Registry, RegistryError

ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
MODEL = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4).model_dump()


def generator(seed: int) -> Generator:
    torch.manual_seed(seed)
    return build_generator(DCGANConfig(**MODEL), 32, ATTRIBUTES).eval()


@pytest.fixture(params=["local", "s3"])
def registry_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/registry"


def test_push_list_show_promote_load(registry_url):
    registry = Registry(registry_url)
    assert registry.list() == [] and registry.aliases() == {}
    g1, g2 = generator(1), generator(2)
    assert registry.push(g1.state_dict(), MODEL, 32, ATTRIBUTES, {"run_name": "a", "step": 10}) == "v1"
    assert registry.push(g2.state_dict(), MODEL, 32, ATTRIBUTES, {"run_name": "a", "step": 20}) == "v2"
    assert [v.version for v in registry.list()] == ["v1", "v2"]

    assert registry.promote("v1", "production") == "v1"
    assert registry.promote("latest", "candidate") == "v2"
    assert registry.aliases() == {"candidate": "v2", "production": "v1"}
    info = registry.show("production")
    assert (info.version, info.resolution, info.aliases) == ("v1", 32, ["production"])
    assert info.provenance == {"run_name": "a", "step": 10}
    assert info.conditions == ATTRIBUTES and list(info.conditions) == ["gender", "age"]  # column order kept

    loaded = registry.load_generator("production")
    assert loaded.version == "v1" and not loaded.generator.training
    labels = torch.tensor([[1, 2], [0, 0]])
    assert (render_faces(loaded.generator, [3, 4], labels=labels) == render_faces(g1, [3, 4], labels=labels)).all()

    assert registry.promote("candidate", "production") == "v2"  # move the alias
    assert registry.resolve("production") == "v2"
    assert not [u for u in storage.ls(storage.join(registry.url, "aliases")) if storage.is_temp(u)]


def test_unknown_refs_and_bad_aliases_are_clear_errors(registry_url):
    registry = Registry(registry_url)
    with pytest.raises(RegistryError, match="holds no versions"):
        registry.resolve("latest")
    registry.push(generator(1).state_dict(), MODEL, 32, ATTRIBUTES, {})
    for ref in ("v7", "staging", "no such thing", "v1\n", "../v1", "versions/v1", "v01"):
        with pytest.raises(RegistryError, match=r"unknown model .* versions \['v1'\]"):
            registry.show(ref)
    for alias in ("v3", "latest", "has space", "-x"):
        with pytest.raises(RegistryError, match="invalid alias"):
            registry.promote("v1", alias)
    with pytest.raises(RegistryError, match="do not fit"):
        registry.push(generator(1).state_dict(), {**MODEL, "g_width": 16}, 32, ATTRIBUTES, {})


def test_alias_files_naming_paths_are_refused_not_followed(registry_url, capsys, monkeypatch):
    registry = Registry(registry_url)
    registry.push(generator(1).state_dict(), MODEL, 32, ATTRIBUTES, {})
    # A complete copy of v1 beside the registry: following an alias there would load it without error.
    parent = registry.url.rsplit("/", 1)[0]
    version_dir = storage.join(registry.url, "versions", "v1")
    for entry in storage.ls(version_dir):
        storage.atomic_write(storage.join(parent, "evil", entry.rsplit("/", 1)[1]), storage.read_bytes(entry))
    outside = storage.join(parent, "evil")
    absolute = outside if storage.is_local(outside) else "/" + outside.removeprefix("s3://")
    targets = ["../../evil", "v1/../../../evil", absolute, outside if "://" in outside else "file://" + outside,
               "s3://other-bucket/evil", "v1\n", 7, None]
    alias_file = storage.join(registry.url, "aliases", "production.json")
    monkeypatch.setenv("GANRAY_REGISTRY", registry.url)
    for target in targets:
        storage.atomic_write(alias_file, json.dumps({"alias": "production", "version": target}).encode())
        refused = rf"alias 'production' in .* is corrupt: .* names {re.escape(repr(target))}, which is not a " \
                  r"version id \(v1, v2, ...\); refusing to follow it"
        for read in (registry.resolve, registry.show, registry.load_generator):
            with pytest.raises(RegistryError, match=refused):
                read("production")
        for read_all in (registry.aliases, registry.list):
            with pytest.raises(RegistryError, match=refused):
                read_all()
        assert cli(["registry", "show", "production"]) == 2
        assert "refusing to follow it" in capsys.readouterr().err
    assert sorted(e.rsplit("/", 1)[1] for e in storage.ls(outside)) == sorted(
        e.rsplit("/", 1)[1] for e in storage.ls(version_dir))  # untouched

    storage.atomic_write(alias_file, json.dumps({"alias": "production", "version": "v9"}).encode())
    with pytest.raises(RegistryError, match="alias 'production' .* names v9, which is not a complete version"):
        registry.resolve("production")
    storage.atomic_write(alias_file, b"v1")
    with pytest.raises(RegistryError, match="production.json is corrupt: not JSON"):
        registry.resolve("production")


def test_versions_are_never_reused_or_overwritten(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    registry.push(generator(1).state_dict(), MODEL, 32, ATTRIBUTES, {})
    # A push that died after claiming v2: the id stays taken, the version stays invisible.
    storage.atomic_write(storage.join(registry.url, "versions", "v2", ".claim"), b"{}")
    assert registry.push(generator(2).state_dict(), MODEL, 32, ATTRIBUTES, {}) == "v3"
    assert registry.versions() == ["v1", "v3"] and registry.resolve("latest") == "v3"
    with pytest.raises(RegistryError, match="unknown model 'v2'"):
        registry.resolve("v2")


def test_corrupt_weights_are_refused(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    registry.push(generator(1).state_dict(), MODEL, 32, ATTRIBUTES, {})
    weights = storage.join(registry.url, "versions", "v1", "generator.safetensors")
    data = bytearray(storage.read_bytes(weights))
    data[-1] ^= 0xFF
    storage.atomic_write(weights, bytes(data))
    with pytest.raises(RegistryError, match="corrupt"):
        registry.load_generator("v1")
    stamp = storage.join(registry.url, "versions", "v1", "version.json")
    storage.atomic_write(stamp, json.dumps({**json.loads(storage.read_bytes(stamp)), "version": "v2"}).encode())
    with pytest.raises(RegistryError, match="version v1 in .* is corrupt: its version.json says 'v2'"):
        registry.show("v1")


def test_alias_moves_are_atomic_for_readers(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    for seed in (1, 2):
        registry.push(generator(seed).state_dict(), MODEL, 32, ATTRIBUTES, {})
    registry.promote("v1", "production")
    seen, stop = set(), threading.Event()

    def read_alias():
        while not stop.is_set():
            seen.add(registry.resolve("production"))  # raises on a partial or missing alias file

    reader = threading.Thread(target=read_alias)
    reader.start()
    try:
        for i in range(200):
            registry.promote(f"v{1 + i % 2}", "production")
    finally:
        stop.set()
        reader.join()
    assert seen == {"v1", "v2"}


def _write_checkpoint(storage_path, run_name: str, g: Generator, step: int = 300) -> None:
    """A training checkpoint in the format of docs/CONTRACTS.md (what ganray.train writes)."""
    config = {"model": MODEL, "data": {"resolution": 32}}
    ckpt = storage.join(storage_path, run_name, f"checkpoint_{step:08d}")
    state = {"G": g.state_dict(), "G_ema": g.state_dict(), "step": step, "images_seen": step * 64,
             "config": config, "manifest_hash": "abc123", "attributes": ATTRIBUTES}
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.atomic_write(storage.join(ckpt, "state.pt"), buf.getvalue())
    meta = {"step": step, "images_seen": step * 64, "config": config, "manifest_hash": "abc123",
            "attributes": ATTRIBUTES, "metrics": {"loss_G": 1.5}, "run_name": run_name,
            "created_at": "2026-01-01T00:00:00+00:00"}
    storage.atomic_write(storage.join(ckpt, "meta.json"), json.dumps(meta).encode())


def test_push_from_run_and_cli(tmp_path, capsys, monkeypatch):
    g = generator(5)
    _write_checkpoint(str(tmp_path / "runs"), "demo", g)
    monkeypatch.setenv("GANRAY_REGISTRY", str(tmp_path / "registry"))

    push = ["registry", "push", "--from-run", str(tmp_path / "runs"), "demo", "--promote", "production"]
    assert cli(push + ["--force"]) == 0  # an unevaluated model: production's built-in gate needs --force
    assert "pushed demo as v1" in capsys.readouterr().out
    assert Registry().decisions()[-1]["outcome"] == "forced"
    info = Registry().show("production")
    assert info.provenance["step"] == 300 and info.provenance["dataset_manifest_hash"] == "abc123"
    assert info.provenance["metrics"] == {"loss_G": 1.5}
    assert (render_faces(Registry().load_generator("v1").generator, [1], labels=torch.tensor([[0, 1]]))
            == render_faces(g, [1], labels=torch.tensor([[0, 1]]))).all()

    assert cli(["registry", "list"]) == 0
    assert "production" in capsys.readouterr().out
    assert cli(["registry", "show", "production"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert cli(["registry", "promote", "v1", "stable", "--registry", str(tmp_path / "registry")]) == 0
    assert Registry().aliases() == {"production": "v1", "stable": "v1"}

    assert cli(["registry", "show", "v9"]) == 2
    assert "unknown model 'v9'" in capsys.readouterr().err
    assert cli(["registry", "push", "--from-run", str(tmp_path / "runs"), "missing"]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_production_is_gated_from_a_fresh_registry_and_other_aliases_move_freely(tmp_path, capsys):
    url = str(tmp_path / "registry")
    registry = Registry(url)
    for seed in (1, 2):
        registry.push(generator(seed).state_dict(), MODEL, 32, ATTRIBUTES, {"seed": seed})
    promote = ["registry", "promote", "--registry", url]
    assert cli(["registry", "gate", "production", "--registry", url]) == 0
    assert json.loads(capsys.readouterr().out) == {"metric": "fid", "margin": 0.0, "evaluation": "default",
                                                   "built_in": True}

    assert cli(promote + ["v2", "production"]) == 1  # nobody evaluated v2
    err = capsys.readouterr().err
    assert "refused: production stays unset: v2 has no recorded fid in evaluation 'default'" in err
    assert "The gate of production: fid lower than the holder's by at least 0" in err and "--force" in err
    assert registry.aliases() == {}

    registry.record("v1", "default", {"metrics": {"fid": 10.0}, "comparable": {"extractor": "pixels"}})
    assert cli(promote + ["v1", "production"]) == 0  # evaluated: the first holder needs only that
    assert "production -> v1: allowed" in capsys.readouterr().out
    assert cli(promote + ["v2", "production", "--force"]) == 0
    assert "production -> v2: forced" in capsys.readouterr().out and registry.resolve("production") == "v2"
    forced = registry.decisions()[-1]
    assert (forced["outcome"], forced["holder"], forced["candidate"]) == ("forced", "v1", "v2")
    assert forced["gate"]["built_in"] and "has no recorded fid" in forced["reason"]
    assert [d["outcome"] for d in registry.decisions()] == ["refused", "allowed", "forced"]

    assert cli(promote + ["v1", "staging"]) == 0 and registry.resolve("staging") == "v1"  # no gate, no log
    assert cli(["registry", "gate", "production", "--remove", "--registry", url]) == 0
    assert cli(promote + ["v1", "production"]) == 0 and registry.resolve("production") == "v1"  # removed: free
    assert len(registry.decisions()) == 3
    assert cli(["registry", "gate", "production", "--registry", url]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "null"


def test_push_a_chosen_checkpoint_of_a_run(tmp_path, capsys):
    """--step picks one checkpoint (e.g. to evaluate a run over training); without it, the newest."""
    runs, registry_url = str(tmp_path / "runs"), str(tmp_path / "registry")
    early, late = generator(5), generator(6)
    _write_checkpoint(runs, "demo", early, step=300)
    _write_checkpoint(runs, "demo", late, step=600)
    push = ["registry", "push", "--registry", registry_url, "--from-run", runs, "demo"]

    assert cli(push + ["--step", "300"]) == 0 and cli(push) == 0
    registry = Registry(registry_url)
    assert [registry.show(v).provenance["step"] for v in ("v1", "v2")] == [300, 600]
    labels = torch.tensor([[0, 1]])
    for version, g in (("v1", early), ("v2", late)):
        assert (render_faces(registry.load_generator(version).generator, [1], labels=labels)
                == render_faces(g, [1], labels=labels)).all()
    capsys.readouterr()
    assert cli(push + ["--step", "450"]) == 2
    assert "no checkpoint at step 450 of run 'demo' (steps: 300, 600)" in capsys.readouterr().err
