"""StyleGAN2-ADA training: the augmentation pipeline, ADA's p, lazy R1, path length, and a tiny
StyleGAN2 run (ADA, lazy R1 and path length on) that is killed and resumed into the same run.
The unit tests drive `GANSteps` in-process (no Ray); the last test runs on the session's real Ray."""
from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import pytest
import torch
from test_train import assert_same_training_state, history, tiny_job

from conftest import newest_train_worker, wait_for_registered_checkpoint
from ganray.config import ConfigError, DCGANConfig, StyleGAN2Config, TrainConfig, load_config, TrainJob
from ganray.models import build_models
from ganray.train import checkpoint as ckpt
from ganray.train import steps as steps_module
from ganray.train.augment import PIPELINES, augment, resample
from ganray.train.steps import GANSteps
from ganray.train.trainer import run_training

TINY_SG2 = dict(z_dim=16, w_dim=16, embed_dim=8, mapping_layers=2, channel_base=256, channel_max=16)


# ---------------------------------------------------------------------------------------------
# The augmentation pipeline


def test_p_zero_passes_images_through_and_p_one_changes_every_image():
    torch.manual_seed(0)
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    for name in PIPELINES:
        assert torch.equal(augment(images, name, 0.0), images), name
    changed = augment(images, "bgc", 1.0)
    assert changed.shape == images.shape
    assert all(not torch.equal(changed[i], images[i]) for i in range(6))
    with pytest.raises(ValueError, match="unknown augmentation pipeline 'fancy'"):
        augment(images, "fancy", 0.5)


