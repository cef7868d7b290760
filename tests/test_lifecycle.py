"""The model's life after deployment, on the built-in faces and the session's real local Ray:
`ganray retrain` trains from the promoted version's run config on a new data version, evaluates, and
promotes through the gate, every step an event tied to its cause; `ganray monitor` samples the real
face API over HTTP, passes the healthy model, and catches a hot reload to untrained weights behind
the same alias (exit 3, a drift_alert event caused by its monitoring record, a line on stderr).

One chain of module fixtures shares the work: v1 is an untrained conditional DCGAN registered with
a run config and promoted through the gate; the retraining makes v2 from it (one short Ray Train
run); the Serve app serves `production` (v2), and the monitor tests move the alias back to v1."""
from __future__ import annotations

import time

import httpx
import pytest
import torch
from PIL import Image
from conftest import REPO, free_port

from ganray import registry_events
from ganray.cli import main as cli
from ganray.config import EvalJob, ImportConfig, LabelConfig, MonitorConfig, RetrainJob, TrainJob, load_config
from ganray.data.dataset import dataset_attributes
from ganray.data.importer import run_import
from ganray.data.synthetic import ATTRIBUTES, render_face
from ganray.eval import gate
from ganray.eval.job import run_evaluation
from ganray.lifecycle.monitor import sample_seeds, verdict
from ganray.lifecycle.promoted import NoPromotedVersion, promoted_version
from ganray.lifecycle.retrain import RetrainError, plan_retrain
from ganray.models import build_generator
from ganray.registry import Registry

RES = 32
API_KEY = "lifecycle-secret"
TINY_TRAIN = ["data.resolution=32", "data.synthetic.count=256", "model.g_width=8", "model.d_width=8",
              "model.z_dim=16", "model.condition_on=[age_group,smile]", "train.num_workers=1", "train.batch_size=32",
              "train.max_steps=120", "train.checkpoint_every=120", "train.log_every=40", "train.sample_seeds=4"]
EVAL = {"count": 64, "reference_count": 128, "kid_subset_size": 32, "kid_subsets": 10, "pr_k": 3,
        "extractor": {"name": "pixels", "pixels_side": 8}, "memorization": {"enabled": False}}
MONITOR = ["monitor.count=48", "monitor.noise_sets=2", "monitor.per_request=8", "monitor.extractor.pixels_side=8",
           "monitor.kid_subset_size=24", "monitor.kid_subsets=10", "monitor.timeout_s=30"]


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def faces(ray_session, tmp_path_factory) -> str:
    """A new data version of the built-in faces: 192 of them imported with their age group and smile."""
    src = tmp_path_factory.mktemp("src")
    for i in range(192):
        image, labels = render_face(i, RES, seed=1)
        age, smile = ATTRIBUTES["age_group"][labels["age_group"]], ATTRIBUTES["smile"][labels["smile"]]
        Image.fromarray(image).save(src / f"face{i:04d}_{age}_{smile}.png")
    dst = str(tmp_path_factory.mktemp("data") / "faces-v2")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, min_size=8, blank_std=0, blur_threshold=0,
                            shard_rows=96, labels=LabelConfig(
                                pattern=r"face\d+_(?P<age_group>child|adult|senior)_(?P<smile>no|yes)\.png")))
    return dst


@pytest.fixture(scope="module")
def initial(faces, tmp_path_factory):
    """v1: an untrained generator registered with its run config, evaluated, promoted through the gate."""
    root = tmp_path_factory.mktemp("lifecycle")
    registry = Registry(str(root / "registry"))
    job = load_config(TrainJob, REPO / "configs" / "demo.yaml",
                      [f"run.storage_path={root / 'runs'}", "run.name=initial", *TINY_TRAIN])
    torch.manual_seed(0)
    attributes = dataset_attributes(job.data)
    generator = build_generator(job.model, RES, attributes)
    v1 = registry.push(generator.state_dict(), job.model.model_dump(mode="json"), RES, attributes,
                       {"run_name": "initial", "storage_path": str(root / "runs"),
                        "train_config": job.model_dump(mode="json")})
    run_evaluation(EvalJob.model_validate({"registry": {"url": registry.url}, "eval": {
        **EVAL, "model": v1, "reference": faces, "output": str(root / "v1-eval.json")}}))
    assert gate.promote(registry, v1, "production").outcome == "allowed"
    return registry, v1, root


