"""The face API's layouts and Serve-wide settings, without starting Ray: which deployments a layout
builds, and that `ganray serve` starts its Ray with the RAY_SERVE_* variables its config names.
(The default layout over real HTTP is tests/test_serve.py's.)"""
from __future__ import annotations

import os

import pytest
from conftest import REPO
from tiny_generators import push_random_model

from ganray.config import FaceServiceConfig, ServeJob, load_config
from ganray.registry import Registry


def test_layouts_build_their_deployments():
    from ganray.serve.app import build_app

    single = build_app(load_config(FaceServiceConfig, base={"generator": {"num_gpus": 1, "accelerator_type": "L4",
                                                                          "num_cpus": 2, "max_replicas": 3}}))
    deployment = single._bound_deployment
    assert deployment.name == "FaceService"
    # One replica answers HTTP and renders: the generator's sizing and pin, and its live settings.
    assert deployment.ray_actor_options["accelerator_type"] == "L4" and deployment.ray_actor_options["num_cpus"] == 2
    assert deployment._deployment_config.autoscaling_config.max_replicas == 3
    assert deployment._deployment_config.user_config["max_batch_size"] == 64
    split = build_app(load_config(FaceServiceConfig, base={"layout": "split"}))._bound_deployment
    assert split.name == "FaceAPI" and split.init_args[0]._bound_deployment.name == "FaceGenerator"
    with pytest.raises(Exception, match="layout"):
        load_config(FaceServiceConfig, base={"layout": "both"})


class RayStarted(Exception):
    pass


HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


@pytest.mark.parametrize("proxy, expected", [("haproxy", HAPROXY_ENV), ("serve", {"RAY_SERVE_ENABLE_HA_PROXY": "0"})])
def test_ganray_serve_starts_its_ray_with_the_proxys_settings(tmp_path, monkeypatch, proxy, expected):
    """Serve reads RAY_SERVE_ENABLE_HA_PROXY when its modules import, in every Ray process: `ganray serve`
    puts it in its own environment before Ray starts (the raylet and workers inherit it) and in the
    job's runtime_env."""
    import ganray.runtime
    from ganray.cli import main

    registry = Registry(str(tmp_path / "registry"))
    registry.promote(push_random_model(registry, 1), "production")
    seen = {}

    def init_ray(address=None, **local_kwargs):
        seen.update(address=address, environ={k: os.environ.get(k) for k in expected}, **local_kwargs)
        raise RayStarted

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in expected:
        monkeypatch.delenv(name, raising=False)  # restored after the test
    monkeypatch.setattr(ganray.runtime, "init_ray", init_ray)
    with pytest.raises(RayStarted):
        main(["serve", "--set", f"model.registry={registry.url}", "--set", f"http.proxy={proxy}"])
    assert seen == {"address": None, "environ": expected, "runtime_env": {"env_vars": expected}}


def test_ganray_serve_on_a_cluster_leaves_the_proxy_to_the_nodes(monkeypatch, capsys):
    import ganray.runtime
    from ganray.cli import main

    seen = {}

    def init_ray(address=None, **local_kwargs):
        seen.update(address=address, environ=os.environ.get("RAY_SERVE_ENABLE_HA_PROXY"), **local_kwargs)
        raise RayStarted

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    monkeypatch.setattr(ganray.runtime, "init_ray", init_ray)
    with pytest.raises(RayStarted):
        main(["serve"])
    assert seen == {"address": None, "environ": None}  # the cluster's own setting stands
    assert "RAY_SERVE_ENABLE_HA_PROXY=1" in capsys.readouterr().out


def test_shipped_configs_name_the_layout_and_proxy():
    job = load_config(ServeJob, REPO / "configs" / "serve_local.yaml")
    assert job.layout == FaceServiceConfig().layout and job.http.proxy == "haproxy"


def test_the_rayservice_runs_the_default_layout_with_haproxy_on_every_pod():
    import yaml

    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice-face-api.yaml").read_text())
    spec = manifest["spec"]
    (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    assert app["args"]["layout"] == FaceServiceConfig().layout
    groups = [spec["rayClusterConfig"]["headGroupSpec"], *spec["rayClusterConfig"]["workerGroupSpecs"]]
    for group in groups:  # Serve reads it in every Ray process: each pod's environment, not the runtime_env
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert ServeJob().http.ray_serve_env().items() <= env.items()
