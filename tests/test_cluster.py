"""Running on clusters: the path policy and S3 settings (ganray/storage.py), the cluster job configs
(configs/cluster/), the Ray cluster-launcher configs (cluster/aws.yaml, cluster/gcp.yaml) against the
schema in the ray wheel, and the KubeRay manifests (cluster/kuberay/). No Ray is started here; the
real `ray job submit` run is tests/test_job_submit.py."""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from ganray import storage
from ganray.cli import main
from ganray.config import FaceServiceConfig, GenerateJob, ImportJob, TrainJob, load_config

from conftest import REPO

CLUSTER = REPO / "cluster"
CLUSTER_CONFIGS = sorted((REPO / "ganray" / "configs" / "cluster").glob("*.yaml"))
LAUNCHER_CONFIGS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
# Where cluster/Dockerfile puts the repository in the image (the RayJobs' working_dir).
IMAGE_REPO_DIR = "/home/ray/ganray"


@pytest.fixture
def job_driver(monkeypatch, tmp_path):
    """This process as the driver of a `ray job submit` job, in an empty working directory."""
    monkeypatch.setenv(storage.RAY_JOB_DRIVER_ENV, "{}")
    monkeypatch.delenv(storage.SUBMIT_DIR_ENV, raising=False)
    monkeypatch.delenv("GANRAY_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# The path policy


def test_relative_paths_outside_a_submitted_job_mean_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(storage.RAY_JOB_DRIVER_ENV, raising=False)
    monkeypatch.delenv(storage.SUBMIT_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_url("runs/") == str(tmp_path / "runs")
    assert storage.url_to_fs("./data/x")[1] == str(tmp_path / "data" / "x")
    assert storage.normalize_url("s3://bucket/runs/") == "s3://bucket/runs"


@pytest.mark.parametrize("path", ["runs", "./registry", "file://out/faces", "data/../data/x"])
def test_a_submitted_job_refuses_relative_paths(job_driver, path):
    for resolve in (storage.normalize_url, storage.url_to_fs, storage.exists):
        with pytest.raises(storage.LocationError) as refused:
            resolve(path)
        message = str(refused.value)
        assert f"{path!r} is a relative path, and this is a job started by `ray job submit`" in message
        assert "s3://" in message and "absolute path" in message and storage.SUBMIT_DIR_ENV in message
    assert list(job_driver.iterdir()) == []


def test_a_submitted_job_keeps_absolute_paths_and_urls(job_driver):
    assert storage.normalize_url("/shared/runs/") == "/shared/runs"
    assert storage.normalize_url("file:///shared/runs") == "/shared/runs"
    assert storage.normalize_url("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.url_to_fs("s3://bucket/runs")[1] == "bucket/runs"


def test_the_opt_in_resolves_against_the_named_submit_directory(job_driver, monkeypatch, tmp_path_factory):
    submitted_from = tmp_path_factory.mktemp("submitted-from")
    monkeypatch.setenv(storage.SUBMIT_DIR_ENV, str(submitted_from))
    assert storage.normalize_url("./registry") == str(submitted_from / "registry")
    assert storage.url_to_fs("out/faces")[1] == str(submitted_from / "out" / "faces")
    storage.atomic_write("out/job.json", b"{}")
    assert (submitted_from / "out" / "job.json").read_bytes() == b"{}"
    assert list(job_driver.iterdir()) == []  # nothing in the job's own working directory


def test_the_opt_in_must_be_an_absolute_directory_on_this_node(job_driver, monkeypatch, tmp_path):
    monkeypatch.setenv(storage.SUBMIT_DIR_ENV, "projects/faces")
    with pytest.raises(storage.LocationError, match="must be an absolute directory"):
        storage.normalize_url("runs")
    monkeypatch.setenv(storage.SUBMIT_DIR_ENV, str(tmp_path / "not-here"))
    with pytest.raises(storage.LocationError, match="not a directory on this node"):
        storage.normalize_url("runs")


@pytest.mark.parametrize("url", ["s3://AKIAKEY:secretkey@bucket/runs", "s3://token@bucket/x"])
def test_urls_with_credentials_are_refused_and_not_echoed(url, monkeypatch):
    monkeypatch.delenv(storage.RAY_JOB_DRIVER_ENV, raising=False)
    with pytest.raises(storage.LocationError, match="must not carry credentials") as refused:
        storage.normalize_url(url)
    assert "secretkey" not in str(refused.value) and "token@" not in str(refused.value)


def test_an_address_with_at_is_not_taken_for_credentials(monkeypatch):
    monkeypatch.delenv(storage.RAY_JOB_DRIVER_ENV, raising=False)
    url = "abfs://container@account.dfs.core.windows.net/runs"  # Azure: container@account is the address
    assert storage.absolute_location(url) == url


def test_cli_refuses_a_relative_output_to_verify_in_a_submitted_job(job_driver, capsys):
    assert main(["generate", "--verify", "faces"]) == 2
    err = capsys.readouterr().err
    assert "ganray generate: error: 'faces' is a relative path, and this is a job started by `ray job submit`" in err
    assert list(job_driver.iterdir()) == []


def test_cli_refuses_a_relative_default_registry_in_a_submitted_job(job_driver, capsys):
    status = main(["generate", "--config", str(REPO / "configs/cluster/generate_1m.yaml"),
                   "--set", "registry.url=null"])
    assert status == 2
    assert "'./registry' is a relative path" in capsys.readouterr().err


def test_cli_refuses_a_relative_training_storage_path_in_a_submitted_job(job_driver, capsys):
    status = main(["train", "--config", str(REPO / "configs/cluster/train_demo.yaml"),
                   "--set", "run.storage_path=runs"])
    assert status == 2
    assert "ganray train: error: 'runs' is a relative path" in capsys.readouterr().err
    assert list(job_driver.iterdir()) == []


def test_the_s3_specific_endpoint_variable_wins(s3_server, s3_bucket, monkeypatch):
    # AWS_ENDPOINT_URL points nowhere; the S3-specific variable, as botocore reads them, wins.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    assert storage.s3_endpoint() == s3_server
    storage.atomic_write(f"s3://{s3_bucket}/probe.json", b"{}")
    assert storage.read_bytes(f"s3://{s3_bucket}/probe.json") == b"{}"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.s3_endpoint() is None
    # No keys are handed to s3fs: credentials come from the AWS chain.
    options = storage._storage_options("s3://b/x")
    assert set(options) == {"use_listings_cache", "config_kwargs"}
    assert set(options["config_kwargs"]) == {"connect_timeout", "read_timeout", "retries"}  # timeouts, no keys


# ---------------------------------------------------------------------------------------------
# configs/cluster/


def job_class(tree: dict):
    if "generate" in tree:
        return GenerateJob
    if "import" in tree:
        return ImportJob
    return TrainJob


def locations(job) -> dict[str, str | None]:
    if isinstance(job, TrainJob):
        return {"run.storage_path": job.run.storage_path, "data.url": job.data.url}
    if isinstance(job, GenerateJob):
        return {"registry.url": job.registry.url, "generate.output": job.generate.output}
    return {"import.src": job.import_.src, "import.dst": job.import_.dst}


def test_cluster_configs_exist_for_every_job():
    names = {p.name for p in CLUSTER_CONFIGS}
    assert {"train_demo.yaml", "train_utkface64.yaml", "generate_1m.yaml", "import_utkface.yaml"} <= names


@pytest.mark.parametrize("path", CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_cluster_configs_load_and_every_location_is_s3(path):
    tree = yaml.safe_load(path.read_text())
    job = load_config(job_class(tree), path)
    assert job.ray_address is None  # $RAY_ADDRESS, which `ray job submit` sets
    used = {k: v for k, v in locations(job).items() if v is not None}
    assert used and all(v.startswith("s3://") for v in used.values()), used
    # The configs are package data: installed with the package, not only in the repository.
    assert "configs/cluster/*.yaml" in (REPO / "pyproject.toml").read_text()


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher configs


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_is_valid_for_ray(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema())
    validate_config(config)
    validate_config(prepare_config(config))  # as `ray up` fills in the provider's defaults


def gpu_count(provider: str, node_config: dict) -> int:
    """GPUs of a node type, from its machine type (the families these configs use)."""
    if provider == "aws":
        return {"g5.xlarge": 1, "g5.12xlarge": 4}.get(node_config["InstanceType"], 0)
    return {"g2-standard-8": 1, "a2-highgpu-4g": 4}.get(node_config["machineType"], 0)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_has_a_cpu_head_and_autoscaling_gpu_workers(path):
    config = yaml.safe_load(path.read_text())
    provider = config["provider"]["type"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert gpu_count(provider, head["node_config"]) == 0 and head.get("resources", {}).get("GPU", 0) == 0
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers
    for name, worker in workers.items():
        assert worker["min_workers"] == 0, name
        assert 0 < worker["max_workers"] <= config["max_workers"], name
        gpus = gpu_count(provider, worker["node_config"])
        assert gpus > 0, name
        if "GPU" in worker["resources"]:
            assert worker["resources"]["GPU"] == gpus, name
    assert 0 < config["idle_timeout_minutes"] <= 15


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_installs_ganray_with_a_cuda_torch(path):
    config = yaml.safe_load(path.read_text())
    commands = config["setup_commands"]
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    torch_install = [c for c in commands if f"torch=={pinned}" in c]
    assert torch_install and cuda_torch_from_both_indexes(torch_install[0])
    repo_on_node = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    assert commands.index(torch_install[0]) < commands.index(f"pip install -q -e {repo_on_node}")
    # Setup fails on a node whose torch is not a CUDA build, after everything is installed.
    check = [c for c in commands if "torch.version.cuda" in c]
    assert check and commands.index(check[-1]) == len(commands) - 1
    assert_cuda_check_fails_on_a_cpu_torch(check[-1])
    assert ".gitignore" in config["rsync_filter"]
    assert config["docker"]["image"].startswith("rayproject/ray:2.60.0-") and "gpu" in config["docker"]["image"]
    # Token authentication: one token on every node, the one `ray get-auth-token --generate` made here.
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"


def cuda_torch_from_both_indexes(command: str) -> bool:
    """torch from the CUDA index, its own dependencies (setuptools, sympy, ...) from PyPI: the CUDA
    index alone does not hold them all, so `--index-url` (which drops PyPI) is refused."""
    return bool(re.search(r"--extra-index-url\s+\S*download\.pytorch\.org/whl/cu\d+", command)
                or re.search(r"--extra-index-url\s+\$\{TORCH_INDEX_URL\}", command)) and " --index-url" not in command


def assert_cuda_check_fails_on_a_cpu_torch(command: str) -> None:
    """The check, run here on this CPU torch, must fail with a message naming the build."""
    import subprocess
    import sys

    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"], command
    done = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "is not a CUDA build" in done.stderr, done.stderr


def test_dockerfile_installs_a_cuda_torch_with_its_dependencies_and_checks_it():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    runs = [line[len("RUN "):] for line in dockerfile.splitlines() if line.startswith("RUN ")]
    pinned = re.search(r'"torch==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    torch_install = next(i for i, r in enumerate(runs) if f"torch=={pinned}" in r)
    assert cuda_torch_from_both_indexes(runs[torch_install])
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", dockerfile, re.M)
    ganray_install = next(i for i, r in enumerate(runs) if "pip install" in r and "-e /home/ray/ganray" in r)
    check = [i for i, r in enumerate(runs) if "torch.version.cuda" in r]
    assert torch_install < ganray_install < check[-1]  # the image as it ships is checked
    assert_cuda_check_fails_on_a_cpu_torch(runs[check[-1]])


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS + KUBERAY, ids=lambda p: p.name)
def test_no_credentials_in_cluster_files(path):
    text = path.read_text()
    for needle in ("aws_access_key_id", "aws_secret_access_key", "AWS_SECRET", "AKIA", "private_key"):
        assert needle.lower() not in text.lower(), needle


def test_s3_access_comes_from_instance_identities():
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    for name, node in aws["available_node_types"].items():
        if name != aws["head_node_type"]:  # the head gets Ray's own ray-autoscaler-v1 profile
            assert node["node_config"]["IamInstanceProfile"]["Name"], name
    gcp = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())
    for name, node in gcp["available_node_types"].items():
        assert node["node_config"]["serviceAccounts"][0]["email"], name
    for command in gcp["head_start_ray_commands"][1:] + gcp["worker_start_ray_commands"][1:]:
        assert "AWS_ROLE_ARN=" in command and "AWS_WEB_IDENTITY_TOKEN_FILE=" in command
        assert command.index("gcp_identity_token.sh --once") < command.index("ray start")
    assert os.access(CLUSTER / "gcp_identity_token.sh", os.X_OK)


# ---------------------------------------------------------------------------------------------
# KubeRay


def cluster_spec(manifest: dict) -> dict:
    field = {"RayCluster": None, "RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}[manifest["kind"]]
    return manifest["spec"][field] if field else manifest["spec"]


def pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def image_workdir() -> str:
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    return re.search(r"^WORKDIR (\S+)$", dockerfile, re.M).group(1)


def test_kuberay_has_a_cluster_two_jobs_and_a_service():
    kinds = sorted(yaml.safe_load(p.read_text())["kind"] for p in KUBERAY)
    assert kinds == ["RayCluster", "RayCronJob", "RayJob", "RayJob", "RayService", "ServiceAccount"]


@pytest.mark.parametrize("path", [p for p in KUBERAY if p.name not in ("service-account.yaml", "raycronjob-monitor.yaml")], ids=lambda p: p.name)
def test_kuberay_manifest_fields(path):
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] in {"RayCluster", "RayJob", "RayService"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = cluster_spec(manifest)
    assert spec["rayVersion"] == "2.60.0" and spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert spec["workerGroupSpecs"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    service_account = yaml.safe_load((CLUSTER / "kuberay" / "service-account.yaml").read_text())
    for pod in pod_specs(spec):
        assert pod["serviceAccountName"] == service_account["metadata"]["name"]
        assert pod["containers"][0]["image"]
        # No credentials handed to pods by hand: the pods' identity gives them (service account, IRSA).
        names = [e["name"] for e in pod["containers"][0].get("env", [])]
        assert not [n for n in names if re.search(r"AWS_|SECRET|TOKEN|PASSWORD|CREDENTIAL|API_KEY", n)], names
    if manifest["kind"] == "RayCluster":
        assert all(g["minReplicas"] == 0 for g in spec["workerGroupSpecs"])


@pytest.mark.parametrize("path", [p for p in KUBERAY if yaml.safe_load(p.read_text())["kind"] == "RayJob"],
                         ids=lambda p: p.name)
def test_rayjob_entrypoint_names_a_real_job_and_config(path):
    manifest = yaml.safe_load(path.read_text())
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # the GPUs go when the job ends
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == image_workdir() == IMAGE_REPO_DIR
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[2] == "--config" and len(argv) == 4
    script, config_path = REPO / argv[1], REPO / argv[3]
    assert script.is_file() and script.parent.name == "jobs"
    assert "from ganray.cli import main" in script.read_text()
    job_cls = {"train.py": TrainJob, "generate.py": GenerateJob}[script.name]
    job = load_config(job_cls, config_path)
    assert config_path.parent.name == "cluster"
    # The GPU group can hold every GPU the job asks for, and starts from none.
    (group,) = cluster_spec(manifest)["workerGroupSpecs"]
    gpus_asked = job.train.num_workers if job_cls is TrainJob else job.generate.replicas
    assert group["minReplicas"] == 0 and group["maxReplicas"] >= gpus_asked
    if job_cls is TrainJob:
        assert job.train.use_gpu
    else:
        assert job.generate.device == "cuda" and job.generate.count == 1_000_000


def test_rayservice_serves_the_face_api_with_autoscaling():
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "rayservice-face-api.yaml").read_text())
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    module, _, attr = app["import_path"].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert attr in {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
    service = FaceServiceConfig.model_validate(app["args"])
    assert service.model.registry.startswith("s3://")
    assert service.generator.num_gpus >= 1 and service.generator.min_replicas < service.generator.max_replicas
    assert service.ingress.min_replicas < service.ingress.max_replicas
    (group,) = cluster_spec(manifest)["workerGroupSpecs"]
    assert group["maxReplicas"] * int(group["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"]) >= service.generator.max_replicas * service.generator.num_gpus


def test_cluster_readme_names_every_file():
    readme = (CLUSTER / "README.md").read_text()
    for path in sorted(CLUSTER.rglob("*")):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(CLUSTER)) in readme, path


# ---------------------------------------------------------------------------------------------
# What the jobs ask of Ray fits the shipped clusters, and a job's GPU actors land on one GPU kind


ACCELERATOR = "accelerator_type:"
GENERATE_1M = REPO / "configs" / "cluster" / "generate_1m.yaml"


def cluster_node_types(path: Path) -> dict[str, dict[str, float]]:
    """Node type -> the Ray resources it declares to the autoscaler (KubeRay: as Ray's own operator
    glue derives them from the manifest)."""
    tree = yaml.safe_load(path.read_text())
    if "available_node_types" in tree:
        return {name: dict(t.get("resources") or {}) for name, t in tree["available_node_types"].items()}
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"metadata": {"name": tree["metadata"]["name"], "namespace": "default"}, "spec": cluster_spec(tree)}
    return {name: t["resources"] for name, t in _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"].items()}


def overrides_in_header(path: Path) -> list[str]:
    """The `--set key=value` a cluster file's usage comment adds to the jobs it names."""
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    return re.findall(r"--set\s+(\S+=\S+)", header)


def jobs_of(path: Path) -> list:
    """The jobs a cluster file runs: a RayJob's entrypoint config; every cluster config otherwise
    (with the overrides the file's usage comment names)."""
    tree = yaml.safe_load(path.read_text())
    if tree.get("kind") == "RayJob":
        argv = shlex.split(tree["spec"]["entrypoint"])
        config = REPO / argv[3]
        return [load_config(job_class(yaml.safe_load(config.read_text())), config)]
    overrides = overrides_in_header(path)
    jobs = []
    for config in CLUSTER_CONFIGS:
        cls = job_class(yaml.safe_load(config.read_text()))
        if cls is not ImportJob:  # the import runs as Ray Data tasks of one CPU
            section = "generate." if cls is GenerateJob else "train."
            jobs.append(load_config(cls, config, [o for o in overrides if o.startswith(section)]))
    return jobs


def requests_of(job) -> list[tuple[str, dict[str, float], bool]]:
    """(what, Ray resource request, whether it must stay on one GPU kind) of every actor of `job`."""
    from ganray.generate.placement import pinned_kind, stage_resources

    if isinstance(job, TrainJob):  # ganray/train/trainer.py's ScalingConfig
        worker = {"CPU": 0 if job.train.use_gpu else job.train.threads_per_worker, "GPU": int(job.train.use_gpu)}
        return [("train worker", worker, False)]
    cfg = job.generate
    stages = stage_resources(cfg, 8.0, labeled=cfg.labeler is not None or cfg.quality is not None
                             or cfg.closed_loop is not None, closed_loop=cfg.closed_loop is not None,
                             accelerator_type=pinned_kind(cfg))
    out = []
    for what, options in (("generator actor", stages.generator), ("label actor", stages.labeler)):
        if options is None:
            continue
        request = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0),
                   "memory": options.get("memory", 0)}
        if options.get("accelerator_type"):
            request[ACCELERATOR + options["accelerator_type"]] = 0.001  # what Ray's accelerator_type asks
        out.append((what, request, bool(options.get("num_gpus"))))
    return out


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(k, 0) >= v for k, v in request.items() if v > 0)


def kinds_of(resources: dict[str, float]) -> set[str]:
    return {k[len(ACCELERATOR):] for k in resources if k.startswith(ACCELERATOR)}


CLUSTER_FILES = LAUNCHER_CONFIGS + [p for p in KUBERAY if yaml.safe_load(p.read_text())["kind"] in ("RayCluster", "RayJob")]


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_actor_fits_a_node_type_and_gpu_actors_land_on_one_kind(path):
    types = cluster_node_types(path)
    gpu_types = {name: r for name, r in types.items() if r.get("GPU", 0) > 0}
    assert gpu_types, path
    for name, resources in gpu_types.items():  # auto-pinning and the autoscaler both read it
        assert len(kinds_of(resources)) == 1, f"{path.name}: GPU node type {name} must declare its one accelerator kind"
    jobs = jobs_of(path)
    assert jobs
    for job in jobs:
        for what, request, one_kind in requests_of(job):
            landing = [name for name, resources in types.items() if fits(request, resources)]
            assert landing, f"{path.name}: no node type holds a {what} asking {request}"
            if one_kind:
                kinds = {kind for name in landing for kind in kinds_of(types[name])}
                assert len(kinds) == 1, f"{path.name}: {what}s could land on GPU kinds {sorted(kinds)}"


def test_the_million_face_job_pins_its_gpu_kind_and_aws_names_its_own():
    job = load_config(GenerateJob, GENERATE_1M)
    assert job.generate.device == "cuda" and job.generate.accelerator_type not in (None, "auto")
    gcp_kinds = set().union(*map(kinds_of, cluster_node_types(CLUSTER / "gcp.yaml").values()))
    assert len(gcp_kinds) > 1 and job.generate.accelerator_type in gcp_kinds  # two kinds: the pin decides
    assert overrides_in_header(CLUSTER / "aws.yaml") == ["generate.accelerator_type=A10G"]
