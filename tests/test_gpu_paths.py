"""GPU code paths, simulated on CPU (no GPU here; docs/gpu.md lists what only a GPU can show).

- The driver's checks of a `device: cuda` generate, eval or train-eval job never touch CUDA: the
  head of a GPU cluster has no GPU (torch.cuda made to raise in this process).
- The resources each stage of a generation job asks for follow what it uses (placement.py).
- On an autoscaling cluster whose GPU node type starts at 0 nodes (Ray's fake multi-node provider:
  worker "nodes" are raylets on this machine, a fake GPU node declares GPU: 1 and
  accelerator_type:L4), a cuda job waits for the autoscaler's GPU node and pins its GPU stages to
  that node's kind; asked for a kind no node type has, it fails after generate.gpu_wait_s, saying so.
  The scenario runs in a subprocess (this file, run as a script) with a head of its own, never
  beside the pytest session's Ray.
- benchmarks/gpu_check.py's CPU mode, and its refusal where a GPU is required.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RES = 32
GPU_NODE_TYPES = {"gpu_l4": {"resources": {"CPU": 1, "GPU": 1, "accelerator_type:L4": 1,
                                           "object_store_memory": 100_000_000},
                             "node_config": {}, "min_workers": 0, "max_workers": 1}}


# -- the driver never touches CUDA ---------------------------------------------------------------


@pytest.fixture
def no_cuda(monkeypatch):
    """This process as a GPU cluster's CPU-only head: any CUDA initialisation raises."""
    import torch

    def refuse(*_args, **_kwargs):
        raise RuntimeError("CUDA touched on the driver")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    for name in ("_lazy_init", "init", "is_available", "device_count", "get_device_capability", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, refuse)
    with pytest.raises(RuntimeError, match="CUDA touched on the driver"):
        torch.zeros(1).to("cuda")  # the guard catches what a GPU model's .to("cuda") does


@pytest.fixture
def gpu_registry(tmp_path):
    """A registry with an untrained 32 px generator (v1) and an attribute classifier (labeler v1)."""
    import torch

    from ganray.config import ClassifierModelConfig, DCGANConfig
    from ganray.models import build_generator
    from ganray.models.classifier import build_classifier
    from ganray.registry import LabelerRegistry, Registry

    torch.manual_seed(0)
    model = DCGANConfig(z_dim=8, g_width=8)
    registry = Registry(str(tmp_path / "registry"))
    version = registry.push(build_generator(model, RES, {}).state_dict(), model.model_dump(), RES, {}, {})
    classifier = ClassifierModelConfig(width=8, max_channels=16, feature_dim=8)
    attributes = {"gender": ["female", "male"]}
    labeler = LabelerRegistry(registry.url).push(build_classifier(classifier, RES, attributes).state_dict(),
                                                 classifier.model_dump(), RES, attributes, {}, {})
    return {"url": registry.url, "model": version, "labeler": labeler, "root": tmp_path}


def test_generate_driver_checks_of_a_cuda_job_stay_off_cuda(no_cuda, gpu_registry):
    from ganray.config import GenerateJob
    from ganray.generate.job import plan_job

    job = GenerateJob.model_validate({"registry": {"url": gpu_registry["url"]}, "generate": {
        "model": gpu_registry["model"], "output": str(gpu_registry["root"] / "faces"), "count": 4,
        "device": "cuda", "precision": "fp16",
        "labeler": {"name": "classifier", "model": gpu_registry["labeler"], "device": "cuda"}}})
    plan = plan_job(job)
    assert plan.labeling["label_attributes"] == ["gender"]
    assert plan.labeling["labeler"]["device"] == "cuda"  # the actors label on cuda: the identity says so


def fake_reference(root: Path) -> str:
    """An imported dataset's manifest alone: all the driver reads before Ray starts."""
    from ganray.data.manifest import FORMAT

    folder = root / "reference"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "format": FORMAT, "resolution": RES, "manifest_hash": "0" * 64, "attributes": {},
        "shards": [{"file": "part-00000.parquet", "rows": 64}]}))
    return str(folder)


def test_eval_driver_checks_of_a_cuda_job_stay_off_cuda(no_cuda, gpu_registry, monkeypatch):
    from ganray.config import EvalJob
    from ganray.eval import job as eval_job

    class ReachedRay(Exception):
        pass

    def stop_at_ray(*_args, **_kwargs):
        raise ReachedRay

    monkeypatch.setattr(eval_job, "init_ray", stop_at_ray)  # everything before it is the driver's check
    job = EvalJob.model_validate({"registry": {"url": gpu_registry["url"]}, "eval": {
        "model": gpu_registry["model"], "reference": fake_reference(gpu_registry["root"]),
        "output": str(gpu_registry["root"] / "eval.json"), "count": 8, "reference_count": 8,
        "extractor": {"name": "classifier", "labeler": gpu_registry["labeler"], "device": "cuda"}}})
    with pytest.raises(ReachedRay):
        eval_job.run_evaluation(job)


