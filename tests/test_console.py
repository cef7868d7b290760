"""The console: one progress line per long job, and what `--verbose` changes."""
from __future__ import annotations

import io

from ganray.console import ProgressLine


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_in_a_log_prints_whole_lines_and_no_duplicate_at_the_end():
    out = io.StringIO()
    line = ProgressLine("generate:", 4, "shards", stream=out, interval_s=3600)
    line.update(1, extra="a")          # the first update is always drawn
    line.update(2, extra="b")          # inside the interval: not drawn
    line.update(4, extra="c", force=True)
    line.close()                       # the final state is already out: not again
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("generate: 1/4 shards") and lines[0].endswith("a")
    assert lines[1].startswith("generate: 4/4 shards") and "c" in lines[1] and "done in" in lines[1]


def test_progress_line_on_a_terminal_redraws_one_line_in_place():
    out = FakeTTY()
    line = ProgressLine("train demo:", 100, "steps", stream=out, redraw_s=0)
    for step in (10, 20, 30):
        line.update(step, extra=f"loss {step}")
    line.message("[ganray] a message on its own line")
    line.update(100)
    line.close()
    text = out.getvalue()
    assert text.count("\n") == 2  # the message, and the end of the live line
    last = text.rsplit("\r", 1)[-1]
    assert last.startswith("train demo: 100/100 steps") and last.endswith("\n")
    assert "ETA" in text and "steps/s" in text


def test_rate_and_eta_count_only_work_since_the_first_update():
    out = io.StringIO()
    line = ProgressLine("generate:", 10, "shards", stream=out, interval_s=0)
    line.update(8)  # a resumed job: 8 shards were done before this run
    assert "ETA" not in line.text() and "/s" not in line.text()


def test_verbose_brings_ray_output_back_and_quiet_routes_it_to_files(monkeypatch, tmp_path):
    import logging

    import yaml

    from ganray import console

    for key in (console.VERBOSE_ENV, "RAY_DATA_LOGGING_CONFIG"):
        monkeypatch.setenv(key, "")  # records the value to restore, including "unset"
        monkeypatch.delenv(key)
    console.configure(verbose_flag=False)
    assert console.ray_init_options() == {"log_to_driver": False, "logging_level": logging.ERROR}
    ray_data_config = yaml.safe_load(open(__import__("os").environ["RAY_DATA_LOGGING_CONFIG"]))
    assert ray_data_config["handlers"]["console"]["level"] == "ERROR"
    assert ray_data_config["handlers"]["file"]["filename"] == "ray-data.log"  # still written in full

    loggers = [logging.getLogger("ray"), logging.getLogger("ray.serve")]
    before = {lg.name: list(lg.handlers) for lg in loggers}
    try:
        path = console.route_driver_logs(str(tmp_path))
        assert path == str(tmp_path / console.DRIVER_LOG_NAME)
        loggers[0].warning("a Ray warning")
        loggers[1].info("a Serve line")
        for lg in loggers:
            for h in lg.handlers:
                h.flush()
        written = (tmp_path / console.DRIVER_LOG_NAME).read_text()
        assert "a Ray warning" in written and "a Serve line" in written
    finally:
        for lg in loggers:
            for h in lg.handlers[:]:
                if h not in before[lg.name]:
                    lg.removeHandler(h)
                    h.close()

    console.configure(verbose_flag=True)
    assert console.verbose() and console.ray_init_options() == {"log_to_driver": True}
    assert console.route_driver_logs(str(tmp_path)) is None


ACTOR_POOL_JOB = """
import sys
from ganray import console
console.configure(verbose_flag=False)
import ray, ray.data
from ganray.runtime import init_ray

class AddOne:
    def __call__(self, batch):
        return {"id": batch["id"] + 1}

init_ray(num_cpus=2)
rows = ray.data.range(4, override_num_blocks=2).map_batches(
    AddOne, batch_size=2, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1).count()
print("python's stderr is still the console", file=sys.stderr)
print("rows", rows)
"""


def test_driver_core_worker_errors_go_to_the_session_logs_not_the_console(tmp_path):
    # Ray Data starts pool actors with ObjectRef arguments and restarts on: the driver's core worker
    # then writes a core_worker.cc ERROR line to fd 2 (and to its own log file) once per process.
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    from ganray import console

    env = {k: v for k, v in os.environ.items()
           if k not in (console.VERBOSE_ENV, "RAY_ADDRESS", "RAY_DATA_LOGGING_CONFIG")}
    ray_tmp = tempfile.mkdtemp(prefix="ganray-console-")  # short socket paths
    env.update(TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    try:
        proc = subprocess.run([sys.executable, "-c", ACTOR_POOL_JOB], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        seen = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "rows 4" in proc.stdout, seen[-4000:]
        assert "core_worker.cc" not in seen and "constructor arguments" not in seen, seen
        assert "python's stderr is still the console" in proc.stderr
        logs = next(line.split()[3] for line in proc.stdout.splitlines() if line.startswith("[ganray] Ray logs: "))
        native = open(os.path.join(logs, console.NATIVE_STDERR_NAME)).read()
        assert "constructor arguments in the object store" in native, native
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
