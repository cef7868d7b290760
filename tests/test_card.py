"""The dataset card every generated output carries (OUT/README.md + OUT/card.json) and `ganray card OUT`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ganray.cli import main as cli
from ganray.config import ClassifierModelConfig, DCGANConfig, GenerateJob, load_config
from ganray.generate.job import run_generate
from ganray.models import build_generator
from ganray.models.classifier import build_classifier
from ganray.registry import LabelerRegistry, Registry

ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
HELDOUT = {"rule": "test", "fraction": 0.1, "images": 40,
           "attributes": {"gender": {"accuracy": 0.9}, "age": {"accuracy": 0.7}}}


@pytest.fixture(scope="module")
def output(ray_session, tmp_path_factory) -> tuple[str, str]:
    """A 12-face output of a conditional model, balanced over gender and labeled by a registry classifier."""
    torch.manual_seed(0)
    model = DCGANConfig(z_dim=16, g_width=8, conditional=True, embed_dim=4)
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    provenance = {"run_name": "tiny", "step": 3, "dataset_manifest_hash": "d" * 64,
                  "train_config": {"data": {"source": "synthetic"}}}
    registry.promote(registry.push(build_generator(model, 32, ATTRIBUTES).state_dict(), model.model_dump(), 32,
                                   ATTRIBUTES, provenance), "production")
    registry.record("production", "fid", {"fid": 123.4, "extractor": "pixels"})
    classifier = ClassifierModelConfig(width=4, max_channels=8, feature_dim=8)
    LabelerRegistry(registry.url).push(build_classifier(classifier.model_dump(), 32, ATTRIBUTES).state_dict(),
                                       classifier.model_dump(), 32, ATTRIBUTES, {"run": "tiny"}, HELDOUT)
    out = str(tmp_path_factory.mktemp("card") / "faces")
    run_generate(load_config(GenerateJob, None, [
        f"registry.url={registry.url}", f"generate.output={out}", "generate.model=production", "generate.count=12",
        "generate.shard_size=6", 'generate.balance=["gender"]', 'generate.labeler={"name": "classifier", "model": "v1"}']))
    return out, registry.url


def test_every_output_carries_a_card_that_states_what_the_output_and_registry_hold(output):
    out, registry = output
    card = json.loads(Path(out, "card.json").read_text())
    manifest = json.loads(Path(out, "manifest.json").read_text())
    job = json.loads(Path(out, "job.json").read_text())
    assert card["faces"] == manifest["faces"] == 12
    model = card["provenance"]["model"]
    assert model["version"] == "v1" and model["content_hash"] == Registry(registry).show("v1").content_hash
    assert card["provenance"]["job"] == job["parameters"] and card["provenance"]["job_id"] == job["job_id"]
    assert card["provenance"]["training_data"]["manifest_hash"] == "d" * 64
    assert card["provenance"]["training_data"]["license"] == "apache-2.0"  # built-in faces
    assert card["provenance"]["ganray"]["version"]
    assert card["counts"]["per_attribute"] == {"gender": {"female": 6, "male": 6}}
    assert sum(card["counts"]["per_stratum"].values()) == 12
    assert card["labels"]["heldout_accuracy"] == {"gender": 0.9, "age": 0.7}
    assert card["evaluations"]["fid"]["fid"] == 123.4
    assert card["cost"]["bytes_per_face"] == round(manifest["bytes"] / 12, 1)
    assert card["cost"]["cpu_seconds"] >= 0 and "wall_s" in card["cost"]
    assert card["intended_uses"] and card["limitations"]

    readme = Path(out, "README.md").read_text()
    front = yaml.safe_load(readme.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["size_categories"] == ["n<1K"]
    assert front["configs"][0]["data_files"][0]["path"] == "data/*.parquet"
    assert "v1" in readme and "0.9" in readme and "Limitations" in readme


def test_the_card_loads_the_output_in_hugging_face_datasets(output):
    datasets = pytest.importorskip("datasets")
    out, _ = output
    loaded = datasets.load_dataset(out, split="train")  # the card's `configs` pick the Parquet shards
    assert len(loaded) == 12


def test_ganray_card_rewrites_it_with_what_the_registry_learned_since(output, capsys):
    out, registry = output
    Registry(registry).record("production", "memorization", {"share_under_threshold": 0.0, "searched": 40})
    assert cli(["card", out, "--registry", registry]) == 0
    card = json.loads(Path(out, "card.json").read_text())
    assert card["memorization"] == {"memorization": {"share_under_threshold": 0.0, "searched": 40}}
    assert "memorization" in Path(out, "README.md").read_text()


def test_ganray_card_refuses_a_folder_that_is_not_a_finished_output(tmp_path, capsys):
    assert cli(["card", str(tmp_path)]) == 2
    assert "not a finished ganray generate output" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_splits_of_whole_shards_load_as_named_splits_and_bad_ones_change_nothing(output, capsys):
    datasets = pytest.importorskip("datasets")
    out, registry = output
    assert cli(["card", out, "--registry", registry, "--splits", "train=0.5,test=0.5"]) == 0
    card = json.loads(Path(out, "card.json").read_text())
    assert {name: s["faces"] for name, s in card["splits"].items()} == {"train": 6, "test": 6}
    loaded = datasets.load_dataset(out)  # the card's configs name each split's shards
    assert {name: len(part) for name, part in loaded.items()} == {"train": 6, "test": 6}
    before = Path(out, "README.md").read_bytes()
    for bad, message in [("train=0.9,test=0.2", "add up to 1"), ("train=0.9,test=0.1", "cannot give split 'test'"),
                         ("Train=1", "not a new split name")]:
        assert cli(["card", out, "--registry", registry, "--splits", bad]) == 2
        assert message in capsys.readouterr().err
    assert Path(out, "README.md").read_bytes() == before
