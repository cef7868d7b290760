"""Training progress for the console: rank 0 posts its reported metrics to a small actor that the
driver reads twice a second to draw one live line (ganray.console.ProgressLine).

Ray Train V2 runs the workers' reports through its controller actor, not the driver, so the driver
has no per-report hook of its own; a zero-CPU actor is the smallest channel that works the same on
one machine and on a cluster. Posting is fire-and-forget: a slow console never slows training.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import ray

from ganray.console import ProgressLine


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.metrics: dict[str, Any] | None = None
        self.messages: list[str] = []

    def post(self, metrics: dict[str, Any]) -> None:
        self.metrics = metrics

    def say(self, text: str) -> None:
        self.messages.append(text)

    def read(self) -> tuple[dict[str, Any] | None, list[str]]:
        messages, self.messages = self.messages, []
        return self.metrics, messages


def describe(metrics: dict[str, Any]) -> str:
    parts = [f"{metrics['images_per_s']:.0f} img/s"] if metrics.get("images_per_s") else []
    for key in ("loss_D", "loss_G"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.3f}")
    return "  ".join(parts)


def run_with_progress(fit: Callable[[], Any], board, line: ProgressLine, poll_s: float = 0.5) -> Any:
    """Run `fit` in a thread while drawing `board`'s metrics on `line`; returns what fit returned."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="ganray-train-fit", daemon=True)
    thread.start()
    last_step = None
    while True:
        thread.join(poll_s)
        metrics, messages = ray.get(board.read.remote())
        for text in messages:
            line.message(text)
        if metrics and metrics.get("step") != last_step:
            last_step = metrics["step"]
            line.update(int(metrics["step"]), extra=describe(metrics))
        if not thread.is_alive():
            break
    if last_step is not None:
        line.close()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