def test_training_evaluator_checks_of_a_cuda_extractor_stay_off_cuda(no_cuda, tmp_path):
    import hashlib

    import torch

    from ganray.config import TrainJob
    from ganray.eval import inception
    from ganray.eval.training import TrainingEvaluator

    weights = tmp_path / "pt_inception-random.pth"
    torch.save(inception.FIDInceptionV3().state_dict(), weights)
    job = TrainJob.model_validate({
        "data": {"source": "shards", "url": fake_reference(tmp_path), "resolution": RES},
        "model": {"arch": "dcgan", "z_dim": 8, "g_width": 8, "d_width": 8},
        "eval": {"every_images": 64, "count": 8, "reference_count": 8, "extractor": {
            "name": "inception_v3", "weights": str(weights), "device": "cuda",
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}}})
    assert TrainingEvaluator(job).identity["name"] == "inception_v3"


# -- what each stage asks for ---------------------------------------------------------------------


def generate_cfg(**settings):
    from ganray.config import GenerateConfig

    return GenerateConfig.model_validate({"output": "/tmp/unused", **settings})


def test_closed_loop_searcher_gets_a_gpu_share_for_a_cuda_labeler():
    from ganray.generate.placement import stage_resources

    cfg = generate_cfg(device="cpu", labeler={"name": "classifier", "model": "v1", "device": "cuda"},
                       closed_loop={"strata": ["gender"]})
    stages = stage_resources(cfg, 8, labeled=True, closed_loop=True, accelerator_type="L4")
    assert 0 < stages.generator["num_gpus"] < 1 and stages.generator["accelerator_type"] == "L4"
    assert stages.labeler is None  # the searcher labels its own candidates


@pytest.mark.parametrize("name", ["conditions", "age_and_gender"])
def test_labelers_without_a_network_on_cuda_reserve_no_gpu(name):
    from ganray.generate.placement import stage_resources

    cfg = generate_cfg(device="cuda", labeler={"name": name, "device": "cuda"})
    stages = stage_resources(cfg, 8, labeled=True, closed_loop=False, accelerator_type="L4")
    assert stages.generator["num_gpus"] == 1 and stages.generator["accelerator_type"] == "L4"
    assert "num_gpus" not in stages.labeler and "accelerator_type" not in stages.labeler


def test_a_cuda_generator_and_a_cuda_classifier_share_one_gpu_of_one_kind():
    from ganray.generate.placement import stage_resources

    cfg = generate_cfg(device="cuda", labeler={"name": "classifier", "model": "v1", "device": "cuda"})
    stages = stage_resources(cfg, 8, labeled=True, closed_loop=False, accelerator_type="A100")
    assert stages.generator["num_gpus"] + stages.labeler["num_gpus"] == 1
    assert stages.generator["accelerator_type"] == stages.labeler["accelerator_type"] == "A100"
    cpu = stage_resources(generate_cfg(), 8, labeled=False, closed_loop=False, accelerator_type="A100")
    assert cpu.generator == {"num_cpus": 1.0} and cpu.gpu_stages() == []  # no pin without a GPU


def test_accelerator_type_is_a_kind_auto_or_null():
    from ganray.generate.placement import pinned_kind

    assert pinned_kind(generate_cfg(device="cuda")) is None  # auto: the first GPU's kind, once seen
    assert pinned_kind(generate_cfg(device="cuda", accelerator_type=None)) is None
    assert pinned_kind(generate_cfg(device="cuda", accelerator_type="L4")) == "L4"


def test_eval_extractor_actors_ask_for_a_gpu_only_for_a_network_on_cuda():
    from ganray.config import ExtractorConfig
    from ganray.eval.job import extractor_resources

    assert extractor_resources(ExtractorConfig(name="pixels", device="cuda")) == {"num_cpus": 0.5}
    assert extractor_resources(ExtractorConfig(name="classifier", labeler="v1", device="cuda")) == {"num_gpus": 1}


# -- waiting for the autoscaler's GPU node (fake multi-node cluster, in a subprocess) -------------


