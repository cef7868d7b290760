"""The output lease (ganray/generate/lease.py) on local disk and on a real S3 server (moto)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ganray import storage
from ganray.generate.lease import LeaseHeld, LeaseLost, OutputLease, check_not_superseded, lease_url

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "faces")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/faces"


def record(output: str, generation: int) -> dict:
    return json.loads(storage.read_bytes(lease_url(output, generation)))


def wait_until_expired(lease: OutputLease) -> None:
    deadline = record(lease.output_url, lease.generation)["heartbeat_at"] + lease._record["expires_after_s"]
    time.sleep(max(0.0, deadline - time.time()) + 0.05)


def test_a_second_driver_is_refused_naming_the_holder_until_the_lease_is_released(output):
    first = OutputLease.acquire(output, "job-a", expires_after_s=30)
    since = record(output, 1)["since"]
    with pytest.raises(LeaseHeld) as refused:
        OutputLease.acquire(output, "job-b", expires_after_s=30)
    message = str(refused.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}, job job-a, since {since}" in message
    assert "nothing was written" in message and storage.ls(storage.join(output, "_lease")) == [lease_url(output, 1)]

    first.release()
    assert record(output, 1)["released"] is True
    with OutputLease.acquire(output, "job-b", expires_after_s=30) as second:
        assert second.generation == 2 and record(output, 2)["holder"]["job_id"] == "job-b"
    assert record(output, 2)["released"] is True  # `with` releases


def test_the_heartbeat_keeps_a_lease_alive_past_its_expiry(output):
    with OutputLease.acquire(output, "job-a", expires_after_s=1.0) as lease:
        first_beat = record(output, 1)["heartbeat_at"]
        deadline = time.monotonic() + 30
        while record(output, 1)["heartbeat_at"] < first_beat + 1.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record(output, 1)["heartbeat_at"] >= first_beat + 1.5  # refreshed beyond one expiry
        with pytest.raises(LeaseHeld, match="job job-a"):
            OutputLease.acquire(output, "job-b", expires_after_s=1.0)
        lease.check()


def test_an_expired_lease_is_taken_over_and_its_holder_stops(output):
    stalled = OutputLease.acquire(output, "job-a", expires_after_s=1.0)
    stalled.stop_heartbeat()  # a driver that hangs: alive, but no more heartbeats
    wait_until_expired(stalled)

    taker = OutputLease.acquire(output, "job-b", expires_after_s=30)
    assert taker.generation == 2
    with pytest.raises(LeaseLost, match="took over"):
        stalled.check()
    with pytest.raises(LeaseLost, match="not committing"):
        check_not_superseded(stalled.superseded_url)  # its shard writers refuse to commit
    check_not_superseded(taker.superseded_url)
    stalled.release()  # does not touch the lease it lost
    with pytest.raises(LeaseHeld, match="job job-b"):
        OutputLease.acquire(output, "job-c", expires_after_s=30)
    taker.release()


def test_two_drivers_taking_over_the_same_expired_lease_at_once_one_wins(output):
    for round_ in range(3):
        stalled = OutputLease.acquire(output, f"job-stalled-{round_}", expires_after_s=0.5)
        stalled.stop_heartbeat()
        wait_until_expired(stalled)
        start = threading.Barrier(2)
        won, refused = [], []

        def take(name: str) -> None:
            start.wait()
            try:
                won.append(OutputLease.acquire(output, name, expires_after_s=30))
            except LeaseHeld as e:
                refused.append(str(e))

        threads = [threading.Thread(target=take, args=(f"job-{round_}-{k}",)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert f"job {won[0]._record['holder']['job_id']}" in refused[0]
        won[0].release()


def test_the_lease_of_a_killed_driver_on_this_host_is_taken_over_at_once(output):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ganray.generate.lease import OutputLease\n"
         "OutputLease.acquire(sys.argv[1], 'job-killed', 600)\nprint('held', flush=True)\ntime.sleep(600)", output],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {holder.pid}, job job-killed"):
            OutputLease.acquire(output, "job-next", expires_after_s=30)
    finally:
        holder.kill()
        holder.wait()
    with OutputLease.acquire(output, "job-next", expires_after_s=30) as lease:  # 600 s expiry not waited for
        assert lease.generation == 2


def test_an_unreadable_lease_is_refused_not_overwritten(tmp_path):
    output = str(tmp_path / "faces")
    Path(lease_url(output, 1)).parent.mkdir(parents=True)
    Path(lease_url(output, 1)).write_text("{not json")
    with pytest.raises(LeaseHeld, match="lease-00000001.json is unreadable"):
        OutputLease.acquire(output, "job-a", expires_after_s=30)
    assert Path(lease_url(output, 1)).read_text() == "{not json"