@pytest.fixture(scope="module")
def retrained(initial, faces):
    registry, v1, root = initial
    status = cli(["retrain", "--registry", registry.url, "--data", faces, "--run-name", "retrain-new-data",
                  "--warm-start", *sets(["train.max_steps=120"])])
    return status


def retrain_events(registry: Registry) -> list[dict]:
    return [e for e in registry_events.events(registry, "generator") if e["kind"] == "retrain"]


def test_retrain_on_a_new_data_version_promotes_through_the_gate_and_ties_every_step(initial, retrained, faces):
    registry, v1, _ = initial
    assert retrained == 0
    v2 = registry.resolve("production")
    assert v2 != v1 and registry.show(v2).provenance["train_config"]["data"]["url"] == faces
    steps = retrain_events(registry)
    assert [e["payload"]["step"] for e in steps] == ["started", "trained", "evaluated", "promoted"]
    assert steps[0]["cause"] is None and steps[0]["payload"]["from_version"] == v1
    assert steps[0]["payload"]["data"]["url"] == faces and steps[0]["payload"]["reason"] == "new data"
    for before, after in zip(steps, steps[1:]):
        assert after["cause"] == before["id"]
    (run,) = [e for e in registry_events.events(registry, "generator") if e["kind"] == "training_run"]
    assert (run["version"], run["cause"]) == (v2, steps[0]["id"])  # the publish step ties back too
    assert [e["id"] for e in registry_events.causes(registry, steps[-1]["id"])] == [e["id"] for e in reversed(steps)]
    # The promotion went through the gate: the decision it names allowed v2 over v1 on the recorded FID.
    decision = next(d for d in registry.decisions() if d["id"] == steps[-1]["payload"]["decision"])
    assert (decision["candidate"], decision["holder"], decision["outcome"]) == (v2, v1, "allowed")
    assert registry.evaluation(v2, "default")["comparable"] == registry.evaluation(v1, "default")["comparable"]
    assert promoted_version(registry, "production") == (v2, decision["id"])
    # --warm-start: the new run's generator started from v1's weights (their digest, in the run's history).
    from ganray.train.checkpoint import load_state, state_digest

    history = load_state(registry.show(v2).provenance["checkpoint"])["history"]
    (warm,) = [h for h in history if h.get("event") == "warm_start"]
    assert warm["state_digest"] == state_digest({"G_ema": registry.load_generator(v1).generator.state_dict()},
                                                keys=("G_ema",))
    assert steps[0]["payload"]["warm_start"] is True


def test_a_warm_start_whose_weights_do_not_fit_the_new_run_is_refused_before_any_work(initial, faces):
    registry, _, _ = initial
    job = load_config(RetrainJob, None, [f"registry.url={registry.url}", f"retrain.data={faces}",
                                         "retrain.warm_start=true", 'retrain.train_overrides=["model.g_width=16"]'])
    before = registry_events.events(registry, "generator")
    with pytest.raises(RetrainError, match=r"warm_start: v\d+'s weights do not fit"):
        plan_retrain(job, registry)
    assert registry_events.events(registry, "generator") == before


# ---------------------------------------------------------------------------------------------
# Monitoring the running API


@pytest.fixture(scope="module")
def api(ray_session, initial, retrained):
    """The face API serving `production` (v2 once retrained), with an API key, polled fast."""
    from ray import serve

    from ganray.config import FaceServiceConfig
    from ganray.serve.app import build_app

    registry, _, _ = initial
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = serve.context._get_global_client().http_config.port  # an earlier module's Serve keeps its port
    app = build_app(FaceServiceConfig.model_validate({
        "model": {"registry": registry.url, "alias": "production", "poll_interval_s": 0.3, "precision": "fp32"},
        "api": {"api_key": API_KEY, "max_count": 8},
        "generator": {"num_cpus": 0.2, "max_batch_size": 8, "batch_wait_timeout_s": 0.005},
        "ingress": {"num_cpus": 0.1}}))
    serve.run(app, name="test-lifecycle", route_prefix="/lifecycle")
    yield f"http://127.0.0.1:{port}/lifecycle"
    serve.delete("test-lifecycle")


