"""Evaluation during training: FID and KID of G_ema every `eval.every_images` images (a train job's `eval:`).

The training room may not import this one (they are siblings): `ganray train` (the CLI, above both)
builds a `TrainingEvaluator` and hands it to `ganray.train.trainer.run_training`, which calls
`prepare()` on the driver once Ray is up (reference features, through the eval job's cache beside
the dataset's manifest) and ships the prepared evaluator to the workers; rank 0 calls it with G_ema
(the interface is `ganray.train.loop.GeneratorEvaluator`).

What a call computes: G_ema's faces for the fixed seeds seed_offset .. seed_offset + count - 1 (open
conditions drawn from each seed, as `ganray generate` draws them; psi 1; fp32 when training in fp32,
else bf16), features from the configured extractor in this process (no Ray Data: it runs inside
the train worker), then FID and KID (metrics.kid with its own numpy generator, seed 0) against the
reference's first `reference_count` images. It draws nothing from torch's, python's or numpy's
global random state, and leaves G_ema untouched, so a run that evaluates trains bit-identically
to one that does not (tested), and resumes exactly.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ganray import storage
from ganray.config import TrainEvalConfig, TrainJob
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor, extractor_identity
from ganray.eval.job import EvalError, check_extractor, reference_features, reference_manifest
from ganray.models.face import labels_for_conditions, render_faces, sample_precision


class TrainingEvaluator:
    """Built (and checked) on the driver before Ray starts; `prepare()` there with Ray up; called on rank 0."""

    def __init__(self, job: TrainJob):
        cfg: TrainEvalConfig = job.eval
        if cfg.every_images is None:
            raise EvalError("eval.every_images is not set: training-time evaluation is off")
        self.cfg = cfg
        self.reference = storage.normalize_url(cfg.reference or job.data.url)
        self.train_precision = job.train.precision  # resolved on rank 0's device, where faces are rendered
        # Everything that can be checked without Ray is checked here, before training starts.
        self.manifest = reference_manifest(self.reference)
        if self.manifest["resolution"] != job.data.resolution:
            raise EvalError(f"eval.reference {self.reference} holds {self.manifest['resolution']}px images; the "
                            f"model trains at data.resolution {job.data.resolution}px")
        available = sum(int(s.get("rows", 0)) for s in self.manifest["shards"])
        if available < cfg.reference_count:
            raise EvalError(f"eval.reference_count: {cfg.reference_count} images asked, but {self.reference} "
                            f"holds {available}")
        if cfg.extractor.name == "inception_v3":
            check_extractor(cfg.extractor)  # a missing or mismatching weights file fails now, not mid-run
        self.identity = extractor_identity(cfg.extractor)
        self.real: np.ndarray | None = None
        self._extractor = None

    def prepare(self) -> None:
        """Driver, Ray up: the reference's features (from the cache when it holds them)."""
        arrays, _ = reference_features(self.reference, self.manifest, self.cfg.reference_count, self.cfg.extractor)
        self.real = arrays["features"]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_extractor": None}  # the network is built where it runs

    def features(self, generator: torch.nn.Module) -> np.ndarray:
        if self._extractor is None:
            self._extractor = build_extractor(self.cfg.extractor)
        batch, parts = self.cfg.extractor.batch_size, []
        precision = sample_precision(self.train_precision, next(generator.parameters()).device)
        for start in range(self.cfg.seed_offset, self.cfg.seed_offset + self.cfg.count, batch):
            seeds = list(range(start, min(start + batch, self.cfg.seed_offset + self.cfg.count)))
            labels = labels_for_conditions(generator, {}, len(seeds), seeds=seeds)
            parts.append(self._extractor(render_faces(generator, seeds, 1.0, labels, precision))["features"])
        return np.concatenate(parts)

    def __call__(self, generator: torch.nn.Module) -> dict[str, float]:
        if self.real is None:
            raise RuntimeError("TrainingEvaluator.prepare() was not called")
        fake = self.features(generator)
        kid = metrics.kid(self.real, fake, self.cfg.kid_subset_size, self.cfg.kid_subsets)
        return {"fid": metrics.fid(self.real, fake), "kid_mean": kid["kid_mean"], "kid_std": kid["kid_std"]}

    def describe(self) -> str:
        note = "" if self.identity["comparable_to_published"] else " (not comparable to published FID)"
        return (f"FID/KID every {self.cfg.every_images} images: {self.cfg.count} G_ema faces vs "
                f"{self.cfg.reference_count} images of {self.reference}, extractor {self.identity['name']}{note}")
