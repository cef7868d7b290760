"""`ganray eval utility` end to end on the built-in faces (short budgets), the training-source option
of the labeler's dataset, the generator's held-out check, and the bootstrap table's arithmetic."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ganray.cli import main as cli
from ganray.config import ConfigError, DataConfig, DCGANConfig, HeldoutConfig
from ganray.config.labels import TrainingSourceConfig
from ganray.data.synthetic import ATTRIBUTES, render_batch
from ganray.config.eval import UtilityJob
from ganray.eval.utility import accuracy_table, check_generator
from ganray.labels.dataset import generated_label_columns, heldout_mask, split_rows
from ganray.models import build_generator
from ganray.registry import Registry

RES = 32
CONDITIONS = {"age_group": ATTRIBUTES["age_group"]}
MODEL = DCGANConfig(z_dim=8, g_width=4, conditional=True).model_dump()
DATA = {"source": "synthetic", "synthetic": {"count": 192, "seed": 1}, "resolution": RES}
GENERATED = 48


def push(registry: Registry, trained_on: dict | None) -> str:
    torch.manual_seed(0)
    generator = build_generator(DCGANConfig(**MODEL), RES, CONDITIONS)
    provenance = {"train_config": {"data": trained_on}} if trained_on else {}
    return registry.push(generator.state_dict(), MODEL, RES, CONDITIONS, provenance)


@pytest.fixture(scope="module")
def setup(ray_session, tmp_path_factory):
    """One generate output of a generator v1, and three registries whose v1 (the same weights) records
    other built-in faces (seed 7), the classifier's own faces (seed 1), or no training data."""
    root = tmp_path_factory.mktemp("utility")
    registries = {name: Registry(str(root / f"registry-{name}")) for name in ("clean", "leaky", "unrecorded")}
    push(registries["clean"], {**DATA, "synthetic": {"count": 64, "seed": 7}})
    push(registries["leaky"], DATA)
    push(registries["unrecorded"], None)
    output = str(root / "generated")
    assert cli(["generate", "--set", f"registry.url={registries['clean'].url}", "--set", "generate.model=v1",
                "--set", f"generate.output={output}", "--set", f"generate.count={GENERATED}",
                "--set", "generate.shard_size=24", "--set", "generate.balance=[age_group]"]) == 0
    return registries, output


def utility(registry: Registry, generated: str, output, *extra: str) -> int:
    settings = {"registry.url": registry.url, "labeler.run.name": "u", "labeler.data.source": "synthetic",
                "labeler.data.synthetic.count": 192, "labeler.data.synthetic.seed": 1, "labeler.data.resolution": RES,
                "labeler.attributes": "[age_group]", "labeler.model.width": 8,
                "labeler.model.feature_dim": 16, "labeler.train.num_workers": 1, "labeler.train.batch_size": 16,
                "labeler.train.max_steps": 6, "labeler.train.checkpoint_every": 6, "labeler.train.log_every": 3,
                "labeler.heldout.fraction": 0.3, "utility.generated": generated, "utility.output": str(output),
                "utility.labels": "conditions", "utility.groups": "[age_group]", "utility.min_group_images": 5,
                "utility.bootstrap": 50}
    args = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    return cli(["eval", "utility", *args, *extra])  # over configs/eval_utility_demo.yaml


