"""What a person looks at during training: a sample grid from fixed seeds, and the loss curves."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from ganray.config import TrainJob
from ganray.models.face import render_faces, sample_precision


def grid_labels(attributes: dict[str, list[str]], condition_names: list[str], count: int) -> torch.Tensor:
    """Labels that walk through the attribute combinations (mixed radix), so a grid shows them all."""
    sizes = [len(attributes[name]) for name in condition_names]
    labels = torch.zeros(count, len(sizes), dtype=torch.long)
    for i in range(count):
        rest = i
        for a, n in enumerate(sizes):
            labels[i, a] = rest % n
            rest //= n
    return labels


def image_grid(images: np.ndarray) -> Image.Image:
    """(N, H, W, 3) uint8 -> one square-ish grid image."""
    n, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return Image.fromarray(canvas)


def save_sample_grid(G_ema: torch.nn.Module, job: TrainJob, attributes: dict, path: str) -> None:
    seeds = list(range(job.train.sample_seeds))  # fixed seeds: grids of successive checkpoints compare
    labels = None
    if job.model.conditional:
        labels = grid_labels(attributes, list(G_ema.condition_names), len(seeds))
    precision = sample_precision(job.train.precision, next(G_ema.parameters()).device)
    images = render_faces(G_ema, seeds, psi=1.0, labels=labels, precision=precision)
    image_grid(images).save(path)


def save_loss_plot(history: list[dict[str, Any]], path: str) -> list[str]:
    """Loss curves and D's outputs; with training-time evaluation (rows with `fid`), a third panel of
    FID and KID over steps. Returns the panels' titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if "loss_D" in r]
    evaluated = [r for r in history if "fid" in r]
    fig, axes = plt.subplots(1, 3 if evaluated else 2, figsize=(15 if evaluated else 10, 3.6))
    ax_loss, ax_d = axes[0], axes[1]
    if rows:
        steps = [r["step"] for r in rows]
        ax_loss.plot(steps, [r["loss_D"] for r in rows], label="D loss")
        ax_loss.plot(steps, [r["loss_G"] for r in rows], label="G loss")
        ax_d.plot(steps, [r["D_real"] for r in rows], label="D(x)")
        ax_d.plot(steps, [r["D_fake"] for r in rows], label="D(G(z))")
    panels = [(ax_loss, "losses"), (ax_d, "discriminator outputs")]
    if evaluated:
        ax_fid = axes[2]
        steps = [r["step"] for r in evaluated]
        ax_fid.plot(steps, [r["fid"] for r in evaluated], marker="o", label="FID")
        ax_fid.set_ylabel("FID")
        ax_kid = ax_fid.twinx()  # KID is orders of magnitude smaller: its own axis
        ax_kid.errorbar(steps, [r["kid_mean"] for r in evaluated], yerr=[r["kid_std"] for r in evaluated],
                        color="tab:orange", marker="s", capsize=2, label="KID")
        ax_kid.set_ylabel("KID")
        ax_kid.legend(loc="upper right")
        panels.append((ax_fid, "evaluation (G_ema, eval.extractor)"))
    for ax, title in panels:
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left" if evaluated and ax is panels[-1][0] else "best")
    for r in history:
        if r.get("event") == "resume":
            for ax, _ in panels:
                ax.axvline(r["step"], color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [title for _, title in panels]
