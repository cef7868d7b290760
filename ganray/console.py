"""What a person sees on the console while a job runs.

- One live progress line per long job (`ProgressLine`): redrawn in place on a terminal; in a log
  file or CI (not a terminal), a full line at most every `interval_s` and one at the end.
- Ray's internal chatter (worker stdout, Ray Train's and Ray Data's INFO/WARNING logs, the driver's
  Ray logger, and the native lines Ray's C++ core worker in the driver writes to stderr) goes to the
  log files of the Ray session (`<session>/logs/`), not to the console; `--verbose` (or
  GANRAY_VERBOSE=1) brings it back. ganray's own messages and Python warnings raised by ganray code
  stay on the console.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

VERBOSE_ENV = "GANRAY_VERBOSE"
# Ray Data reads its logging config from the file this variable names, at import
# (ray/data/_internal/logging.py). Ours is Ray Data's default with the console handler raised to
# ERROR: its INFO lines ("Starting execution of Dataset ...") and warnings such as "Progress bars
# disabled" still go to ray-data.log in the session's log folder.
_RAY_DATA_LOGGING_ENV = "RAY_DATA_LOGGING_CONFIG"
RAY_DATA_QUIET_LOGGING = Path(__file__).resolve().parent / "ray_data_quiet_logging.yaml"
DRIVER_LOG_NAME = "ganray-driver.log"
NATIVE_STDERR_NAME = "ganray-driver.err"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "no")


def configure(verbose_flag: bool = False) -> None:
    """Call once at the start of a command, before Ray Data is imported."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return
    os.environ.setdefault(_RAY_DATA_LOGGING_ENV, str(RAY_DATA_QUIET_LOGGING))  # a user's own config wins


def ray_init_options() -> dict:
    """ray.init options for the console: worker output stays in the session's log files unless verbose."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}


def route_driver_logs(session_logs_dir: str | None) -> str | None:
    """Send the driver's Ray log records to `<session logs>/ganray-driver.log`; returns its path."""
    if verbose() or not session_logs_dir:
        return None
    path = os.path.join(session_logs_dir, DRIVER_LOG_NAME)
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s -- %(message)s"))
    # "ray" and "ray.serve" (which does not propagate; Serve sets it up when ray.serve is imported,
    # so `ganray serve` imports it before starting Ray). Ray Data's logger: see configure().
    for name in ("ray", "ray.serve"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        for h in logger.handlers:  # Ray's own console handlers: errors only
            if h is not handler and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.ERROR)
    return path


def route_native_stderr(session_logs_dir: str | None) -> str | None:
    """Point file descriptor 2 at `<session logs>/ganray-driver.err`; Python's sys.stderr stays on the console.

    The driver's core worker logs ERROR lines both to its log file (python-core-driver-*.log) and to
    fd 2, and Ray offers no setting for the second (src/ray/util/logging.cc). Ray Data starts every
    actor-pool worker with its transform and context by ObjectRef and with restarts on, so each job
    meets core_worker.cc's "constructor arguments in the object store and max_restarts > 0" error.
    Call after ray.init, in a command's own process only; returns the file's path.
    """
    if verbose() or not session_logs_dir:
        return None
    old = sys.stderr
    try:
        python_on_fd2 = old is not None and old.fileno() == 2
        old.flush()
        console_fd = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no fd 2, or sys.stderr is not a file: leave both
        return None
    path = os.path.join(session_logs_dir, NATIVE_STDERR_NAME)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    if not python_on_fd2:
        os.close(console_fd)
        return path
    new = os.fdopen(console_fd, "w", buffering=1, encoding=old.encoding, errors=old.errors)
    sys.stderr = new
    # Handlers made on the old sys.stderr (Ray's, Serve's: errors only, see route_driver_logs) follow it.
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", ()):
            if isinstance(h, logging.StreamHandler) and h.stream is old:
                h.setStream(new)
    return path


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class ProgressLine:
    """One live line: `label done/total unit  rate  extra  ETA`.

    Rate and ETA count only the work done since the first update, over the time since then (a
    resumed job starts part-way; start-up time is not work).
    """

    def __init__(self, label: str, total: int, unit: str, *, show_rate: bool = True,
                 stream: TextIO | None = None, interval_s: float = 10.0, redraw_s: float = 0.2):
        self.label, self.total, self.unit, self.show_rate = label, total, unit, show_rate
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval_s = redraw_s if self.live else interval_s
        self.started = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, done) at the first update
        self.done = 0
        self.extra = ""
        self._last_draw = float("-inf")
        self._drawn_state: tuple | None = None  # (done, extra) of the last drawn line
        self._width = 0

    def update(self, done: int, *, extra: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        self.done, self.extra = done, extra
        if force or now - self._last_draw >= self.interval_s:
            self._last_draw = now
            self._draw(self.text())

    def text(self) -> str:
        now = time.monotonic()
        parts = [f"{self.label} {self.done}/{self.total} {self.unit}"]
        t0, done0 = self.first or (now, self.done)
        progressed, spent = self.done - done0, now - t0
        if self.show_rate and progressed > 0 and spent > 0:
            parts.append(f"{progressed / spent:.1f} {self.unit}/s")
        if self.extra:
            parts.append(self.extra)
        if self.done >= self.total:
            parts.append(f"done in {_duration(now - self.started)}")
        elif progressed > 0 and spent > 0:
            parts.append(f"ETA {_duration(spent / progressed * (self.total - self.done))}")
        return "  ".join(parts)

    def message(self, text: str) -> None:
        """A line of its own above the live line (a resume, a warning)."""
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        self._drawn_state = (self.done, self.extra)
        if self.live:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (unless that line is already out, in a log) and end the line."""
        if self.live or self._drawn_state != (self.done, self.extra):
            self._draw(self.text())
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
