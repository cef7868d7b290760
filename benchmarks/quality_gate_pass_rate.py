"""Pass rates of the face-quality gate (default thresholds) on real and built-in faces.

    .venv/bin/python benchmarks/quality_gate_pass_rate.py [--utkface ../shared/datasets/utkface/utkface-200px.zip]

Built-in faces: faces 0..N-1 at 32 and 64 px. UTKFace (when the ZIP is there; read-only, never
copied): N images picked by a fixed seed, resized to 64 px and at 200 px. Prints, per set, the
share that passes with the Haar detector on and with it off, and the rejects by reason.
"""
from __future__ import annotations

import argparse
import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ganray.config import QualityGateConfig
from ganray.data.synthetic import render_face
from ganray.labels.quality import QualityGate

from _result import BenchmarkRun

RESULT_NAME = "quality_gate_pass_rate"

# ../shared beside the checkout, as tests/conftest.py finds it
DEFAULT_ZIP = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "utkface" / "utkface-200px.zip"


def rates(name: str, images: np.ndarray) -> list[list]:
    """Rows (set, detector, pass rate, passed, images, rejects by reason), printed as they come."""
    rows = []
    for detector in ("haar", "none"):
        verdicts = QualityGate(QualityGateConfig(detector=detector)).check(images)
        reasons = Counter(r for r in verdicts.reasons if r)
        print(f"{name:<28} detector {detector:<5} pass {verdicts.passed.mean():.3f} "
              f"({verdicts.passed.sum()}/{len(images)})  rejects {dict(reasons)}")
        rows.append([name, detector, float(verdicts.passed.mean()), int(verdicts.passed.sum()), len(images),
                     ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) or "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--utkface", default=str(DEFAULT_ZIP))
    args = parser.parse_args()
    run = BenchmarkRun(RESULT_NAME, mode="full" if Path(args.utkface).exists() else "built-in faces only")
    rows = []
    for res in (32, 64):
        rows += rates(f"built-in faces {res} px", np.stack([render_face(i, res)[0] for i in range(args.count)]))
    if Path(args.utkface).exists():
        with zipfile.ZipFile(args.utkface) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith((".jpg", ".png")))
            picked = np.random.default_rng(0).choice(len(names), size=min(args.count, len(names)), replace=False)
            raw = [Image.open(io.BytesIO(z.read(names[i]))).convert("RGB") for i in sorted(picked)]
        for side in (64, 200):
            rows += rates(f"UTKFace {side} px", np.stack([np.asarray(im.resize((side, side), Image.BICUBIC)) for im in raw]))
    else:
        print(f"UTKFace not found at {args.utkface}: skipped")
        run.note("UTKFace was not on this machine: built-in faces only.")
    run.settings = {"count": args.count}
    run.note("Default quality-gate thresholds; N images per set (built-in faces 0..N-1; UTKFace picked by a "
             "fixed seed).")
    for name, detector, rate, *_ in rows:
        run.figure(f"{name}, detector {detector}: pass rate", rate)
    run.table("Pass rates and rejects", ["set", "detector", "pass rate", "passed", "images", "rejects by reason"],
              rows)
    run.write()


if __name__ == "__main__":
    main()