def monitor(registry: Registry, url: str, *extra: str) -> int:
    return cli(["monitor", *sets([f"registry.url={registry.url}", f"monitor.url={url}", *MONITOR, *extra])])


def served_version(url: str) -> str:
    return httpx.get(f"{url}/v1/model", headers={"X-API-Key": API_KEY}, timeout=30).json()["version"]


def test_the_healthy_model_is_not_flagged(initial, api, monkeypatch, capsys):
    registry, _, _ = initial
    monkeypatch.setenv("GANRAY_API_KEY", API_KEY)
    v2 = registry.resolve("production")
    assert served_version(api) == v2
    assert monitor(registry, api) == 0
    out, err = capsys.readouterr()
    assert "DRIFT" not in err and f"{v2} (48 faces)" in out
    record = registry_events.events(registry, "generator")[-1]
    assert (record["kind"], record["version"], record["payload"]["ok"]) == ("monitoring", v2, True)
    assert record["payload"]["baseline_version"] == v2 and record["payload"]["crossed"] == []
    # The baseline's numbers are stored with the version and reused, never recomputed from the API.
    stored = registry.evaluation(v2, record["payload"]["baseline"])
    assert stored["metrics"]["noise_fid"] > 0 and stored["key"]["count"] == 48


def test_a_reload_to_untrained_weights_behind_the_alias_is_caught(initial, api, monkeypatch, capsys):
    registry, v1, _ = initial
    monkeypatch.setenv("GANRAY_API_KEY", API_KEY)
    v2 = registry.resolve("production")
    registry.promote(v1, "production")  # the unchecked move: the gate never saw it
    deadline = time.monotonic() + 60
    while served_version(api) != v1:
        assert time.monotonic() < deadline, "the API never reloaded the alias"
        time.sleep(0.2)
    assert monitor(registry, api) == 3
    _, err = capsys.readouterr()
    assert "ganray monitor: DRIFT ALERT" in err and "fid" in err
    record, alert = registry_events.events(registry, "generator")[-2:]
    assert (record["kind"], record["version"], record["payload"]["ok"]) == ("monitoring", v1, False)
    assert record["payload"]["baseline_version"] == v2  # the gate's promotion, not what is served
    healthy = registry_events.events(registry, "generator")[-3]
    assert record["payload"]["baseline"] == healthy["payload"]["baseline"]  # the stored numbers, reused
    assert (alert["kind"], alert["cause"], alert["version"]) == ("drift_alert", record["id"], v1)
    assert alert["payload"]["crossed"][0]["metric"] == "fid" and alert["payload"]["crossed"][0]["ratio"] > 2

    # A retraining answering the alert starts from v2's run config and ties back to it (planned only here:
    # the end-to-end run above is the new-data one).
    plan = plan_retrain(RetrainJob.model_validate({"registry": {"url": registry.url},
                                                   "retrain": {"cause": alert["id"]}}), registry)
    assert plan.cause["id"] == alert["id"] and plan.from_version == v2
    assert plan.train_job.data.url == registry.show(v2).provenance["train_config"]["data"]["url"]
    assert (plan.eval_job.eval.record_as, plan.eval_job.eval.count, plan.eval_job.eval.reference) == \
        ("default", EVAL["count"], registry.evaluation(v2, "default")["reference"])


def test_bad_input_exits_2_and_records_nothing(initial, retrained, monkeypatch, capsys, tmp_path):
    registry, _, _ = initial
    before = registry_events.events(registry, "generator")
    assert cli(["retrain", "--registry", registry.url, "--cause", "generator-99999999"]) == 2
    assert "no event 'generator-99999999'" in capsys.readouterr().err
    step = next(e["id"] for e in before if e["kind"] == "retrain")  # a retrain step is no reason to retrain
    assert cli(["retrain", "--registry", registry.url, "--cause", step]) == 2
    assert "a retraining answers one of" in capsys.readouterr().err
    assert cli(["retrain", "--registry", registry.url, "--data", str(tmp_path)]) == 2
    assert "is not an imported dataset" in capsys.readouterr().err
    assert cli(["monitor", *sets([f"registry.url={registry.url}", "monitor.labeler={name: conditions}"])]) == 2
    assert "always agrees" in capsys.readouterr().err
    # Nothing answers on this port: the run could not happen (exit 1), which is not drift (exit 3).
    monkeypatch.setenv("GANRAY_API_KEY", API_KEY)
    assert monitor(registry, f"http://127.0.0.1:{free_port()}") == 1
    assert "cannot reach the face API" in capsys.readouterr().err
    assert registry_events.events(registry, "generator") == before


