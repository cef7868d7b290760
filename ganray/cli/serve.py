"""`ganray serve`: the face API on Ray Serve, in the foreground until Ctrl-C."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ganray.cli.common import CONFIG_DIR, UsageError, add_config_args
from ganray.config import ServeJob, load_config

LOCAL_CONFIG = CONFIG_DIR / "serve_local.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve faces over HTTP with Ray Serve (blocks; Ctrl-C stops)",
        description="Start the face API (GET /v1/faces/{seed}.png, POST /v1/faces, GET /v1/model, "
                    "/healthz, docs at /docs) on a local Ray, or on ray_address. It serves the registry "
                    f"alias model.alias and hot-reloads it when the alias moves. Example config: {LOCAL_CONFIG}. "
                    "For clusters use `serve deploy configs/serve.yaml`.",
    )
    add_config_args(serve)
    serve.set_defaults(handler=cmd_serve)


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # a service manager's stop gets the same clean shutdown as Ctrl-C


def cmd_serve(args: argparse.Namespace) -> int:
    job = load_config(ServeJob, args.config, args.overrides)  # exits 2 on a bad config, before Ray starts
    cluster = job.ray_address or os.environ.get("RAY_ADDRESS")
    if not cluster:
        # Locally the registry is reachable from here: refuse a model that cannot serve now, rather
        # than after Serve has retried its replicas. (A cluster may see storage that we cannot.)
        from ganray.registry import registry_url

        version = _check_model(job)
        print(f"serving {job.model.alias!r} = {version} from {registry_url(job.model.registry)}", flush=True)

    env = job.http.ray_serve_env()
    if not cluster:
        # Our own Ray, before Serve's modules import (they read the variables then): its raylet and
        # every worker inherit this environment; runtime_env carries it to the job's workers too.
        os.environ.update(env)
    import ray
    from ray import serve

    from ganray.runtime import init_ray
    from ganray.serve.app import build_app
    from ganray.serve.grpc_ingress import grpc_options

    if cluster:
        print(f"on a cluster, http.proxy ({job.http.proxy}) is the nodes' choice: their environment's "
              f"{', '.join(f'{k}={v}' for k, v in env.items())} (docs/serving.md)", flush=True)
        init_ray(job.ray_address)
    else:
        init_ray(None, runtime_env={"env_vars": env})
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        serve.start(http_options={"host": job.http.host, "port": job.http.port},
                    grpc_options=grpc_options(job.grpc.port) if job.grpc.port else None)
        serve.run(build_app(job), name=job.app_name, route_prefix=job.route_prefix)
        base = f"http://{job.http.host}:{job.http.port}{job.route_prefix.rstrip('/')}"
        print(f"face API up: {base}/v1/faces/42.png  (model: {base}/v1/model, docs: {base}/docs)", flush=True)
        if job.grpc.port:
            print(f"gRPC: {job.http.host}:{job.grpc.port} (ganray/serve/grpc_client.py)", flush=True)
        print("Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as e:  # Serve reports a deployment that failed to start this way
        print(f"ganray serve: the application failed to start: {e}", file=sys.stderr)
        return 1
    finally:
        # Remove what this command started: the application; and Serve and Ray too when they are
        # this process's local ones (on a cluster they may serve other applications).
        try:
            serve.delete(job.app_name)
            if not cluster:
                serve.shutdown()
        finally:
            if not cluster:
                ray.shutdown()


def _check_model(job: ServeJob) -> str:
    from ganray.registry import Registry, RegistryError, registry_url
    from ganray.storage import normalize_url

    try:
        return Registry(normalize_url(registry_url(job.model.registry))).load_generator(job.model.alias).version
    except RegistryError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - whatever it is, nothing could be served
        raise UsageError(f"cannot load {job.model.alias!r} from {job.model.registry}: "
                         f"{type(e).__name__}: {e}") from None
