"""Lineage and history: the registry's event log, data versions, the chain from a generated face back
to the imported data, and a version's history in time order."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganray import registry_events
from ganray.cli import main as cli
from ganray.config import GenerateJob, ImportConfig, LabelConfig, TrainJob, load_config
from ganray.data.importer import run_import
from ganray.data.synthetic import ATTRIBUTES, render_face
from ganray.eval.gate import promote
from ganray.generate.job import run_generate
from ganray.lineage import lineage
from ganray.models import build_generator
from ganray.registry import Registry
from ganray.registry_events import EventLogError, append_event, causes, events
from ganray.train.publish import push_run
from ganray.train.trainer import run_training

from tiny_generators import ATTRIBUTES as TINY_ATTRIBUTES
from tiny_generators import RESOLUTION, TINY, push_random_model

REPO = Path(__file__).resolve().parents[1]
RES = 32
PATTERN = r"face\d+_(?P<age_group>child|adult|senior)_(?P<smile>no|yes)\.png"
TINY_TRAIN = ["run.name=lineage", "data.source=shards", f"data.resolution={RES}", "model.g_width=8", "model.d_width=8",
              "model.z_dim=16", "train.batch_size=8", "train.num_workers=1", "train.max_steps=2",
              "train.checkpoint_every=2", "train.log_every=1", "train.precision=fp32"]


@pytest.fixture(params=["local", "s3"])
def registry_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


def test_event_log_appends_in_order_filters_by_version_and_follows_causes(registry_url):
    assert events(registry_url, "generator") == []
    first = append_event(registry_url, "generator", "drift_alert", {"fid": 80.0}, version="v2")
    second = append_event(registry_url, "generator", "retrain", {"data_version": "abc"}, cause=first)
    third = append_event(registry_url, "generator", "evaluation", {"fid": 12.0}, cause=second, version="v3")
    append_event(registry_url, "labeler", "training_run", {})  # another model's log: not mixed in
    assert (first, second, third) == ("generator-00000001", "generator-00000002", "generator-00000003")
    log = events(registry_url, "generator")
    assert [e["id"] for e in log] == [first, second, third]
    assert [e["kind"] for e in log] == ["drift_alert", "retrain", "evaluation"]
    assert log[0]["time"] <= log[1]["time"] <= log[2]["time"] and log[1]["version"] is None
    assert [e["id"] for e in events(registry_url, "generator", version="v3")] == [third]
    assert [e["id"] for e in causes(registry_url, third)] == [third, second, first]
    assert [e["kind"] for e in events(registry_url, "labeler")] == ["training_run"]


def test_concurrent_writers_never_share_an_event(tmp_path):
    url = str(tmp_path / "registry")
    ids: list[str] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        for i in range(10):
            event_id = append_event(url, "generator", "monitoring", {"writer": n, "i": i})
            with lock:
                ids.append(event_id)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = events(url, "generator")
    assert len(set(ids)) == 40 and sorted(ids) == [e["id"] for e in log]
    for n in range(4):  # each writer's events in the order it wrote them
        assert [e["payload"]["i"] for e in log if e["payload"]["writer"] == n] == list(range(10))


@pytest.mark.parametrize("bad", [
    dict(model="../x"), dict(kind="no spaces"), dict(version="3"), dict(cause="../../e"), dict(payload=[1]),
])
def test_bad_events_are_refused_and_nothing_is_written(tmp_path, bad):
    url = str(tmp_path / "registry")
    args = {"model": "generator", "kind": "monitoring", "payload": {}, **bad}
    with pytest.raises(EventLogError):
        append_event(url, args["model"], args["kind"], args["payload"], cause=args.get("cause"),
                     version=args.get("version"))
    assert not (tmp_path / "registry").exists()
    assert registry_events.event(url, "generator-00000001") is None


# ---------------------------------------------------------------------------------------------
# The demo path on the built-in faces: import -> balanced re-import -> short train -> push -> generate


@pytest.fixture(scope="module")
def lifecycle(ray_session, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lifecycle")
    src = root / "raw"
    src.mkdir()
    for i in range(48):
        image, labels = render_face(i, RES)
        names = {k: ATTRIBUTES[k][labels[k]] for k in ("age_group", "smile")}
        Image.fromarray(image).save(src / f"face{i:03d}_{names['age_group']}_{names['smile']}.png")
    data = root / "data"  # the import root: both imports list their versions in data/data-versions/
    common = dict(src=str(src), resolution=RES, min_size=8, blank_std=0, blur_threshold=0,
                  labels=LabelConfig(pattern=PATTERN), license="apache-2.0", license_note="drawn by ganray")
    full = run_import(ImportConfig(dst=str(data / "faces"), **common))
    balanced = run_import(ImportConfig(dst=str(data / "faces-balanced"), parent=str(data / "faces"),
                                       balance={"attributes": ["smile"], "mode": "resample_down"}, **common))
    job = load_config(TrainJob, REPO / "configs" / "demo.yaml",
                      [f"run.storage_path={root / 'runs'}", f"data.url={data / 'faces-balanced'}", *TINY_TRAIN])
    run_training(job)
    registry = Registry(str(root / "registry"))
    version = push_run(registry, str(root / "runs"), "lineage")
    output = root / "out" / "faces"
    run_generate(load_config(GenerateJob, REPO / "configs" / "generate_demo.yaml", [
        f"registry.url={registry.url}", f"generate.model={version}", f"generate.output={output}",
        "generate.count=8", "generate.shard_size=8", "generate.balance=[]"]), log=lambda _: None)
    return {"root": root, "src": src, "data": data, "full": full, "balanced": balanced, "registry": registry,
            "version": version, "output": output}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_import_is_a_data_version_listed_with_its_counts_license_and_parent(lifecycle, capsys):
    full, balanced = lifecycle["full"]["data_version"], lifecycle["balanced"]["data_version"]
    assert full != balanced and lifecycle["full"]["manifest_hash"].startswith(full)
    code, out, _ = run_cli(capsys, "data", "list", str(lifecycle["data"]), "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["version"] for r in records] == [full, balanced]
    assert records[0]["parent"] is None and records[1]["parent"]["version"] == full

    code, out, _ = run_cli(capsys, "data", "show", balanced[:8], "--catalog", str(lifecycle["data"]), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["manifest_hash"] == lifecycle["balanced"]["manifest_hash"] and shown["current"]
    assert shown["label_histograms"]["smile"]["no"] == shown["label_histograms"]["smile"]["yes"]  # balanced
    assert shown["label_histograms"] == lifecycle["balanced"]["label_histograms"]
    assert (shown["license"], shown["license_note"], shown["source"]) == ("apache-2.0", "drawn by ganray",
                                                                          str(lifecycle["src"]))
    code, out, _ = run_cli(capsys, "data", "show", full, "--catalog", str(lifecycle["data"]))
    assert code == 0 and "smile:" in out and "apache-2.0" in out

    for bad in ("0123456789ab", "not-a-version"):
        code, _, err = run_cli(capsys, "data", "show", bad, "--catalog", str(lifecycle["data"]))
        assert code == 2 and bad in err, err


def test_a_re_import_derives_from_what_it_replaces_and_the_same_data_is_the_same_version(lifecycle, capsys):
    data, full, balanced = lifecycle["data"], lifecycle["full"]["data_version"], lifecycle["balanced"]["data_version"]
    common = ["--resolution", str(RES), "--set", f"import.labels.pattern={json.dumps(PATTERN)}",
              "--set", "import.min_size=8", "--set", "import.blank_std=0", "--set", "import.blur_threshold=0"]
    # The same data again, elsewhere, with --parent: the same version; its first record stays.
    assert run_cli(capsys, "data", "import", str(lifecycle["src"]), str(data / "faces-copy"), *common,
                   "--parent", str(data / "faces-balanced"))[0] == 0
    copy = json.loads((data / "faces-copy" / "manifest.json").read_text())
    assert copy["data_version"] == full and copy["parent"]["version"] == balanced
    # Re-imported from the same source into data/faces with other settings: derives from the one it replaces.
    code, out, _ = run_cli(capsys, "data", "import", str(lifecycle["src"]), str(data / "faces"), *common,
                           "--set", "import.balance={attributes: [age_group], mode: resample_up}")
    assert code == 0 and "data version" in out
    upsampled = json.loads((data / "faces" / "manifest.json").read_text())["data_version"]
    code, out, _ = run_cli(capsys, "data", "list", str(data), "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["version"] for r in records] == [full, balanced, upsampled]
    assert records[0]["location"] == str(data / "faces") and records[2]["parent"]["version"] == full
    code, out, _ = run_cli(capsys, "data", "list", str(data))
    assert code == 0 and [line.endswith("(replaced)") for line in out.splitlines()[1:]] == [True, False, False]


def test_lineage_of_an_output_reaches_the_imported_source(lifecycle, capsys):
    code, out, _ = run_cli(capsys, "lineage", str(lifecycle["output"]), "--json")
    chain = json.loads(out)
    assert code == 0 and chain["output"]["url"] == str(lifecycle["output"]) and chain["output"]["faces"] == 8
    assert chain["model"]["version"] == lifecycle["version"] and chain["model"]["registry"] == lifecycle["registry"].url
    assert chain["training_run"]["run_name"] == "lineage" and chain["training_run"]["step"] == 2
    assert chain["output"]["data_version"] == chain["data_version"]["version"] == lifecycle["balanced"]["data_version"]
    assert [p["version"] for p in chain["parents"]] == [lifecycle["full"]["data_version"]]
    assert chain["source"] == str(lifecycle["src"])

    code, out, _ = run_cli(capsys, "lineage", str(lifecycle["output"]))
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == \
        ["output", "model", "training", "data", "derived", "source"]
    code, out, _ = run_cli(capsys, "lineage", lifecycle["version"], "--registry", lifecycle["registry"].url, "--json")
    assert code == 0 and json.loads(out)["data_version"]["version"] == lifecycle["balanced"]["data_version"]

    for bad in (str(lifecycle["root"] / "no-such-output"), str(lifecycle["data"] / "faces"), "v9", "nomodel:v1"):
        code, _, err = run_cli(capsys, "lineage", bad, "--registry", lifecycle["registry"].url)
        assert code == 2 and "error:" in err, (bad, err)
    other = Registry(str(lifecycle["root"] / "other-registry"))  # its v1 has other weights
    push_random_model(other, init_seed=3)
    code, _, err = run_cli(capsys, "lineage", str(lifecycle["output"]), "--registry", other.url)
    assert code == 2 and "not the same model" in err, err


def test_a_model_trained_on_the_built_in_faces_ends_at_them(tmp_path):
    registry = Registry(str(tmp_path / "registry"))
    torch.manual_seed(0)
    generator = build_generator(TINY, RESOLUTION, TINY_ATTRIBUTES)
    version = registry.push(generator.state_dict(), TINY.model_dump(), RESOLUTION, TINY_ATTRIBUTES, {
        "run_name": "demo", "step": 10, "dataset_manifest_hash": "ab" * 32,
        "train_config": {"data": {"source": "synthetic"}}})
    chain = lineage(version, registry.url)
    assert chain["data_version"]["version"] == "ab" * 6 and chain["data_version"]["location"] == "built-in"
    assert chain["parents"] == [] and "built-in" in chain["source"]


def test_history_shows_a_version_s_life_in_time_order(lifecycle, capsys):
    registry, version = lifecycle["registry"], lifecycle["version"]
    registry.record(version, "default", {"metrics": {"fid": 12.5}})
    assert promote(registry, version, "production").moved
    watched = append_event(registry, "generator", "monitoring", {"summary": "fid 13.0 vs baseline 12.5"}, version=version)
    append_event(registry, "generator", "drift_alert", {"summary": "fid over threshold"}, cause=watched, version=version)
    append_event(registry, "generator", "monitoring", {}, version="v7")  # another version's: not in v1's history

    code, out, _ = run_cli(capsys, "registry", "history", f"generator:{version}", "--registry", registry.url, "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["kind"] for e in entries] == \
        ["data_version", "training_run", "evaluation", "promotion", "monitoring", "drift_alert"]
    assert entries[0]["details"]["version"] == lifecycle["balanced"]["data_version"]
    assert entries[-1]["cause"] == watched and entries[3]["details"]["outcome"] == "allowed"
    code, out, _ = run_cli(capsys, "registry", "history", version, "--registry", registry.url)
    assert code == 0 and len(out.splitlines()) == len(entries) and "drift_alert" in out

    for bad in ("generator:v9", "nomodel:v1"):
        code, _, err = run_cli(capsys, "registry", "history", bad, "--registry", registry.url)
        assert code == 2 and "error:" in err, (bad, err)


def test_data_list_and_show_default_to_the_env_catalog_else_dot_data(tmp_path, monkeypatch, capsys):
    from ganray.data import versions

    manifest = {"manifest_hash": "cd" * 32, "source": "./raw", "counts": {"seen": 3, "kept": 2, "dropped": 1}}
    for catalog in (tmp_path / "data", tmp_path / "elsewhere"):
        record = versions.make_record(manifest, dst=str(catalog / "faces"), catalog=str(catalog), import_id=None,
                                      parent=None, license=None, license_note=None)
        assert versions.write_record(record) and not versions.write_record(record)  # the first record stays
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(versions.CATALOG_ENV, raising=False)
    code, out, _ = run_cli(capsys, "data", "show", "cdcdcd", "--json")
    assert code == 0 and json.loads(out)["location"] == str(tmp_path / "data" / "faces")
    monkeypatch.setenv(versions.CATALOG_ENV, str(tmp_path / "elsewhere"))
    code, out, _ = run_cli(capsys, "data", "list", "--json")
    assert code == 0 and [json.loads(line)["catalog"] for line in out.splitlines()] == [str(tmp_path / "elsewhere")]
    assert json.loads(out)["license"] == "unknown"


def test_history_shows_ungated_alias_moves_and_events_caused_by_the_version_s(tmp_path, capsys):
    registry = Registry(str(tmp_path / "registry"))
    version = push_random_model(registry, init_seed=1)  # pushed without a training_run event
    registry.promote(version, "demo")  # no gate: no decision, only the alias file
    alert = append_event(registry, "generator", "drift_alert", {"summary": "drift"}, version=version)
    append_event(registry, "generator", "retrain", {"summary": "started"}, cause=alert)  # no version: caused by v1's
    code, out, _ = run_cli(capsys, "registry", "history", version, "--registry", registry.url, "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [e["kind"] for e in entries] == ["training_run", "promotion", "drift_alert", "retrain"]
    assert entries[1]["summary"] == f"demo -> {version} (no gate)" and entries[3]["cause"] == alert