def test_the_baseline_is_the_version_promoted_through_the_gate(tmp_path):
    from tiny_generators import push_random_model

    registry = Registry(str(tmp_path))
    v1, v2 = push_random_model(registry, 1), push_random_model(registry, 2)
    with pytest.raises(NoPromotedVersion, match="through its gate"):
        promoted_version(registry, "production")
    registry.record(v1, "default", {"metrics": {"fid": 5.0}, "comparable": {}})
    assert gate.promote(registry, v1, "production").outcome == "allowed"
    assert gate.promote(registry, v2, "production", force=True).outcome == "forced"
    registry.promote(v2, "production")
    assert promoted_version(registry, "production")[0] == v1  # neither the forced nor the unchecked move


def test_each_threshold_alone_raises_the_alert():
    cfg = MonitorConfig(url="http://x", thresholds={"max_fid_ratio": 2.0, "max_kid_increase": 0.01,
                                                    "max_agreement_drop": 0.2})
    base = {"noise_fid": 1.0, "noise_kid": 0.0, "agreement": 0.9}
    healthy = {"fid": 1.9, "kid_mean": 0.005, "agreement": 0.75}
    assert verdict(cfg, healthy, base) == []
    assert min(sample_seeds(64, None, 1000, 1200)) >= 1000  # never one of the baseline's seeds (below 1000)
    for change, metric in [({"fid": 2.1}, "fid"), ({"kid_mean": 0.02}, "kid_mean"), ({"agreement": 0.6}, "agreement")]:
        assert [c["metric"] for c in verdict(cfg, {**healthy, **change}, base)] == [metric]


def test_retrain_refuses_a_version_without_a_run_config(tmp_path):
    from tiny_generators import push_random_model

    registry = Registry(str(tmp_path))
    v1 = push_random_model(registry, 1)
    registry.record(v1, "default", {"metrics": {"fid": 5.0}, "comparable": {}})
    gate.promote(registry, v1, "production")
    job = RetrainJob.model_validate({"registry": {"url": registry.url}, "retrain": {"data": str(tmp_path)}})
    with pytest.raises(RetrainError, match="no run config"):
        plan_retrain(job, registry)


def test_the_raycronjob_runs_the_monitor_with_a_config_that_loads():
    import shlex

    import yaml

    from ganray.config import MonitorJob

    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycronjob-monitor.yaml").read_text())
    job = manifest["spec"]["jobTemplate"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "jobs/monitor.py"] and (REPO / argv[1]).is_file()
    config = load_config(MonitorJob, REPO / "configs" / "monitor.yaml", [a for a in argv[2:] if a != "--set"])
    assert config.registry.url.startswith("s3://") and config.monitor.url.startswith("http://")
    assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] == 0  # a drift is a failed run, once
    assert job["rayClusterSpec"]["rayVersion"] == "2.60.0"


def test_retrain_takes_a_data_version_id_from_the_catalog(initial, faces, monkeypatch):
    import json
    from pathlib import Path

    registry, _, _ = initial
    version = json.loads(Path(faces, "manifest.json").read_text())["data_version"]
    monkeypatch.setenv("GANRAY_DATA_CATALOG", str(Path(faces).parent))  # where the import recorded it

    def plan(data: str):
        return plan_retrain(load_config(RetrainJob, None, [f"registry.url={registry.url}", f"retrain.data={data}"]),
                            registry)

    assert plan(version).train_job.data.url == plan(faces).train_job.data.url == str(Path(faces).resolve())
    with pytest.raises(RetrainError, match="unknown data version 'abcdef012345'"):
        plan("abcdef012345")
