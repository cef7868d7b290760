"""The bulk generation job on a real local Ray: rows, determinism, exactly-once resume, refusals, S3."""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ganray import storage
from ganray.cli import main as cli
from ganray.config import GenerateJob, DCGANConfig, load_config
from ganray.data.hf_features import to_ganray_table
from ganray.generate.job import run_generate
from ganray.generate.lease import OutputLease
from ganray.generate.output import GenerateError
from ganray.generate.pipeline import FaceRenderer
from ganray.generate.plan import job_id
from ganray.images import decode_png
from ganray.models.face import (
    cpu_has_amx,
    cpu_has_native_bf16,
    labels_for_conditions,
    render_faces,
    resolve_precision,
)
from ganray.models import build_generator
from ganray.registry import Registry

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
# 50 faces in shards of 16 (the last one short), both formats, balanced over gender, age drawn per seed.
REFERENCE = {"count": 50, "shard_size": 16, "format": "both", "psi": 0.8, "seed_offset": 1000,
             "balance": ["gender"], "batch_size": 64, "replicas": 1}
# Many small shards, so that a run can be interrupted half way.
INTERRUPTED = {"count": 160, "shard_size": 4, "format": "parquet", "psi": 1.0, "batch_size": 3}


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory) -> str:
    torch.manual_seed(0)
    g = build_generator(DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4), 32, ATTRIBUTES)
    with torch.no_grad():  # spread the weights: DCGAN's init gives near-flat images at this width
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    registry.promote(registry.push(g.state_dict(), DCGANConfig(z_dim=16, g_width=8, conditional=True,
                                                               embed_dim=4).model_dump(),
                                   32, ATTRIBUTES, {"test": True}), "production")
    return registry.url


def overrides(registry_url: str, output: str, params: dict) -> list[str]:
    return [f"registry.url={registry_url}", f"generate.output={output}", "generate.model=production",
            "generate.progress_interval_s=0.5", *(f"generate.{k}={json.dumps(v)}" for k, v in params.items())]


def generate(registry_url: str, output: str, **params) -> dict:
    return run_generate(load_config(GenerateJob, None, overrides(registry_url, output, params)))


def snapshot(url: str) -> dict[str, bytes]:
    """Every file of an output (but the run's timings and the drivers' leases), by path relative to the output."""
    fs, root = storage.url_to_fs(url)
    return {rel: fs.cat_file(path) for path in fs.find(root)
            if not (rel := path[len(root):].lstrip("/")).endswith(("summary.json", "card.json", "README.md")) and not rel.startswith("_lease/")}


def entries(output: str) -> list[str]:
    return [u for u in storage.ls(storage.join(output, "_manifest")) if u.endswith(".json")]


@pytest.fixture(scope="module")
def reference(ray_session, registry_url, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("reference") / "faces")
    generate(registry_url, output, **REFERENCE)
    return output


@pytest.fixture(scope="module")
def interrupted_reference(ray_session, registry_url, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("interrupted-reference") / "faces")
    generate(registry_url, output, **{**INTERRUPTED, "batch_size": 64})
    return output


