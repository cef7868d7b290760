"""`ray job submit` against a real `ray start --head` cluster, as a user types it (docs/clusters.md).

One head node on ports of its own, in a temporary HOME whose token (`ray get-auth-token --generate`)
turns Ray 2.60's token authentication on; the client submits with RAY_AUTH_MODE=token. The head gets
no S3 settings: the jobs get the endpoint and credentials through `runtime_env` env_vars, as on a
cluster that is not the submitting machine. The jobs: a relative path refused; a tiny training run
to S3 (then published to an S3 registry from the submitting machine); a publish from inside the
cluster with a relative registry path resolved against the submit directory ($GANRAY_SUBMIT_DIR);
300 faces generated to S3. The CLI submits the training and generation jobs, as users type them;
the SDK (JobSubmissionClient) the short ones. Their outputs are checked on the
loopback S3 server, and nothing they wrote or logged holds the secret key. At the end exactly the
processes this head started are stopped (never `ray stop`, which stops every Ray on the machine).
"""
from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from ganray import storage
from ganray.registry import Registry

from conftest import REPO, free_port, free_ports

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
RUN_NAME = "demo-cluster"
# A tiny version of configs/cluster/train_demo.yaml: a few steps at 32 px on one CPU worker.
TINY_TRAIN = ["train.max_steps=4", "train.checkpoint_every=4", "train.log_every=2", "train.num_workers=1",
              "train.batch_size=16", "train.sample_seeds=4", "data.resolution=32", "data.synthetic.count=256",
              "model.g_width=8", "model.d_width=8", "model.z_dim=16"]
# configs/cluster/generate_1m.yaml on CPU, 300 faces.
SMALL_GENERATE = ["generate.count=300", "generate.shard_size=100", "generate.device=cpu",
                  "generate.precision=auto", "generate.batch_size=50", "generate.replicas=1"]
# Test speed only (see ../shared/notes/ray-on-this-machine.md): Ray Train's fixed overhead per fit.
RAY_TRAIN_FAST = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
                  "RAY_TRAIN_METRICS_ENABLED": "0"}


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


class HeadNode:
    """`ray start --head` on free ports, its own temp dir and HOME; stops only what it started.

    Every process the head starts inherits MARKER in its environment or descends from one that
    did (processes that rename themselves hide their environment, but stay children of the raylet
    or the dashboard); `stop` terminates exactly those.
    """

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.home.mkdir()
        # Short: Ray's socket paths live under it and must stay under ~107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="grt", dir="/tmp")
        self.marker = uuid.uuid4().hex
        self.dashboard_port = free_port()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "RAY_", "GANRAY_")) and k != "PYTHONPATH"}
        # The job's `python` is the first one on the PATH of the processes `ray start` launched.
        base.update(HOME=str(self.home), PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                    RAY_USAGE_STATS_ENABLED="0")
        self.head_env = {**base, "GANRAY_TEST_CLUSTER": self.marker}
        self.client_env = {**base, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"http://127.0.0.1:{self.dashboard_port}"}

    def start(self) -> None:
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.head_env, check=True, capture_output=True)
        assert (self.home / ".ray" / "auth_token").is_file()
        worker_ports = random.randrange(20000, 29000, 200)
        names = ("port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                 "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")
        ports = dict(zip(names, free_ports(len(names), avoid={self.dashboard_port})))
        cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", *(f"--{k}={v}" for k, v in ports.items()),
               f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 199}",
               "--num-cpus=2", "--object-store-memory=600000000", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]
        started = subprocess.run(cmd, env=self.head_env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "Token authentication is enabled" in started.stdout + started.stderr

    def processes(self) -> list[psutil.Process]:
        roots = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("GANRAY_TEST_CLUSTER") == self.marker:
                    roots.append(proc)
            except (psutil.Error, OSError):
                continue
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update((c.pid, c) for c in root.children(recursive=True))
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=3)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def submit(self, entrypoint: list[str], env_vars: dict[str, str]) -> tuple[int, str]:
        """`ray job submit --working-dir . --runtime-env-json ... -- ENTRYPOINT` from the repository
        root, as users type it; waits for the job. Returns the CLI's exit status and output (which
        holds the job's log)."""
        runtime_env = json.dumps({"env_vars": env_vars})
        done = subprocess.run(
            [RAY, "job", "submit", "--working-dir", ".", "--runtime-env-json", runtime_env, "--", *entrypoint],
            cwd=REPO, env=self.client_env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout + done.stderr

    def submit_sdk(self, entrypoint: list[str], env_vars: dict[str, str]) -> tuple[bool, str]:
        """The same through ray.job_submission.JobSubmissionClient, in this process (no CLI start-up);
        the token goes in the Authorization header. Returns (succeeded, the job's log)."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        token = (self.home / ".ray" / "auth_token").read_text().strip()
        client = JobSubmissionClient(self.client_env["RAY_ADDRESS"], headers={"Authorization": f"Bearer {token}"})
        job = submit_when_the_agent_is_up(lambda: client.submit_job(
            entrypoint=shlex.join(entrypoint), runtime_env={"working_dir": str(REPO), "env_vars": env_vars}))
        deadline = time.monotonic() + 300
        while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                              JobStatus.STOPPED}:
            assert time.monotonic() < deadline, f"job {job} still {status}"
            time.sleep(0.5)
        # The job's log, and Ray's status message ("Job entrypoint command failed with exit code N ...").
        return status == JobStatus.SUCCEEDED, client.get_job_logs(job) + "\n" + (client.get_job_info(job).message or "")


def submit_when_the_agent_is_up(submit, timeout_s: float = 60):
    """`submit()`, again while the head answers that its job agent is not up yet. Right after `ray
    start --head` the dashboard waits 10 s for the head's agent to register, then answers 500 "No
    available agent to submit job, please try again later." (seen on a busy 2-core machine); the
    README tells users to do what this does."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return submit()
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1)