def test_a_cuda_job_waits_for_the_autoscalers_gpu_node_and_pins_its_kind(tmp_path):
    done = subprocess.run([sys.executable, __file__, "gpu-wait", str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    result_file = tmp_path / "result.json"
    assert result_file.exists(), (done.stdout + done.stderr)[-4000:]
    result = json.loads(result_file.read_text())
    assert result["left_running"] == [], "processes of the scenario's cluster survived"
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    # No node type has an A100: the job says what it waited for, how long, and what to change.
    message = result["no_such_kind"]
    assert "no GPU of kind A100 came within generate.gpu_wait_s = 3 s" in message
    assert "accelerator_type:A100" in message and "raise generate.gpu_wait_s" in message
    # Auto: it waited (the cluster had no GPU), the autoscaler started the L4 node, the job pinned L4.
    assert result["gpus_before"] == 0 and result["gpus_after"] == 1
    assert any("waiting up to 120 s for a GPU" in line for line in result["logs"])
    assert result["accelerator_type"] == "L4"
    assert result["environment"]["device_kind"] == "cuda fake, GPU ids ['0']"


def _fake_render_environment(device: str, precision: str) -> dict[str, str]:
    """render_environment on the fake GPU node (CPU torch: it has nothing to render with)."""
    import ray
    import torch

    return {"torch": torch.__version__, "device_kind": f"cuda fake, GPU ids {ray.get_runtime_context().get_accelerator_ids()['GPU']}",
            "precision": "fp16"}


def _gpu_wait_scenario(out: Path) -> None:
    sys.path.insert(0, str(REPO / "cluster"))
    import ray
    from autoscaling_demo import FakeCluster, push_untrained_generator

    from ganray.config import GenerateJob
    from ganray.generate import job as generate_job
    from ganray.generate.output import GenerateError

    registry = push_untrained_generator(out / "registry")
    cluster = FakeCluster(out, idle_timeout_s=60, max_workers=1, worker_types=GPU_NODE_TYPES)
    result: dict = {"left_running": None}
    generate_job.render_environment = _fake_render_environment  # pickled by value: this is __main__

    def plan(**settings):
        return generate_job.plan_job(GenerateJob.model_validate({"registry": {"url": registry}, "generate": {
            "model": "production", "output": str(out / "faces"), "count": 4, "device": "cuda", **settings}}))

    try:
        cluster.start()
        ray.init(address=cluster.address, log_to_driver=False)
        result["gpus_before"] = ray.cluster_resources().get("GPU", 0)
        try:
            generate_job.with_environment(plan(accelerator_type="A100", gpu_wait_s=3), print)
        except GenerateError as e:
            result["no_such_kind"] = str(e)
        logs: list[str] = []
        started = time.monotonic()
        planned = generate_job.with_environment(plan(gpu_wait_s=120), logs.append)
        result.update(environment=planned.environment, accelerator_type=planned.accelerator_type, logs=logs,
                      waited_s=round(time.monotonic() - started, 1), gpus_after=ray.cluster_resources().get("GPU", 0))
    finally:
        ray.shutdown()
        cluster.stop()
        result["left_running"] = [p.pid for p in cluster.processes()]
        (out / "result.json").write_text(json.dumps(result, indent=1))


# -- benchmarks/gpu_check.py ------------------------------------------------------------------------


def test_gpu_check_runs_its_cpu_mode_and_refuses_without_a_gpu(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    refused = subprocess.run([sys.executable, str(script), "--out-dir", str(tmp_path / "gpu")],
                             capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2 and not (tmp_path / "gpu").exists()
    assert len(refused.stderr.strip().splitlines()) == 1 and "needs a CUDA GPU" in refused.stderr
    done = subprocess.run([sys.executable, str(script), "--cpu", "--out-dir", str(tmp_path / "cpu")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads((tmp_path / "cpu" / "gpu_check.json").read_text())
    assert {"figures", "command", "commit", "date", "machine"} <= set(result)
    assert {"cpu", "bf16", "cores", "gpu"} <= set(result["machine"]) and result["mode"] == "cpu"
    figures = {f["name"]: f["value"] for f in result["figures"]}
    for arch in ("dcgan", "stylegan2"):
        assert figures[f"{arch}: render bytes equal, fixed batch sizes 1/5/16"] == "true"
        assert figures[f"{arch}: render bytes equal, varying batch sizes"] == "true"
    assert figures["DDP 4 steps = 2 + resumed 2, fp32"] == "true"


if __name__ == "__main__":
    if sys.argv[1:2] == ["gpu-wait"]:
        _gpu_wait_scenario(Path(sys.argv[2]))