def test_rows_are_unique_complete_balanced_and_decode_to_the_generator_output(reference, registry_url):
    table = to_ganray_table(pq.read_table(os.path.join(reference, "data"))).sort_by("face_id")
    assert table.num_rows == 50 and table.column("face_id").to_pylist() == list(range(50))
    assert table.column("seed").to_pylist() == [1000 + i for i in range(50)]
    assert set(table.column("model_version").to_pylist()) == {"v1"}
    assert table.column_names == ["face_id", "seed", "image", "width", "height", "model_version", "psi",
                                  "conditions", "gender", "age", "job_id"]
    genders = table.column("gender").to_pylist()
    assert genders == ["female", "male"] * 25  # balanced: face i gets combination i mod 2
    assert {json.loads(c)["age"] for c in table.column("conditions").to_pylist()} == set(ATTRIBUTES["age"])

    manifest = json.loads(Path(reference, "manifest.json").read_text())
    job = json.loads(Path(reference, "job.json").read_text())
    assert manifest["job_id"] == job["job_id"] == table.column("job_id")[0].as_py()
    assert all(entry["job_id"] == job["job_id"] for entry in manifest["shards"])
    # The identity records what else decides the bytes: the torch build and the device kind.
    assert job["parameters"]["torch"] == torch.__version__
    native_bf16 = " AMX" if cpu_has_amx() else " AVX512-BF16" if cpu_has_native_bf16() else ""
    assert job["parameters"]["device_kind"] == \
        f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()}{native_bf16}"
    assert job["parameters"]["balance_order"] == "crt-block-shift/1"
    lease = json.loads(Path(reference, "_lease", "lease-00000001.json").read_text())
    assert lease["released"] and lease["holder"]["job_id"] == job["job_id"]  # released at the end
    assert manifest["parameters"]["model_version"] == "v1" and manifest["faces"] == 50
    assert [s["face_ids"] for s in manifest["shards"]] == [[0, 16], [16, 32], [32, 48], [48, 50]]
    summary = json.loads(Path(reference, "summary.json").read_text())
    assert summary["faces"] == 50 and summary["shards"] == 4 and summary["faces_per_s"] > 0

    # A stored PNG decodes to exactly the generator's uint8 output for that face.
    g = Registry(registry_url).load_generator("v1").generator
    row = table.slice(37, 1).to_pylist()[0]
    labels = labels_for_conditions(g, json.loads(row["conditions"]), 1)
    expected = render_faces(g, [row["seed"]], psi=0.8, labels=labels)[0]
    np.testing.assert_array_equal(decode_png(row["image"]), expected)
    # The PNG folder holds the same bytes, with its rows beside them.
    assert Path(reference, "png", "shard-00002", "000000037.png").read_bytes() == row["image"]
    meta = to_ganray_table(pq.read_table(os.path.join(reference, "png", "shard-00002", "metadata.parquet")))
    assert meta.column("file").to_pylist()[5] == "png/shard-00002/000000037.png"
    assert "image" not in meta.column_names and meta.num_rows == 16


def test_same_bytes_whatever_the_batch_size_and_replica_count(reference, registry_url, tmp_path):
    output = str(tmp_path / "faces")
    generate(registry_url, output, **{**REFERENCE, "batch_size": 5, "replicas": 2})
    assert snapshot(output) == snapshot(reference)
    # precision auto (the reference's) and what it resolves to here are one job: the same bytes, job.json too.
    explicit = str(tmp_path / "explicit")
    generate(registry_url, explicit, **{**REFERENCE, "precision": resolve_precision("auto", "cpu")})
    assert snapshot(explicit) == snapshot(reference)