def test_utility_trains_three_classifiers_and_tests_them_on_the_same_real_heldout_images(setup, tmp_path):
    registries, output = setup
    assert utility(registries["clean"], output, tmp_path / "u") == 0
    result = json.loads((tmp_path / "u/utility.json").read_text())
    assert (tmp_path / "u/utility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    check = result["generator_check"]
    assert check["verified"] and check["heldout_in_generator_training"] == 0
    assert check["generator_training_images"] == 64
    assert set(result["labeler_versions"]) == {"real", "generated", "real+generated"}
    table = result["accuracy"]
    assert table["groups"] == ["adult", "child", "senior"]
    for arm, by_attribute in table["arms"].items():
        entry = by_attribute["age_group"]
        groups = entry["groups"]
        assert sum(g["images"] for g in groups.values()) == result["heldout_images"]
        overall = sum(g["accuracy"] * g["images"] for g in groups.values()) / result["heldout_images"]
        assert entry["accuracy"] == pytest.approx(overall)
        low, high = entry["interval"]
        assert low <= entry["accuracy"] <= high
        eligible = {k: g["accuracy"] for k, g in groups.items() if g["images"] >= 5}
        assert entry["worst_group"]["accuracy"] == min(eligible.values())
        if arm != "real":
            assert entry["minus_real"]["accuracy"] == pytest.approx(
                entry["accuracy"] - table["arms"]["real"]["age_group"]["accuracy"])


def test_generator_trained_on_heldout_images_or_unrecorded_is_refused(setup, tmp_path, capsys):
    registries, output = setup
    assert utility(registries["leaky"], output, tmp_path / "leaky") == 2
    assert "held-out images: testing on them would leak" in capsys.readouterr().err
    assert utility(registries["unrecorded"], output, tmp_path / "unrecorded") == 2
    assert "utility.allow_unverified_generator" in capsys.readouterr().err
    assert not (tmp_path / "leaky").exists() and not (tmp_path / "unrecorded").exists()
    assert utility(registries["clean"], output, tmp_path / "bad", "--set", "utility.groups=[smile]") == 2
    assert "not among the classifier's attributes" in capsys.readouterr().err
    # Allowed explicitly, an unverifiable generator runs and the result says so.
    job = UtilityJob.model_validate({"registry": {"url": registries["unrecorded"].url}, "labeler": {"data": DATA},
                                     "utility": {"generated": output, "output": str(tmp_path / "x"),
                                                 "groups": ["age_group"], "allow_unverified_generator": True}})
    check = check_generator(job, ["0" * 64])
    assert check["verified"] is False and "records no training data" in check["reason"]


def test_training_source_puts_generated_faces_beside_the_real_training_split(setup):
    _, output = setup
    data, heldout = DataConfig.model_validate(DATA), HeldoutConfig(fraction=0.3)
    attributes = {"age_group": ATTRIBUTES["age_group"]}
    both = split_rows(data, attributes, heldout, TrainingSourceConfig(use="real+generated", generated=output))
    rendered = render_batch(np.arange(192), RES, 1)
    hashes = np.array([hashlib.sha256(image.tobytes()).hexdigest() for image in rendered["image"]], dtype=object)
    real = ~heldout_mask(hashes, 0.3 + getattr(heldout, "validation_fraction", 0.0))  # the real training split
    assert both.train.num_rows == int(real.sum()) + GENERATED
    labels = both.train.read(np.arange(both.train.num_rows))["age_group"]
    # The real training split's labels plus the generated faces', balanced over age_group by the job.
    expected = np.bincount(np.asarray(rendered["age_group"])[real], minlength=3) + GENERATED // 3
    assert np.bincount(labels, minlength=3).tolist() == expected.tolist()
    assert sorted(both.heldout["content_hash"]) == sorted(hashes[heldout_mask(hashes, 0.3)])  # the real split
    with pytest.raises(ConfigError, match=r"age_group values \['adult', 'child', 'senior'\]"):
        generated_label_columns(output, {"age_group": ["young", "old"]}, "labeler")
    with pytest.raises(ConfigError, match=r"carry no label or condition for \['skin_tone'\]"):
        generated_label_columns(output, {"skin_tone": ATTRIBUTES["skin_tone"]}, "labeler")


def test_accuracy_table_bootstrap_is_paired_and_worst_group_is_the_minimum():
    rng = np.random.default_rng(0)
    keys = np.array(["a"] * 30 + ["b"] * 50 + ["c"] * 3, dtype=object)
    real = rng.random(83) < 0.7
    better = real | (rng.random(83) < 0.5)
    resamples = rng.integers(0, 83, size=(200, 83))
    table = accuracy_table({"real": {"x": real}, "generated": {"x": better}}, keys, resamples=resamples,
                           confidence=0.9, min_group_images=5)
    assert table["eligible_groups"] == ["a", "b"]  # "c" has 3 images
    entry = table["arms"]["real"]["x"]
    assert entry["groups"]["a"]["accuracy"] == pytest.approx(real[:30].mean())
    assert entry["worst_group"]["accuracy"] == min(real[:30].mean(), real[30:80].mean())
    diff = table["arms"]["generated"]["x"]["minus_real"]
    assert diff["accuracy"] == pytest.approx(better.mean() - real.mean())
    assert diff["interval"][0] >= 0  # better is never below real image by image: every paired resample >= 0
    means = real[resamples].mean(1)
    assert entry["interval"] == pytest.approx([np.percentile(means, 5), np.percentile(means, 95)])
