"""Drawing the pairs: which two faces a rater sees next, and on which side each goes.

mode models: the two contestants (registry versions or generated outputs) are the pair compared
fewest times so far in this database (ties broken at random), so every pair of contestants gets
about the same number of judgments; with same_seed both model faces come from one seed.
mode real: the contestant shown least so far against a random real face.
The left/right sides are a coin flip per pair (stored, so a side bias shows in the results).
"""
from __future__ import annotations

import itertools
import random
import threading
from collections import Counter
from typing import Any

from ganray.config import HumanEvalJob
from ganray.eval.human import faces as face_sources
from ganray.eval.human.store import JudgmentStore
from ganray.images import encode_png
from ganray.registry import Registry

QUESTION = "Which face looks more real?"


class HumanEvalSession:
    def __init__(self, job: HumanEvalJob):
        cfg = job.human
        self.cfg = cfg
        seeds = range(cfg.seed_offset, cfg.seed_offset + cfg.seed_count)
        contestants: list = []
        if cfg.models:
            registry = Registry(job.registry.url)
            contestants += [face_sources.model_faces(registry, ref, cfg.psi, cfg.precision, seeds) for ref in cfg.models]
        contestants += [face_sources.output_faces(url, cfg.max_rows) for url in cfg.generated]
        items = [c.item for c in contestants]
        if len(set(items)) != len(items):
            raise face_sources.HumanEvalError(f"two sources are the same item: {items} (an alias and the version "
                                              "it names?)")
        self.real = face_sources.dataset_faces(cfg.real, cfg.max_rows) if cfg.mode == "real" else None
        self.resolution = face_sources.check_one_resolution(contestants + ([self.real] if self.real else []))
        self.contestants = contestants
        self.store = JudgmentStore(cfg.db)
        self._rng = random.Random(cfg.pair_seed)
        self._lock = threading.Lock()  # the draw (rng, shown counts) is one critical section
        # Rendering too: ganray.models.face sets torch's thread count around a render (process-wide state).
        self._render_lock = threading.Lock()
        self._shown: Counter = Counter()  # pairs issued per contestant pair (or contestant, mode real)

    def describe(self) -> dict[str, Any]:
        return {"mode": self.cfg.mode, "question": QUESTION, "items": [c.item for c in self.contestants]
                + ([self.real.item] if self.real else []), "resolution": self.resolution}

    def _draw(self) -> tuple[Any, int, Any, int, bool]:
        with self._lock:
            if self.cfg.mode == "models":
                options = list(itertools.combinations(range(len(self.contestants)), 2))
                fewest = min(self._shown[o] for o in options)
                a, b = self._rng.choice([o for o in options if self._shown[o] == fewest])
                self._shown[(a, b)] += 1
                first, second = self.contestants[a], self.contestants[b]
                index_a = self._rng.randrange(first.count())
                index_b = index_a if self.cfg.same_seed and index_a < second.count() \
                    else self._rng.randrange(second.count())
            else:
                fewest = min(self._shown[i] for i in range(len(self.contestants)))
                a = self._rng.choice([i for i in range(len(self.contestants)) if self._shown[i] == fewest])
                self._shown[a] += 1
                first, second = self.contestants[a], self.real
                index_a, index_b = self._rng.randrange(first.count()), self._rng.randrange(second.count())
            swap = self._rng.random() < 0.5
        return first, index_a, second, index_b, swap

    def issue_pair(self, rater: str) -> str:
        """Draw a pair, render both faces, store it as issued to `rater`; returns the pair id."""
        first, index_a, second, index_b, swap = self._draw()
        with self._render_lock:
            sides = [(source.item, source.reference(index), encode_png(source.face(index)))
                     for source, index in ((first, index_a), (second, index_b))]
        if swap:
            sides.reverse()
        return self.store.issue(self.cfg.mode, rater, sides[0], sides[1])