def test_resume_after_the_driver_is_killed_gives_the_uninterrupted_bytes(
        interrupted_reference, ray_session, registry_url, tmp_path):
    output = str(tmp_path / "faces")
    driver = subprocess.Popen(
        [sys.executable, "-m", "ganray.cli", "generate",
         *(a for o in overrides(registry_url, output, INTERRUPTED) for a in ("--set", o))],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": ray_session.address_info["gcs_address"]},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(entries(output)) < 3 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    committed_at_kill = len(entries(output))
    assert 3 <= committed_at_kill < 40 and not Path(output, "manifest.json").exists()
    time.sleep(1)  # let Ray stop the dead driver's workers
    committed = len(entries(output))
    assert not Path(output, "_manifest", "shard-00038.json").exists()
    # What a writer killed mid-shard leaves: a temporary file and a shard file without its entry.
    Path(output, "data").mkdir(exist_ok=True)
    Path(output, "data", "train-00039-of-00040.parquet.tmp-0123456789ab").write_bytes(b"partial")
    Path(output, "data", "train-00038-of-00040.parquet").write_bytes(b"uncommitted")

    summary = generate(registry_url, output, **INTERRUPTED)
    assert summary["resumed"] and summary["shards_this_run"] == 40 - committed  # only the missing shards
    assert snapshot(output) == snapshot(interrupted_reference)


def _renderer_actors(job_id: str, before: set[str]) -> list[dict]:
    """The live generator actors of this driver's job started since `before` (actor ids), from the
    GCS actor table: Ray Data's pool workers, named MapWorker(MapBatches(FaceRenderer))."""
    import ray

    alive = ray._private.state.actors(job_id=ray.JobID.from_hex(job_id), actor_state_name="ALIVE").values()
    return [a for a in alive if a["ActorID"] not in before and "FaceRenderer" in a["ActorClassName"] and a["Pid"]]


def test_a_killed_generator_actor_is_replaced_and_the_bytes_are_unchanged(
        interrupted_reference, registry_url, tmp_path):
    """The job's one generator actor (generate.replicas 1) is killed as soon as it is up, with every
    shard still to write: the job can only finish if Ray restarts it (its restart count in the GCS
    actor table) or Ray Data replaces it, and it must finish on its own with the same bytes.
    Killed later, the actor may have rendered every shard already (rendering runs ahead of the
    commits), and nothing would need replacing."""
    import psutil
    import ray

    output = str(tmp_path / "faces")
    job_id = ray.get_runtime_context().get_job_id()
    before = set(ray._private.state.actors(job_id=ray.JobID.from_hex(job_id)))
    killed = []

    def kill_the_actor_once_up():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for actor in _renderer_actors(job_id, before)[:1]:
                try:
                    psutil.Process(actor["Pid"]).kill()
                except psutil.NoSuchProcess:
                    continue
                killed.append((actor["ActorID"], len(entries(output))))
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_actor_once_up)
    killer.start()
    try:
        generate(registry_url, output, **INTERRUPTED)  # no re-run: the job must survive the kill itself
    finally:
        killer.join()
    assert killed and killed[0][1] < 40, "no generator actor of this job was killed mid-run"
    actor = ray._private.state.actors(actor_id=killed[0][0])
    assert actor["JobID"] == job_id, actor
    others = [a for a in ray._private.state.actors(job_id=ray.JobID.from_hex(job_id)).values()
              if a["ActorID"] not in before and a["ActorID"] != killed[0][0] and "FaceRenderer" in a["ActorClassName"]]
    assert actor["NumRestarts"] >= 1 or others, ("the killed actor was neither restarted nor replaced", actor)
    assert snapshot(output) == snapshot(interrupted_reference)


def test_output_of_another_job_is_refused_and_left_alone(reference, registry_url, tmp_path):
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(reference).rglob("*")}
    with pytest.raises(GenerateError, match=r"belongs to another job(.|\n)*psi: 0.8 there, 0.5 in this job"):
        generate(registry_url, reference, **{**REFERENCE, "psi": 0.5})
    with pytest.raises(GenerateError, match="count: 50 there, 60 in this job"):
        generate(registry_url, reference, **{**REFERENCE, "count": 60})
    # The reference ran with precision auto, recorded as what it resolved to on this CPU; the other one
    # is another job.
    resolved = resolve_precision("auto", "cpu")
    other = {"bf16": "fp32", "fp32": "bf16"}[resolved]
    assert json.loads(Path(reference, "job.json").read_text())["parameters"]["precision"] == resolved
    with pytest.raises(GenerateError, match=f"precision: '{resolved}' there, '{other}' in this job"):
        generate(registry_url, reference, **{**REFERENCE, "precision": other})
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in Path(reference).rglob("*")} == before

    foreign = tmp_path / "not-ours"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b\n")
    with pytest.raises(GenerateError, match="not a ganray generate output"):
        generate(registry_url, str(foreign), **REFERENCE)
    assert [p.name for p in foreign.iterdir()] == ["data.csv"]