@pytest.fixture
def head(tmp_path):
    node = HeadNode(tmp_path)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        assert not node.processes(), "processes of the test's Ray head survived"


def test_train_publish_and_generate_as_submitted_jobs(head, s3_server, s3_bucket, tmp_path):
    secret = f"secret-{uuid.uuid4().hex}"
    s3_env = {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": f"key-{uuid.uuid4().hex[:8]}",
              "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = f"s3://{s3_bucket}"
    logs = []

    # Token authentication is on: a client without RAY_AUTH_MODE=token is turned away.
    no_token = {k: v for k, v in head.client_env.items() if k != "RAY_AUTH_MODE"}
    listed = subprocess.run([RAY, "job", "list"], env=no_token, capture_output=True, text=True, timeout=120)
    assert listed.returncode != 0 and "Missing authentication token" in listed.stdout + listed.stderr

    # A relative path in a submitted job is refused, naming the fix, with exit status 2: here the
    # default registry (./registry), the README's failure of old ("registry ... holds no versions").
    ok, log = head.submit_sdk(["python", "jobs/generate.py", "--config", "configs/cluster/generate_1m.yaml",
                               *sets(SMALL_GENERATE), "--set", "registry.url=null", "--set", "generate.output=faces"],
                              s3_env)
    logs.append(log)
    assert not ok, log[-3000:]
    assert "ganray generate: error: './registry' is a relative path, and this is a job started by `ray job submit`" in log
    assert "GANRAY_SUBMIT_DIR" in log and "s3://" in log and "failed with exit code 2" in log

    # Train to S3 (the CLI, as users type it).
    status, log = head.submit(["python", "jobs/train.py", "--config", "configs/cluster/train_demo.yaml",
                               "--set", f"run.storage_path={bucket}/runs", *sets(TINY_TRAIN)],
                              {**s3_env, **RAY_TRAIN_FAST})
    logs.append(log)
    assert status == 0, log[-3000:]
    assert f"trained run '{RUN_NAME}' to step 4" in log
    assert storage.exists(f"{bucket}/runs/{RUN_NAME}/checkpoint_00000004/meta.json")

    # Publish it to the S3 registry from the submitting machine (`ganray registry push`, with S3 access here).
    from ganray.cli import main

    assert main(["registry", "push", "--registry", f"{bucket}/registry", "--from-run", f"{bucket}/runs", RUN_NAME,
                 "--promote", "production", "--force"]) == 0  # unevaluated: past production's built-in gate
    info = Registry(f"{bucket}/registry").show("production")
    assert info.version == "v1" and info.provenance["step"] == 4 and info.resolution == 32

    # Or from inside the cluster (jobs/registry.py), here with the opt-in: with $GANRAY_SUBMIT_DIR, a
    # relative registry path means <submit dir>/registry.
    submit_dir = tmp_path / "submitted-from"
    submit_dir.mkdir()
    ok, log = head.submit_sdk(["python", "jobs/registry.py", "push", "--registry", "registry",
                               "--from-run", f"{bucket}/runs", RUN_NAME],
                              {**s3_env, storage.SUBMIT_DIR_ENV: str(submit_dir)})
    logs.append(log)
    assert ok, log[-3000:]
    assert f"pushed {RUN_NAME} as v1 to {submit_dir / 'registry'}" in log
    assert Registry(str(submit_dir / "registry")).show("latest").content_hash == info.content_hash

    # Generate 300 faces from the S3 registry's production model to S3.
    status, log = head.submit(["python", "jobs/generate.py", "--config", "configs/cluster/generate_1m.yaml",
                               *sets(SMALL_GENERATE), "--set", f"registry.url={bucket}/registry",
                               "--set", f"generate.output={bucket}/faces"], s3_env)
    logs.append(log)
    assert status == 0, log[-3000:]
    from ganray.generate.output import verify_output

    report = verify_output(f"{bucket}/faces")
    assert report["shards"] == 3 and not report["damaged"]
    manifest = json.loads(storage.read_bytes(f"{bucket}/faces/manifest.json"))
    assert manifest["faces"] == 300

    # The secret key is nowhere in what the jobs printed, logged or wrote.
    fs, root = storage.url_to_fs(bucket)
    written = {path: fs.cat_file(path) for path in fs.find(root)}
    written.update({str(p): p.read_bytes() for p in submit_dir.rglob("*") if p.is_file()})
    session_logs = Path(head.temp_dir, "session_latest", "logs")
    worker_output = [p for p in session_logs.glob("worker-*") if p.suffix in (".out", ".err")]
    written.update({str(p): p.read_bytes() for p in worker_output})
    assert any(p.endswith("job.json") for p in written) and worker_output
    leaks = [path for path, data in written.items() if secret.encode() in data]
    leaks += [f"job log {i}" for i, text in enumerate(logs) if secret in text]
    assert not leaks, f"the secret key appears in {leaks}"