def test_augmentation_is_differentiable_in_the_images():
    images = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    torch.manual_seed(1)
    augment(images, "bgc", 1.0).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_blit_moves_pixels_exactly_and_geometry_is_exact():
    torch.manual_seed(2)
    images = torch.rand(8, 3, 16, 16)
    moved = augment(images, "blit", 1.0)
    # Flips, quarter turns and integer shifts (with mirrored borders) only move pixels: no new values.
    for before, after in zip(images, moved):
        assert set(after.flatten().tolist()) <= set(before.flatten().tolist())
    flip = torch.tensor([[[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    quarter = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])
    shift = torch.tensor([[[1.0, 0.0, 3.0], [0.0, 1.0, 0.0]]])
    x = images[:1]
    assert torch.equal(resample(x, flip), x.flip(-1))
    assert torch.equal(resample(x, quarter), torch.rot90(x, 1, dims=(2, 3)))
    # Inside a bf16 autocast region (as in a bf16 D step) coordinates stay exact, even at 512 px.
    large = torch.rand(2, 3, 512, 512)
    rng = torch.get_rng_state()
    outside = augment(large, "blit", 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.set_rng_state(rng)
        assert torch.equal(augment(large, "blit", 1.0), outside)
    # Shift by 3: output column j reads column j + 3; the last 3 columns mirror the border.
    shifted = resample(x, shift)
    assert torch.equal(shifted[..., :13], x[..., 3:])
    assert torch.equal(shifted[..., 13:], x[..., 13:].flip(-1))


def test_color_keeps_geometry_and_saturation_keeps_gray():
    torch.manual_seed(3)
    gray = torch.rand(4, 1, 8, 8).expand(4, 3, 8, 8) * 2 - 1
    out = augment(gray, "color", 1.0)
    # Brightness, contrast and saturation act on each pixel's colour alone: gray stays gray.
    assert torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    assert not torch.equal(out, gray)


# ---------------------------------------------------------------------------------------------
# GANSteps: ADA's p, lazy R1, path length


class SignD(torch.nn.Module):
    """A toy D whose logits have the sign of `self.sign` on every image (and a bias to train)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.sign = 1.0

    def forward(self, images, labels=None):
        return self.sign * (images.flatten(1).square().mean(1) + 1.0) + 0 * self.bias


def dcgan_steps(D: torch.nn.Module | None = None, **train) -> GANSteps:
    torch.manual_seed(0)
    G, D_built = build_models(DCGANConfig(g_width=8, d_width=8, z_dim=16), 32, None)
    cfg = TrainConfig(**{"batch_size": 8, "num_workers": 1, "precision": "fp32", **train})
    return GANSteps(G, D or D_built, copy.deepcopy(G).eval(), cfg, 16, torch.device("cpu"))


def reals(i: int) -> torch.Tensor:
    return torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1


ADA = dict(augment="bgc", augment_p=0.5, ada_target=0.6, ada_interval=2, ada_kimg=0.16)  # 0.1 per adjustment


def test_ada_p_moves_towards_its_target_and_is_clamped():
    D = SignD()
    steps = dcgan_steps(D, **ADA)
    ps = []
    for i in range(12):
        D.sign = 1.0 if i < 8 else -1.0  # D calls every real real (r_t = 1 > 0.6), then none (r_t = -1)
        steps.discriminator_step(reals(i), None, d_index=i)
        ps.append(round(steps.augment.p, 9))
    # Every 2nd minibatch p moves by batch * interval / (ada_kimg * 1000) = 16 / 160 = 0.1 towards the target.
    assert ps == [0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8, 0.9, 0.9, 0.8, 0.8, 0.7]
    assert steps.augment.rt == -1.0
    D.sign = 1.0
    for i in range(12, 24):
        steps.discriminator_step(reals(i), None, d_index=i)
    assert steps.augment.p == 1.0  # clamped
    fixed = dcgan_steps(SignD(), **{**ADA, "ada_target": None})
    for i in range(4):
        fixed.discriminator_step(reals(i), None, d_index=i)
    assert fixed.augment.p == 0.5 and fixed.augment.rt is None


def test_ada_state_survives_a_resume_mid_interval():
    """Saved after an odd minibatch (statistics pending) and resumed: the same p and the same D."""
    def run(d_indices, steps):
        for i in d_indices:
            steps.discriminator_step(reals(i), None, d_index=i)

    ada = {**ADA, "ada_interval": 3, "ada_kimg": 0.24}  # 0.1 per adjustment
    whole = dcgan_steps(**ada)
    torch.manual_seed(5)
    run(range(10), whole)

    first = dcgan_steps(**ada)
    torch.manual_seed(5)
    run(range(5), first)
    saved, rng = copy.deepcopy(first.optimizer_state()), torch.get_rng_state()
    d_weights = copy.deepcopy(first.D.state_dict())
    assert saved["ada"]["count"] == 2 * 8  # minibatches 3 and 4 wait for the next adjustment
    resumed = dcgan_steps(**ada)
    resumed.D.load_state_dict(d_weights)
    resumed.load_optimizer_state(saved)
    torch.set_rng_state(rng)
    run(range(5, 10), resumed)

    assert resumed.augment.state_dict() == whole.augment.state_dict()
    assert whole.augment.p not in (0.0, 0.5, 1.0)  # it moved, and is not stuck at a bound
    assert all(torch.equal(a, b) for a, b in zip(resumed.D.state_dict().values(), whole.D.state_dict().values()))


def test_lazy_r1_runs_on_its_schedule_with_adjusted_adam(monkeypatch):
    calls = []
    real_r1 = steps_module.r1_penalty
    monkeypatch.setattr(steps_module, "r1_penalty", lambda *a: calls.append(1) or real_r1(*a))
    lazy = dcgan_steps(r1_gamma=1.0, r1_interval=4)
    results = [lazy.discriminator_step(reals(i), None, d_index=i) for i in range(10)]
    assert [i for i, r in enumerate(results) if r.r1 is not None] == [0, 4, 8] and len(calls) == 3
    c = 4 / 5
    group = lazy.opt_D.param_groups[0]
    assert group["lr"] == pytest.approx(2e-4 * c)
    assert group["betas"] == pytest.approx((0.5 ** c, 0.999 ** c))
    assert lazy.opt_G.param_groups[0]["lr"] == 2e-4  # G is not lazily regularized
    # Two optimizer steps on a regularized minibatch, one otherwise.
    assert lazy.opt_D.state_dict()["state"][0]["step"] == 10 + 3

    calls.clear()
    every = dcgan_steps(r1_gamma=1.0)  # r1_interval 1: R1 in every D step's loss, Adam as configured
    assert all(every.discriminator_step(reals(i), None, d_index=i).r1 is not None for i in range(3))
    assert len(calls) == 3 and every.opt_D.param_groups[0]["lr"] == 2e-4
    assert every.opt_D.state_dict()["state"][0]["step"] == 3


def sg2_steps(**train) -> GANSteps:
    torch.manual_seed(0)
    G, D = build_models(StyleGAN2Config(**TINY_SG2), 32, None)
    cfg = TrainConfig(**{"batch_size": 8, "num_workers": 1, "precision": "fp32", **train})
    return GANSteps(G, D, copy.deepcopy(G).eval(), cfg, 16, torch.device("cpu"))


def test_path_length_runs_on_its_schedule_and_pl_mean_is_saved_and_restored(monkeypatch):
    steps = sg2_steps(pl_weight=2.0, pl_interval=3)
    ran = []
    real_step = GANSteps.path_length_step
    monkeypatch.setattr(GANSteps, "path_length_step", lambda self, *a: ran.append(1) or real_step(self, *a))
    means = []
    for step in range(7):
        ran_before = len(ran)
        steps.generator_step(8, None, step)
        if len(ran) > ran_before:
            means.append(float(steps.pl_mean))
    assert len(ran) == 3  # steps 0, 3, 6
    assert 0 < means[0] < means[1] < means[2]  # pl_mean rises from 0 towards the path length
    c = 3 / 4
    assert steps.opt_G.param_groups[0]["lr"] == pytest.approx(2e-4 * c)
    assert steps.opt_D.param_groups[0]["lr"] == 2e-4

    saved = steps.optimizer_state()
    assert torch.equal(saved["pl_mean"], steps.pl_mean)
    restored = sg2_steps(pl_weight=2.0, pl_interval=3)
    restored.load_optimizer_state(saved)
    assert torch.equal(restored.pl_mean, steps.pl_mean)


class RecordingD(torch.nn.Module):
    """Wraps a D and keeps the images it was shown."""

    def __init__(self, D: torch.nn.Module):
        super().__init__()
        self.D, self.seen = D, []

    def forward(self, images, labels=None):
        self.seen.append(images.detach().clone())
        return self.D(images, labels)


def test_d_sees_augmented_reals_fakes_and_r1_inputs():
    def shown(**train) -> list[torch.Tensor]:
        torch.manual_seed(0)
        _, D = build_models(DCGANConfig(g_width=8, d_width=8, z_dim=16), 32, None)
        steps = dcgan_steps(RecordingD(D), r1_gamma=1.0, r1_interval=2, **train)
        torch.manual_seed(9)
        steps.discriminator_step(reals(0), None, d_index=0)  # D(real), D(fake), then lazy R1's D(real)
        steps.generator_step(8, None, step=0)  # D(G(z))
        return steps.D.seen

    plain, augmented = shown(), shown(augment="bgc", augment_p=1.0)
    assert len(plain) == len(augmented) == 4
    assert torch.equal(plain[0], reals(0)) and torch.equal(plain[2], reals(0))
    assert all(not torch.equal(a, b) for a, b in zip(plain, augmented))
    # p = 0 draws the same randomness but shows D its images unchanged.
    assert all(torch.equal(a, b) for a, b in zip(plain[:1], shown(augment="bgc", augment_p=0.0)[:1]))


def test_a_checkpoint_without_ada_or_pl_mean_resumes_at_their_initial_values():
    steps = sg2_steps(augment="bgc", augment_p=0.25, pl_weight=1.0)
    old = {k: v for k, v in steps.optimizer_state().items() if k not in ("ada", "pl_mean")}
    steps.augment.p, steps.pl_mean = 0.9, torch.tensor(3.0)
    fresh = sg2_steps(augment="bgc", augment_p=0.25, pl_weight=1.0)
    fresh.load_optimizer_state(old)
    assert fresh.augment.p == 0.25 and float(fresh.pl_mean) == 0.0


def test_stylegan2_ada_settings_from_the_readme_validate():
    job = load_config(TrainJob, None, ["model.arch=stylegan2", "train.betas=[0,0.99]", "train.g_lr=0.0025",
                                       "train.d_lr=0.0025", "train.r1_gamma=0.4096", "train.r1_interval=16",
                                       "train.augment=bgc", "train.pl_weight=2"])
    assert job.train.betas == (0.0, 0.99) and job.train.augment == "bgc" and job.train.ada_target == 0.6


def test_path_length_needs_a_mapping_network():
    with pytest.raises(ValueError, match="model.arch: stylegan2"):
        dcgan_steps(pl_weight=2.0)
    with pytest.raises(ConfigError, match="train.pl_weight needs a generator with a mapping network"):
        load_config(TrainJob, None, ["train.pl_weight=2"])
    with pytest.raises(ConfigError, match="train.augment"):
        load_config(TrainJob, None, ["train.augment=fancy"])


# ---------------------------------------------------------------------------------------------
# A tiny StyleGAN2 run on Ray Train, killed and resumed


SG2_RUN = ("model.arch=stylegan2", "model.z_dim=16", "model.w_dim=16", "model.embed_dim=8", "model.mapping_layers=2",
           "model.channel_base=256", "model.channel_max=16",
           "train.precision=fp32", "train.max_steps=16", "train.checkpoint_every=4", "train.log_every=4",
           "train.num_to_keep=20", "train.sample_seeds=4", "train.r1_gamma=1", "train.r1_interval=4",
           "train.pl_weight=2", "train.pl_interval=2",
           # ada_interval 5 against checkpoints every 4: checkpoints fall between adjustments of p.
           "train.augment=bgc", "train.augment_p=0.3", "train.ada_interval=5", "train.ada_kimg=2")


def sg2_job(storage: Path, name: str, *overrides: str) -> TrainJob:
    # tiny_job's run, data and train sections, with a StyleGAN2 model section (conditional, as the demo's).
    tree = tiny_job(storage, name).model_dump(mode="json")
    tree["model"] = {"conditional": True}
    return load_config(TrainJob, None, [*SG2_RUN, *overrides], base=tree)


def test_killed_stylegan2_ada_run_resumes_into_the_same_run(ray_session, tmp_path):
    reference = run_training(sg2_job(tmp_path / "reference", "sg2"))
    ref_dir = Path(reference.run_url)
    state = ckpt.load_state(reference.checkpoint)
    assert state["config"]["model"]["arch"] == "stylegan2"
    assert state["ada"]["p"] != 0.3 and state["ada"]["count"] > 0  # p moved; statistics pending at step 16
    assert state["pl_mean"] > 0
    rows = [r for r in history(ref_dir) if "loss_D" in r]
    assert all(0 <= r["ada_p"] <= 1 for r in rows)
    # Reported at steps 4, 8, ...; p is first adjusted after minibatch 5.
    assert rows[0]["ada_rt"] is None and all(-1 <= r["ada_rt"] <= 1 for r in rows[1:])

    job = sg2_job(tmp_path / "killed", "sg2", "train.max_failures=2")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_training(job)), daemon=True)
    started = time.time()
    thread.start()
    wait_for_registered_checkpoint(tmp_path / "killed" / "sg2", thread)
    newest_train_worker(started).kill()
    thread.join(timeout=600)

    assert outcome["result"].step == 16
    events = [r for r in history(tmp_path / "killed" / "sg2") if r.get("event") == "resume"]
    assert events, "training did not restart from a checkpoint"
    restored = tmp_path / "killed" / "sg2" / ckpt.checkpoint_dir_name(events[0]["step"])
    assert events[0]["state_digest"] == ckpt.read_meta(str(restored))["state_digest"]
    assert_same_training_state(Path(outcome["result"].checkpoint), ref_dir / ckpt.checkpoint_dir_name(16))


def test_a_run_from_before_the_regularization_options_resumes_at_their_defaults(tmp_path):
    """A checkpoint whose config lacks the ADA / lazy-R1 / path-length keys resumes with them at their
    defaults (off), and refuses a resume that turns one on."""
    import json

    from ganray.train.trainer import check_resumable

    job = tiny_job(tmp_path, "old")
    config = job.model_dump(mode="json")
    new_keys = ("r1_interval", "pl_weight", "pl_interval", "pl_decay", "pl_batch_shrink", "augment", "augment_p",
                "ada_target", "ada_interval", "ada_kimg")
    for key in new_keys:
        del config["train"][key]
    checkpoint = tmp_path / "old" / ckpt.checkpoint_dir_name(2)
    checkpoint.mkdir(parents=True)
    (checkpoint / ckpt.META_FILE).write_text(json.dumps({"config": config, "manifest_hash": "h"}))

    assert check_resumable(job, "h") == str(checkpoint)
    with pytest.raises(ConfigError, match=r"train.augment: 'none' -> 'bgc'"):
        check_resumable(tiny_job(tmp_path, "old", "train.augment=bgc"), "h")
