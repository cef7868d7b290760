"""How close does the bulk job get to the generator's own speed, and does it stay flat in memory?

    python benchmarks/generate_throughput.py [--quick]

Measured in one run on one machine, with a default DCGAN-64 (random weights: the cost of a
forward pass does not depend on them):

(a) end-to-end faces/s of `ganray generate` writing Parquet to local disk, divided by the
    generator's raw faces/s in one process: the generator a generator actor renders with
    (prepare_for_render in the job's precision, "auto" resolved on this CPU), same batch size,
    forward + uint8 on one torch thread, as render_faces always does on CPU. Goal >= 0.9. The job
    also PNG-encodes every face (ganray.images), so the ratio against forward + PNG encoding in one
    process is the like-for-like one.
(b) N vs 10*N faces: wall-time ratio (goal ~10) and the ratio of peak memory (goal <= 1.2), where
    memory is the summed RSS of the driver and every process of its Ray, sampled every 0.2 s.

Faces/s depend on how much CPU the machine has free, which drifts on a shared machine. CPU
seconds per 1000 faces (summed over the driver and all its Ray processes) do not: they show what
the pipeline costs on top of the forward pass whatever else runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

from _result import BenchmarkRun

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
RESULT_NAME = "generate_throughput"


def raw_faces_per_s(generator, precision: str, batch_size: int, seconds: float,
                    with_png: bool) -> tuple[float, float]:
    """(faces/s, CPU seconds per 1000 faces) of rendering in this process with `generator` as prepared
    for `precision` (the generator actor's form)."""
    from ganray.images import encode_png
    from ganray.models.face import render_faces

    render_faces(generator, list(range(batch_size)), precision=precision)  # warm-up: kernels are built on first use
    faces, start, cpu_start, seed = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        images = render_faces(generator, list(range(seed, seed + batch_size)), precision=precision)
        if with_png:
            for image in images:
                encode_png(image)
        faces += batch_size
        seed += batch_size
    return faces / (time.perf_counter() - start), 1000 * (time.process_time() - cpu_start) / faces


def _processes():
    """This process and all its descendants: the local Ray it started, workers included."""
    import psutil  # ships with Ray (ray/thirdparty_files), importable once ray is imported

    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _total(measure) -> float:
    total = 0.0
    for proc in _processes():
        try:
            total += measure(proc)
        except Exception:  # a worker that exited between listing and reading
            pass
    return total


def cpu_seconds() -> float:
    return _total(lambda proc: sum(proc.cpu_times()[:2]))


class PeakMemory:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2):
        self._interval = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        return int(_total(lambda proc: proc.memory_info().rss))

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self._interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_job(registry_url: str, output: str, count: int, batch_size: int) -> tuple[dict, float, int, float]:
    """(summary, wall seconds, peak RSS bytes, CPU seconds per 1000 faces) of one job run."""
    from ganray.config import GenerateJob, load_config
    from ganray.generate.job import run_generate

    job = load_config(GenerateJob, None, [
        f"registry.url={registry_url}", f"generate.output={output}", "generate.model=v1",
        f"generate.count={count}", "generate.shard_size=1000", "generate.format=parquet",
        f"generate.batch_size={batch_size}",
        "generate.replicas=1", "generate.progress_interval_s=30"])
    with PeakMemory() as memory:
        start, cpu_start = time.perf_counter(), cpu_seconds()
        summary = run_generate(job, log=lambda line: None)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    return summary, wall, memory.peak, 1000 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (2k/20k faces instead of 10k/100k)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="quick" if args.quick else "full")
    small = 2_000 if args.quick else 10_000
    throughput_count = 5 * small  # large enough that starting the actors (a few seconds) hardly counts

    import ray
    import torch

    from ganray.config import DCGANConfig, GenerateConfig
    from ganray.models import build_generator
    from ganray.models.face import prepare_for_render, resolve_precision
    from ganray.registry import Registry

    work = tempfile.mkdtemp(prefix="ganray-bench-generate-")
    try:
        registry = Registry(os.path.join(work, "registry"))
        model = DCGANConfig().model_dump()
        registry.push(build_generator(DCGANConfig(**model), 64).state_dict(), model, 64, {}, {"benchmark": True})
        # Exactly what a generator actor renders with (ganray.generate.pipeline.FaceRenderer): the job's
        # precision ("auto") resolved on this device, the generator prepared for it.
        precision = resolve_precision(GenerateConfig.model_fields["precision"].default, "cpu")
        generator = prepare_for_render(registry.load_generator("v1").generator, precision)

        torch.set_num_threads(1)  # what render_faces uses for the forward pass on CPU anyway
        seconds = 5 if args.quick else 15

        def raw_rates() -> tuple[tuple[float, float], tuple[float, float]]:
            return (raw_faces_per_s(generator, precision, args.batch_size, seconds, with_png=False),
                    raw_faces_per_s(generator, precision, args.batch_size, seconds, with_png=True))

        ray.init(include_dashboard=False, _temp_dir=os.path.join(work, "ray"), log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cpus = int(ray.cluster_resources()["CPU"])
        # A first small job starts Ray's worker processes (each imports torch); later jobs reuse
        # them, as the shards of a long job do. Its wall time is printed as the cold-start cost.
        cold, cold_wall, _, _ = run_job(registry.url, os.path.join(work, "cold"), 1000, args.batch_size)
        small_job, small_wall, small_peak, small_cpu = run_job(
            registry.url, os.path.join(work, "small"), small, args.batch_size)
        large_job, large_wall, large_peak, large_cpu = run_job(
            registry.url, os.path.join(work, "large"), 10 * small, args.batch_size)
        # The raw rates are taken just before and just after the throughput job, and averaged: on
        # a shared machine the CPU available drifts over minutes.
        before = raw_rates()
        job, job_wall, _, job_cpu = run_job(registry.url, os.path.join(work, "throughput"), throughput_count,
                                            args.batch_size)
        after = raw_rates()
        (raw, raw_cpu), (raw_png, raw_png_cpu) = [
            ((b[0] + a[0]) / 2, (b[1] + a[1]) / 2) for b, a in zip(before, after)]
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nDCGAN-64 (random weights), batch {args.batch_size}, 1 torch thread per actor, "
          f"{cpus} CPUs, {precision}, prepared for render, Parquet to local disk\n")
    print(f"{'measurement':<46} {'faces':>8} {'wall s':>8} {'faces/s':>9} {'CPU s/1k':>9} {'peak RSS':>10}")
    print(f"{'raw forward + uint8, one process':<46} {'':>8} {'':>8} {raw:>9.0f} {raw_cpu:>9.2f}   "
          f"(faces/s before {before[0][0]:.0f}, after {after[0][0]:.0f})")
    print(f"{'raw forward + uint8 + PNG encode, one process':<46} {'':>8} {'':>8} {raw_png:>9.0f} "
          f"{raw_png_cpu:>9.2f}   (faces/s before {before[1][0]:.0f}, after {after[1][0]:.0f})")
    print(f"{'job, cold start of Ray workers':<46} {cold['faces']:>8} {cold_wall:>8.1f}")
    for name, summary, wall, cpu, peak in (("job (throughput run)", job, job_wall, job_cpu, None),
                                           ("job, N faces", small_job, small_wall, small_cpu, small_peak),
                                           ("job, 10 N faces", large_job, large_wall, large_cpu, large_peak)):
        peak_text = f"{peak / 2**30:.2f} GiB" if peak else ""
        print(f"{name:<46} {summary['faces']:>8} {wall:>8.1f} {summary['faces_per_s']:>9.0f} {cpu:>9.2f} "
              f"{peak_text:>10}")
    print()
    print(f"(a) job / raw forward:            {job['faces_per_s'] / raw:.2f}   (goal >= 0.9)")
    print(f"    job / raw forward + PNG:      {job['faces_per_s'] / raw_png:.2f}")
    print(f"    CPU per face, raw / job:      {raw_cpu / job_cpu:.2f}   (forward + PNG: {raw_png_cpu / job_cpu:.2f})")
    print(f"(b) wall time 10N / N:            {large_wall / small_wall:.2f}  (goal ~10)")
    # Each job pays a fixed start (planning, starting its generator actors) that does not grow
    # with the count: wall = fixed + faces / rate, solved from the two runs.
    print(f"    fixed start cost per job:     {max((10 * small_wall - large_wall) / 9, 0.0):.1f} s")
    print(f"    peak memory 10N / N:          {large_peak / small_peak:.2f}  (goal <= 1.2)")

    run.settings = {"model": "DCGAN-64, random weights", "batch_size": args.batch_size, "precision": precision,
                    "prepared_for_render": True, "ray_cpus": cpus, "format": "parquet", "counts": {
                        "throughput": throughput_count, "N": small, "10N": 10 * small}}
    run.note(f"DCGAN-64 (random weights), batch {args.batch_size}, {precision} prepared for render (the generator "
             f"actor's form), 1 torch thread per forward pass, {cpus} Ray CPUs, Parquet to local disk. "
             "Raw rates: one process, averaged over just before and just after the throughput job.")
    run.figure("job ÷ raw forward + PNG (prepared generator)", job["faces_per_s"] / raw_png, note="goal >= 0.9")
    run.figure("job ÷ raw forward (prepared generator, no PNG)", job["faces_per_s"] / raw)
    run.figure("job faces/s (throughput run)", job["faces_per_s"], "faces/s", f"{job['faces']} faces")
    run.figure("raw forward + uint8 + PNG, one process", raw_png, "faces/s",
               f"before {before[1][0]:.0f}, after {after[1][0]:.0f}")
    run.figure("raw forward + uint8, one process", raw, "faces/s", f"before {before[0][0]:.0f}, after {after[0][0]:.0f}")
    run.figure("CPU per face, raw forward + PNG ÷ job", raw_png_cpu / job_cpu)
    run.figure("CPU s per 1000 faces: job", job_cpu, "s")
    run.figure("CPU s per 1000 faces: raw forward + PNG", raw_png_cpu, "s")
    run.figure("job cold start (1000 faces, first job)", cold_wall, "s")
    run.figure("wall time 10N ÷ N", large_wall / small_wall, note="goal ~10")
    run.figure("fixed start cost per job", max((10 * small_wall - large_wall) / 9, 0.0), "s")
    run.figure("peak memory 10N ÷ N", large_peak / small_peak, note="goal <= 1.2")
    run.figure("peak RSS, 10N faces", large_peak / 2**30, "GiB")
    run.write()


if __name__ == "__main__":
    main()