@pytest.mark.parametrize("bad, message", [
    ({"count": 0}, "generate.count: Input should be greater than 0"),
    ({"shard_size": -5}, "generate.shard_size: Input should be greater than 0"),
    ({"model": "v9"}, "unknown model 'v9'"),
    ({"conditions": {"age": "old"}}, "unknown value 'old' for attribute 'age'"),
    ({"balance": ["hair"]}, "cannot balance unknown attribute 'hair'"),
    ({"mix_seed_offset": 5}, "style mixing needs both generate.mix_seed_offset and generate.crossover"),
    ({"crossover": -1}, "generate.crossover: Input should be greater than or equal to 0"),
    ({"mix_seed_offset": 5, "crossover": 1}, "style mixing needs a style-based model (model.arch stylegan2)"),
    ({"mix_seed_offset": 5, "crossover": 1, "balance": [], "closed_loop": {"strata": ["age"]}},
     "style mixing (generate.mix_seed_offset/crossover) cannot be combined with generate.closed_loop yet"),
])
def test_bad_input_exits_2_and_writes_nothing(bad, message, registry_url, tmp_path, capsys):
    output = tmp_path / "faces"
    assert cli(["generate", *(a for o in overrides(registry_url, str(output), {**REFERENCE, **bad})
                              for a in ("--set", o))]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_unwritable_output_exits_2(ray_session, registry_url, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli(["generate", *(a for o in overrides(registry_url, str(blocker / "faces"), REFERENCE)
                              for a in ("--set", o))]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli(["generate", *(a for o in overrides(registry_url, "s3://no-such-bucket/faces", REFERENCE)
                              for a in ("--set", o))]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err


def test_s3_output_has_the_same_bytes_as_local(reference, registry_url, s3_bucket):
    output = f"s3://{s3_bucket}/faces"
    summary = generate(registry_url, output, **REFERENCE)
    assert summary["faces"] == 50 and summary["output"] == output
    assert snapshot(output) == snapshot(reference)
    assert json.loads(storage.read_bytes(f"{output}/summary.json"))["job_id"] == summary["job_id"]


def test_a_second_driver_is_refused_naming_the_holder_and_deletes_nothing(ray_session, registry_url, tmp_path):
    output = tmp_path / "faces"
    small = {**REFERENCE, "count": 8, "shard_size": 4}
    first = OutputLease.acquire(str(output), "job-of-the-first-driver", expires_after_s=60)
    in_flight = output / "data" / "train-00000-of-00002.parquet.tmp-0123456789ab"  # the first driver's writer at work
    in_flight.parent.mkdir(parents=True)
    in_flight.write_bytes(b"half a shard")
    with pytest.raises(GenerateError, match=rf"being written by another driver: host {platform.node()}, "
                                            rf"pid {os.getpid()}, job job-of-the-first-driver, since"):
        generate(registry_url, str(output), **small)
    assert in_flight.read_bytes() == b"half a shard" and not (output / "job.json").exists()

    first.release()
    summary = generate(registry_url, str(output), **small)
    assert summary["faces"] == 8 and not in_flight.exists()
    assert json.loads((output / "_lease" / "lease-00000002.json").read_text())["released"]


def corrupt(path: Path) -> None:
    """Flip one byte in the middle: the size stays the same."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_finds_damage_by_content_and_the_next_run_rewrites_only_those_shards(
        reference, registry_url, tmp_path, capsys):
    output = tmp_path / "faces"
    shutil.copytree(reference, output)
    assert cli(["generate", "--verify", str(output)]) == 0
    assert "all 4 shards intact" in capsys.readouterr().out

    corrupt(output / "data" / "train-00000-of-00004.parquet")
    corrupt(output / "png" / "shard-00001" / "000000020.png")
    entry = output / "_manifest" / "shard-00002.json"
    entry.write_text(entry.read_text().replace(json.loads(entry.read_text())["job_id"], "0123456789abcdef"))
    (output / "png" / "shard-00003" / "metadata.parquet").unlink()
    assert cli(["generate", "--verify", str(output)]) == 1
    report = capsys.readouterr().out
    assert "damaged: shard-00000: data/train-00000-of-00004.parquet does not match its sha256" in report
    assert "damaged: shard-00001: png/shard-00001/ does not match its sha256" in report
    assert "damaged: shard-00002: it was committed by job 0123456789abcdef" in report
    assert "damaged: shard-00003: png/shard-00003/ does not match its sha256 (2 files, 3 committed)" in report
    assert "4 of 4 shards damaged or missing" in report

    summary = generate(registry_url, str(output), **REFERENCE)
    assert summary["resumed"] and summary["shards_this_run"] == 4
    assert snapshot(str(output)) == snapshot(reference)
    assert cli(["generate", "--verify", str(output)]) == 0


@pytest.mark.parametrize("bad_path", ["../outside.parquet", "/etc/passwd", "s3://elsewhere/shard.parquet",
                                      "parquet/../../outside.parquet"])
def test_a_path_outside_the_output_in_an_entry_is_refused_never_read_or_deleted(
        bad_path, reference, tmp_path, capsys):
    output = tmp_path / "faces"
    shutil.copytree(reference, output)
    (tmp_path / "outside.parquet").write_bytes(b"not yours")
    entry_path = output / "_manifest" / "shard-00001.json"
    entry = json.loads(entry_path.read_text())
    entry["files"][bad_path] = entry["files"].pop("data/train-00001-of-00004.parquet")
    entry_path.write_text(json.dumps(entry))
    before = snapshot(str(output))

    assert cli(["generate", "--verify", str(output)]) == 2
    assert f"unsafe path {bad_path!r}" in capsys.readouterr().err
    assert snapshot(str(output)) == before and (tmp_path / "outside.parquet").read_bytes() == b"not yours"


def test_a_run_refuses_an_entry_with_an_unsafe_path_and_deletes_nothing(reference, registry_url, tmp_path):
    output = tmp_path / "faces"
    shutil.copytree(reference, output)
    (tmp_path / "outside.parquet").write_bytes(b"not yours")
    entry_path = output / "_manifest" / "shard-00001.json"
    entry = json.loads(entry_path.read_text())
    entry["files"]["../outside.parquet"] = entry["files"].pop("data/train-00001-of-00004.parquet")
    entry_path.write_text(json.dumps(entry))
    before = snapshot(str(output))
    with pytest.raises(GenerateError, match=r"unsafe path '\.\./outside\.parquet'(.|\n)*refused: nothing it names"):
        generate(registry_url, str(output), **REFERENCE)
    assert snapshot(str(output)) == before and (tmp_path / "outside.parquet").read_bytes() == b"not yours"


def test_an_output_rendered_on_another_torch_build_is_not_resumed(reference, registry_url, tmp_path):
    output = tmp_path / "faces"
    shutil.copytree(reference, output)
    job = json.loads((output / "job.json").read_text())
    job["parameters"]["torch"] = "2.0.0+cu118"
    job["job_id"] = job_id(job["parameters"])
    (output / "job.json").write_text(json.dumps(job))
    with pytest.raises(GenerateError, match=re.escape(f"torch: '2.0.0+cu118' there, '{torch.__version__}' in this "
                                                      "job\nIt was rendered with another torch build")):
        generate(registry_url, str(output), **REFERENCE)


def test_a_generator_actor_on_another_device_kind_refuses_to_render(registry_url):
    from ganray.generate.plan import ConditionPlan

    with pytest.raises(RuntimeError, match="the bytes could differ, so it refuses to render"):
        FaceRenderer(registry_url, "v1", ConditionPlan(ATTRIBUTES, {}, []), seed_offset=0, psi=1.0, batch_size=4,
                     precision="bf16", device="cpu",
                     environment={"torch": torch.__version__, "device_kind": "cuda NVIDIA H100 sm_90",
                                  "precision": "bf16"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_render_is_deterministic_whatever_the_batch(registry_url):
    g = Registry(registry_url).load_generator("v1", device="cuda").generator
    seeds = list(range(40))
    labels = labels_for_conditions(g, {"gender": "male", "age": "adult"}, len(seeds))
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32)
    whole = render_faces(g, seeds, psi=0.8, labels=labels, precision="fp32")
    # Deterministic kernels only while rendering: the process's own flags are back afterwards.
    assert flags == (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                     torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    parts = np.concatenate([render_faces(g, seeds[i:i + 7], psi=0.8, labels=labels[i:i + 7], precision="fp32")
                            for i in range(0, len(seeds), 7)])
    np.testing.assert_array_equal(whole, parts)
