"""The face API's Ray Serve application: `build_app` wires it in the configured layout.

    layout single (default): HTTP -> HAProxy or Serve proxy -> FaceService (FaceAPI's routes over an
                             in-process FaceGenerator; ganray/serve/single.py)
    layout split:            HTTP -> HAProxy or Serve proxy -> FaceAPI (ingress: auth, validation, PNG/JSON
                             responses; ganray/serve/ingress.py) -> FaceGenerator (@serve.batch: one
                             forward pass for many requests' faces; ganray/serve/generator.py)

single saves the hop between two deployments, which on CPUs costs more than the model; split lets
ingress replicas scale on CPUs apart from the generator replicas, with every ingress replica's
requests batching together in a generator (docs/serving.md compares them). A face is the one of
`ganray.models.face`: for the same model version, seed, psi and conditions the API returns exactly
the bytes the bulk job writes (so model replicas pinned to one accelerator kind when the cluster has
several: `generator.accelerator_type`).

Overload: every deployment has a bounded queue (`max_queued_requests`). Past it, the caller (the
proxy, the replica's own HTTP server under HAProxy, or the ingress's handle to the generator)
rejects with 503 and Retry-After, through Ray Serve's own backpressure handling (`backpressure_config`).

Run it with `ganray serve` (local Ray), or `serve run` / `serve deploy configs/serve.yaml`
(`import_path: ganray.serve.app:build_app`).
"""
import os
from typing import Any

from pydantic import ValidationError
from ray.serve import Application
from ray.serve.config import BackpressureConfig

from ganray.config import ConfigError, FaceAPIConfig, FaceServiceConfig, ReplicaOptions, load_config
from ganray.registry import registry_url
from ganray.serve.generator import FaceGenerator, LiveSettings
from ganray.serve.ingress import FaceAPI
from ganray.serve.single import FaceService
from ganray.storage import normalize_url

__all__ = ["API_KEY_ENV", "REPLICA_ENV", "FaceAPI", "FaceGenerator", "FaceService", "build_app", "deployment_options",
           "parse_app_args", "with_env_api_key"]

API_KEY_ENV = "GANRAY_API_KEY"

# Ray Serve settings for our replicas (read when a replica starts; Ray-internal names, re-check
# them on Ray upgrades). Each saves a cross-thread hand-off or a write per request
# (benchmarks/serve_latency.py measures what they save).
REPLICA_ENV = {
    # The deployment's code on Serve's own event loop, not on a second loop in a second thread.
    # (The model renders and PNGs encode in worker threads, so the loop never blocks for long.)
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # The ingress's handle to the generator routes on that same loop, not on a router thread.
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Replica logs (access log included) go to the replica's log file only, not also to stderr.
    "RAY_SERVE_LOG_TO_STDERR": "0",
}


def deployment_options(options: ReplicaOptions, retry_after_s: float, access_log: bool) -> dict[str, Any]:
    actor_options = {
        "num_cpus": options.num_cpus, "num_gpus": options.num_gpus,
        "runtime_env": {"env_vars": REPLICA_ENV},  # merged with the application's runtime_env
    }
    accelerator_type = getattr(options, "accelerator_type", None)  # the generator's pin to one GPU kind
    if accelerator_type is not None:
        actor_options["accelerator_type"] = accelerator_type
    return {
        "logging_config": {"enable_access_log": access_log},
        "autoscaling_config": {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        },
        "ray_actor_options": actor_options,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
    }


def parse_app_args(args: dict[str, Any]) -> FaceServiceConfig:
    """FaceServiceConfig from builder args: nested sections (a Serve config file's `args:`) and/or
    dotted keys (`serve run ganray.serve.app:build_app model.alias=staging`)."""
    nested = {k: v for k, v in args.items() if "." not in k}
    dotted = [f"{k}={v}" for k, v in args.items() if "." in k]
    return load_config(FaceServiceConfig, base=nested, overrides=dotted)


def with_env_api_key(api_config: FaceAPIConfig) -> FaceAPIConfig:
    """The api section with the key from $GANRAY_API_KEY when the config names none, checked like one."""
    env_key = os.environ.get(API_KEY_ENV)
    if api_config.api_key is not None or not env_key:
        return api_config
    try:
        return FaceAPIConfig.model_validate({**api_config.model_dump(), "api_key": env_key})
    except ValidationError as e:
        raise ConfigError(f"${API_KEY_ENV}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def build_app(args: dict[str, Any] | FaceServiceConfig) -> Application:
    """The Ray Serve application builder (`import_path: ganray.serve.app:build_app`)."""
    config = args if isinstance(args, FaceServiceConfig) else parse_app_args(args)
    model = config.model.model_copy(update={"registry": normalize_url(registry_url(config.model.registry))})
    limits = with_env_api_key(config.api)
    gen = config.generator
    live = LiveSettings(model=model, max_batch_size=gen.max_batch_size, batch_wait_timeout_s=gen.batch_wait_timeout_s,
                        max_gather_s=gen.max_gather_s).model_dump(mode="json")
    device = "cuda" if gen.num_gpus > 0 else "cpu"
    if config.layout == "single":
        # One replica answers HTTP and renders: the generator's sizing, the ingress's access log.
        options = deployment_options(gen, config.api.retry_after_s, access_log=True)
        return FaceService.options(**options, user_config=live).bind(limits, device)
    generator = FaceGenerator.options(
        **deployment_options(gen, config.api.retry_after_s, access_log=False), user_config=live,
    ).bind(device)
    ingress_options = deployment_options(config.ingress, config.api.retry_after_s, access_log=True)
    return FaceAPI.options(**ingress_options).bind(generator, limits)
