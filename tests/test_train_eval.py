"""Evaluation during training (a train job's `eval:`): FID/KID of G_ema every K images in
metrics.jsonl and the loss-curve PNG, on a real 2-worker Ray Train run; evaluating changes nothing
about training (bit-identical state to a run without it); bad settings exit 2 before Ray."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganray.cli import main as cli
from ganray.config import ConfigError, ExtractorConfig, ImportConfig, TrainJob, load_config
from ganray.data.importer import run_import
from ganray.data.synthetic import ATTRIBUTES, render_face
from ganray.eval import metrics
from ganray.eval.extractors import build_extractor
from ganray.eval.training import TrainingEvaluator
from ganray.models import build_models
from ganray.models.face import labels_for_conditions, render_faces
from ganray.train import checkpoint as ckpt
from ganray.train.loop import evaluation_due
from ganray.train.report import save_loss_plot
from ganray.train.trainer import check_resumable, run_training

REPO = Path(__file__).resolve().parents[1]
RES = 32
SETTINGS = ["run.name=evald", "data.resolution=32", "data.synthetic.count=128", "model.g_width=8",
            "model.d_width=8", "model.z_dim=16", "train.batch_size=16", "train.num_workers=2", "train.log_every=3",
            "train.precision=fp32", "train.max_steps=8", "train.checkpoint_every=8"]
EVAL = ["eval.count=24", "eval.reference_count=32", "eval.kid_subset_size=12", "eval.kid_subsets=4",
        "eval.extractor.pixels_side=8"]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory) -> str:
    src = tmp_path_factory.mktemp("faces")
    for i in range(40):
        Image.fromarray(render_face(1000 + i, RES)[0]).save(src / f"face{i:03d}.png")
    dst = str(tmp_path_factory.mktemp("ref") / "faces")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, min_size=8, blank_std=0, blur_threshold=0))
    return dst


def job(storage: Path, *extra: str) -> TrainJob:
    return load_config(TrainJob, REPO / "configs" / "demo.yaml", [f"run.storage_path={storage}", *SETTINGS, *extra])


def test_evaluation_schedule():
    assert [s for s in range(1, 9) if evaluation_due((s - 1) * 16, s * 16, 64)] == [4, 8]
    assert [s for s in range(1, 9) if evaluation_due((s - 1) * 16, s * 16, 40)] == [3, 5, 8]  # 48, 80, 128
    assert not any(evaluation_due(i, i + 16, None) for i in range(0, 128, 16))


def test_evaluator_numbers_and_no_side_effects(reference, tmp_path):
    evaluator = TrainingEvaluator(job(tmp_path, "eval.every_images=64", f"eval.reference={reference}", *EVAL))
    evaluator.prepare()
    trained = job(tmp_path)
    G, _ = build_models(trained.model, RES, ATTRIBUTES)  # the demo's model conditions on every attribute
    G_ema = copy.deepcopy(G).eval()
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(),
              {k: v.clone() for k, v in G_ema.state_dict().items()})
    result = evaluator(G_ema)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    assert all(torch.equal(v, before[3][k]) for k, v in G_ema.state_dict().items())
    assert not G_ema.training

    # The numbers, from features computed here: the same 24 seeds, the reference's first 32 images.
    extractor = build_extractor(ExtractorConfig(pixels_side=8))
    seeds = list(range(24))
    fake = extractor(render_faces(G_ema, seeds, 1.0, labels_for_conditions(G_ema, {}, 24, seeds=seeds), "fp32"))
    real = evaluator.real
    assert real.shape == (32, 192) and trained.train.precision == "fp32"
    assert result["fid"] == pytest.approx(metrics.fid(real, fake["features"]), rel=1e-6)
    assert result["kid_mean"] == pytest.approx(metrics.kid(real, fake["features"], 12, 4)["kid_mean"], rel=1e-6)


def test_training_with_evaluation_reports_it_and_trains_identically(reference, tmp_path):
    with_eval = tmp_path / "with"
    args = [f"run.storage_path={with_eval}", *SETTINGS, "eval.every_images=64", f"eval.reference={reference}", *EVAL]
    assert cli(["train", "--config", str(REPO / "configs" / "demo.yaml"),
                *[a for s in args for a in ("--set", s)]]) == 0
    plain = run_training(job(tmp_path / "without"))

    run = with_eval / "evald"
    rows = [json.loads(line) for line in (run / ckpt.METRICS_FILE).read_text().splitlines()]
    evaluated = [r for r in rows if "fid" in r]
    # 16 images per step: every 64 images is steps 4 and 8 (4 is no log_every step: reported for the evaluation).
    assert [(r["step"], r["images_seen"]) for r in evaluated] == [(4, 64), (8, 128)]
    assert all(r["fid"] > 0 and np.isfinite(r["kid_mean"]) and r["kid_std"] >= 0 and r["eval_s"] > 0
               for r in evaluated)
    assert evaluated[0]["fid"] != evaluated[1]["fid"]  # G_ema moved between them
    assert not any("fid" in r for r in map(json.loads, Path(plain.metrics_jsonl).read_text().splitlines()))
    assert Image.open(run / ckpt.LOSS_PLOT_FILE).size[0] > Image.open(plain.loss_png).size[0]  # a third panel

    # Evaluating drew no randomness and changed no weights: the same training state, bit for bit.
    a = ckpt.load_state(str(run / ckpt.checkpoint_dir_name(8)))
    b = ckpt.load_state(plain.checkpoint)
    assert ckpt.state_digest(a) == ckpt.state_digest(b)
    assert ckpt.read_meta(str(run / ckpt.checkpoint_dir_name(8)))["state_digest"] == \
        ckpt.read_meta(plain.checkpoint)["state_digest"]

    # Evaluation settings may change on a resume (they do not change training); the model may not.
    resumed = job(with_eval, "eval.every_images=32", f"eval.reference={reference}", "eval.count=30")
    assert check_resumable(resumed, a["manifest_hash"]) is not None
    with pytest.raises(ConfigError, match="model.g_width"):
        check_resumable(job(with_eval, "model.g_width=16"), a["manifest_hash"])


def test_loss_plot_gets_an_evaluation_panel(tmp_path):
    history = [{"step": s, "loss_D": 1.0, "loss_G": 2.0, "D_real": 0.6, "D_fake": 0.4} for s in range(1, 5)]
    assert save_loss_plot(history, str(tmp_path / "a.png")) == ["losses", "discriminator outputs"]
    history[3].update(fid=3.0, kid_mean=0.1, kid_std=0.01)
    assert save_loss_plot(history, str(tmp_path / "b.png"))[-1].startswith("evaluation")


def test_bad_evaluation_settings_exit_2_before_training(reference, tmp_path, capsys):
    def train(*extra: str) -> int:
        args = [f"run.storage_path={tmp_path}", *SETTINGS, "eval.every_images=64", *extra]
        return cli(["train", "--config", str(REPO / "configs" / "demo.yaml"), *[a for s in args for a in ("--set", s)]])

    assert train() == 2  # synthetic training data, no eval.reference
    assert "needs eval.reference" in capsys.readouterr().err
    assert train("eval.reference=/nonexistent/ref") == 2
    assert "no imported dataset" in capsys.readouterr().err
    assert train(f"eval.reference={reference}", "data.resolution=64") == 2
    assert "holds 32px images" in capsys.readouterr().err
    assert train(f"eval.reference={reference}", "eval.reference_count=500") == 2
    assert "500 images asked" in capsys.readouterr().err
    assert not (tmp_path / "evald").exists()
    with pytest.raises(ConfigError, match="go together"):  # the Python API: the setting without an evaluator
        run_training(job(tmp_path, "eval.every_images=64", f"eval.reference={reference}"))
