"""`ganray labeler`: the attribute classifier trained on Ray Train (2 DDP workers, real local Ray) on a
real import of built-in faces; a re-run resumes bit-identically; the labeler version in the registry
holds weights, provenance and the held-out evaluation; the `classifier` labeler is deterministic per
image; the classifier's encoder is an offline FID extractor whose reference cache follows the labeler
version; bad input exits 2 before any work."""
from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import newest_train_worker, registered_checkpoints, wait_for_registered_checkpoint
from ganray.data.hf_features import to_ganray_table
from ganray.cli import main as cli
from ganray.config import ConfigError, DCGANConfig, ExtractorConfig, GenerateJob, ImportConfig, ImportJob, \
    LabelConfig, LabelerConfig, LabelerTrainJob, load_config
from ganray.data.bands import age_band_index, age_band_names, age_band_starts_from_names
from ganray.data.importer import run_import
from ganray.data.source_labels import UTKFACE_ATTRIBUTES, make_source_labels
from ganray.data.synthetic import ATTRIBUTES, render_face
from ganray.eval import job as eval_job
from ganray.generate.job import run_generate
from ganray.images import decode_png
from ganray.labels import LabelerError, build_labeler
from ganray.labels import checkpoint as ckpt
from ganray.labels.calibration import threshold_for_precision
from ganray.labels.dataset import HELDOUT_RULE, heldout_mask
from ganray.labels.trainer import run_labeler_training
from ganray.models import build_generator
from ganray.registry import LabelerRegistry, Registry

REPO = Path(__file__).resolve().parents[1]
RES = 32
FACES = 160
FRACTION = 0.2
PATTERN = r"\d+_(?P<age_group>child|adult|senior)_(?P<smile>no|yes)\.png"


@pytest.fixture(scope="module")
def faces(ray_session, tmp_path_factory) -> dict:
    """Built-in faces written as PNG files named with two of their attributes, imported for real."""
    src = tmp_path_factory.mktemp("faces-src")
    for i in range(FACES):
        image, labels = render_face(i, RES)
        age, smile = ATTRIBUTES["age_group"][labels["age_group"]], ATTRIBUTES["smile"][labels["smile"]]
        Image.fromarray(image).save(src / f"{i:03d}_{age}_{smile}.png")
    dst = str(tmp_path_factory.mktemp("faces") / "import")
    run_import(ImportConfig(src=str(src), dst=dst, resolution=RES, labels=LabelConfig(pattern=PATTERN),
                            min_size=8, blank_std=0, blur_threshold=0, shard_rows=64))
    return {"src": src, "url": dst}


def tiny(storage_path: Path, name: str, data_url: str, registry: str, *extra: str) -> list[str]:
    settings = [f"run.storage_path={storage_path}", f"run.name={name}", "data.source=shards", f"data.url={data_url}",
                f"data.resolution={RES}", "attributes=[age_group, smile]", "model.width=8", "model.feature_dim=16",
                "train.batch_size=16", "train.num_workers=2", "train.max_steps=10", "train.checkpoint_every=5",
                "train.log_every=3", "train.precision=fp32", "train.num_to_keep=5", f"heldout.fraction={FRACTION}",
                f"publish.registry={registry}", "publish.alias=null", *extra]
    return [a for s in settings for a in ("--set", s)]


@pytest.fixture(scope="module")
def runs(faces, tmp_path_factory) -> dict:
    """v1: a run stopped after 5 of 10 steps (CLI); v2: 10 steps in one go; v3: the first run re-run to 10."""
    root = tmp_path_factory.mktemp("labeler-runs")
    registry = str(root / "registry")
    storage_path = root / "runs"
    config = str(REPO / "configs" / "labeler_demo.yaml")
    assert cli(["labeler", "train", "--config", config,
                *tiny(storage_path, "resumed", faces["url"], registry, "train.max_steps=5", "publish.alias=tiny")]) == 0
    job = load_config(LabelerTrainJob, config, [a for a in tiny(storage_path, "straight", faces["url"], registry)
                                                if a != "--set"])
    straight = run_labeler_training(job)
    assert cli(["labeler", "train", "--config", config, *tiny(storage_path, "resumed", faces["url"], registry)]) == 0
    return {"registry": registry, "storage": storage_path, "straight": straight, "config": config}


def test_a_rerun_resumes_and_ends_bit_identical_to_an_uninterrupted_run(runs):
    storage_path = runs["storage"]
    straight = ckpt.load_state(str(storage_path / "straight" / "checkpoint_00000010"))
    resumed = ckpt.load_state(str(storage_path / "resumed" / "checkpoint_00000010"))
    assert straight["step"] == resumed["step"] == 10
    assert {"event": "resume", "step": 5} in resumed["history"]
    assert not any(h.get("event") == "resume" for h in straight["history"])
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert resumed["data_position"] == straight["data_position"] and straight["data_position"]["epoch"] == 1  # crossed an epoch
    assert resumed["best"]["step"] == straight["best"]["step"]  # the validation's choice resumes too
    assert ckpt.state_digest(straight) == ckpt.state_digest(resumed)
    assert len(resumed["rng"]) == 2  # one RNG state per DDP worker
    labelers = LabelerRegistry(runs["registry"])
    v1, v2, v3 = (labelers.show(v) for v in ("v1", "v2", "v3"))
    assert v2.content_hash == v3.content_hash != v1.content_hash  # same weights and config: same content
    assert v1.provenance["step"] == 5 and v3.provenance["step"] == 10


def test_the_local_runner_trains_without_ray_and_resumes_bit_identical(tmp_path):
    """train.runner local: the same loop in this process (no Ray): a run stopped at step 4 and
    re-run to 8 ends with the state of a run that went to 8 at once; augmentation, class-weighted
    loss, warmup and the validation's best weights ride along."""
    settings = ["data.source=synthetic", "data.synthetic.count=256", f"data.resolution={RES}", "model.width=8",
                "model.feature_dim=16", "model.dropout=0.2", "train.runner=local", "train.num_workers=1",
                "train.batch_size=16", "train.checkpoint_every=2", "train.log_every=2", "train.precision=fp32",
                "train.warmup_steps=3", "train.class_balance=loss", "train.augment_shift=0.1",
                "train.augment_color=0.1", "heldout.validation_fraction=0.2", f"run.storage_path={tmp_path}",
                f"publish.registry={tmp_path / 'registry'}", "publish.alias=null"]
    config = str(REPO / "configs" / "labeler_demo.yaml")
    for name, steps in (("resumed", 4), ("resumed", 8), ("straight", 8)):
        outcome = run_labeler_training(load_config(LabelerTrainJob, config, [*settings, f"run.name={name}",
                                                                             f"train.max_steps={steps}"]))
        assert outcome.step == steps
    resumed = ckpt.load_state(str(tmp_path / "resumed" / ckpt.checkpoint_dir_name(8)))
    straight = ckpt.load_state(str(tmp_path / "straight" / ckpt.checkpoint_dir_name(8)))
    assert ckpt.state_digest(resumed) == ckpt.state_digest(straight)
    assert {"event": "resume", "step": 4} in resumed["history"]
    assert resumed["best"]["step"] == straight["best"]["step"]
    assert all(torch.equal(resumed["best"]["model"][k], v) for k, v in straight["best"]["model"].items())
    assert sorted(p.name for p in (tmp_path / "straight").iterdir() if p.name.startswith("checkpoint_")) == [
        ckpt.checkpoint_dir_name(6), ckpt.checkpoint_dir_name(8)]  # train.num_to_keep (2)


def test_a_killed_worker_resumes_and_ends_bit_identical_to_an_uninterrupted_run(runs, faces, tmp_path):
    """A DDP worker process killed by PID mid-run: Ray Train restarts the group from the newest
    checkpoint (train.max_failures) and the run ends with the uninterrupted run's exact state."""
    config = str(REPO / "configs" / "labeler_demo.yaml")
    # A checkpoint every step (the training state does not depend on it) leaves time to kill.
    args = tiny(runs["storage"], "killed", faces["url"], str(tmp_path / "registry"),
                "train.checkpoint_every=1", "train.max_failures=2")
    job = load_config(LabelerTrainJob, config, [a for a in args if a != "--set"])
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", run_labeler_training(job)), daemon=True)
    started = time.time()
    thread.start()
    wait_for_registered_checkpoint(runs["storage"] / "killed", thread)
    newest_train_worker(started).kill()
    thread.join(timeout=600)

    state = ckpt.load_state(str(runs["storage"] / "killed" / "checkpoint_00000010"))
    resumes = [h for h in state["history"] if h.get("event") == "resume"]
    assert resumes and 1 <= resumes[0]["step"] < 10, "the run did not restart from a checkpoint"
    straight = ckpt.load_state(str(runs["storage"] / "straight" / "checkpoint_00000010"))
    assert ckpt.state_digest(state) == ckpt.state_digest(straight)


def test_a_rerun_resumes_from_the_newest_complete_checkpoint_when_ray_offers_a_damaged_one(runs, faces, tmp_path):
    """Ray Train can register a checkpoint whose upload failed (pyarrow swallows the error). The
    finished run's last checkpoint, which Ray's snapshot lists, has a short state.pt here: a re-run
    resumes from the one before it and ends with the uninterrupted run's exact state."""
    storage_path = tmp_path / "runs"
    shutil.copytree(runs["storage"] / "straight", storage_path / "damaged")
    damaged = storage_path / "damaged" / ckpt.checkpoint_dir_name(10) / ckpt.STATE_FILE
    damaged.write_bytes(damaged.read_bytes()[:1000])  # what an upload cut part way leaves
    assert registered_checkpoints(storage_path / "damaged")[-1] == ckpt.checkpoint_dir_name(10)  # Ray offers it
    assert ckpt.latest_checkpoint(str(storage_path), "damaged").endswith(ckpt.checkpoint_dir_name(5))

    args = tiny(storage_path, "damaged", faces["url"], str(tmp_path / "registry"))
    outcome = run_labeler_training(load_config(LabelerTrainJob, runs["config"], [a for a in args if a != "--set"]))

    assert outcome.step == 10
    state = ckpt.load_state(str(storage_path / "damaged" / ckpt.checkpoint_dir_name(10)))
    assert [h["step"] for h in state["history"] if h.get("event") == "resume"] == [5]
    straight = ckpt.load_state(str(runs["storage"] / "straight" / ckpt.checkpoint_dir_name(10)))
    assert ckpt.state_digest(state) == ckpt.state_digest(straight)


def test_a_changed_setup_is_refused_before_training(runs, faces, capsys):
    code = cli(["labeler", "train", "--config", runs["config"],
                *tiny(runs["storage"], "resumed", faces["url"], runs["registry"], "model.width=16")])
    assert code == 2
    assert "model.width: 8 -> 16" in capsys.readouterr().err
    assert LabelerRegistry(runs["registry"]).versions() == ["v1", "v2", "v3"]


def test_heldout_split_is_fixed_by_content_hash_and_evaluated_per_class(runs, faces):
    info = LabelerRegistry(runs["registry"]).show("v2")
    assert info.kind == "attribute_classifier" and info.resolution == RES
    assert info.attributes == {"age_group": ["adult", "child", "senior"], "smile": ["no", "yes"]}  # import's order
    heldout = LabelerRegistry(runs["registry"]).evaluation("v2", "heldout")
    # The split, recomputed from the source files' own bytes: sha256 -> [0, 1) < fraction.
    names = sorted(p.name for p in faces["src"].iterdir())
    hashes = [hashlib.sha256((faces["src"] / n).read_bytes()).hexdigest() for n in names]
    held = [n for n, h in zip(names, hashes) if int(h[:16], 16) / 2 ** 64 < FRACTION]
    assert 0 < len(held) < FACES and heldout["images"] == len(held)
    assert heldout["rule"] == HELDOUT_RULE and heldout["fraction"] == FRACTION
    assert list(heldout_mask(hashes, FRACTION)) == [n in held for n in names]
    for attribute, values in info.attributes.items():
        result = heldout["attributes"][attribute]
        matrix = np.array(result["confusion"]["matrix"])
        assert result["confusion"]["values"] == values and matrix.shape == (len(values), len(values))
        truth = [n.split("_")[1 if attribute == "age_group" else 2].removesuffix(".png") for n in held]
        assert [int(r.sum()) for r in matrix] == [truth.count(v) for v in values]  # rows: the true values
        assert result["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
        for i, value in enumerate(values):
            per_class = result["per_class"][value]
            assert per_class["count"] == truth.count(value)
            assert per_class["accuracy"] == (None if not truth.count(value) else pytest.approx(matrix[i, i] / truth.count(value)))
        # Calibration: fitted on the validation split; its curves are the held-out confusion at each threshold.
        calibration = result["calibration"]
        assert calibration["fitted_on"] == "validation" and calibration["temperature"] > 0
        table = np.array(calibration["confusion_by_threshold"])
        assert (table[0] == matrix).all() and (np.diff(table, axis=0) <= 0).all()
        for v, value in enumerate(values):
            assert calibration["per_class"][value]["labeled"] == table[:, :, v].sum(axis=1).tolist()


def test_labeler_eval_recomputes_the_heldout_evaluation_and_records_it(runs, faces, tmp_path):
    out = tmp_path / "eval.json"
    assert cli(["labeler", "eval", "--set", f"registry.url={runs['registry']}", "--set", "data.source=shards",
                "--set", f"data.url={faces['url']}", "--set", f"data.resolution={RES}",
                "--set", f"heldout.fraction={FRACTION}", "--set", "eval.model=tiny", "--set", "eval.record_as=again",
                "--set", f"eval.output={out}"]) == 0
    labelers = LabelerRegistry(runs["registry"])
    again, original = labelers.evaluation("v1", "again"), labelers.evaluation("v1", "heldout")
    assert again["attributes"] == original["attributes"] and again["labeler_version"] == "v1"
    assert json.loads(out.read_text()) == again


def test_classifier_labeler_is_deterministic_per_image_whatever_the_batch(runs, faces):
    labeler = build_labeler(LabelerConfig(name="classifier", model="tiny"), runs["registry"])
    assert labeler.attributes == ("age_group", "smile") and labeler.version == "v1"
    images = np.stack([render_face(1000 + i, 64)[0] for i in range(13)])  # any resolution: resized to 32
    whole = labeler.label(images, [{}] * 13)
    parts = [labeler.label(images[a:b], [{}] * (b - a)) for a, b in ((0, 1), (1, 8), (8, 13))]
    for name in labeler.attributes:
        assert whole[name].values == sum((p[name].values for p in parts), ())
        assert whole[name].confidence.tobytes() == np.concatenate([p[name].confidence for p in parts]).tobytes()
        assert set(whole[name].values) <= set(labeler.values[name])
        assert ((whole[name].confidence > 0) & (whole[name].confidence <= 1)).all()
    # Confidence = the softmax probability of the chosen value, from the network itself.
    classifier = LabelerRegistry(runs["registry"]).load_classifier("v1").classifier
    x = torch.from_numpy(np.asarray(Image.fromarray(images[0]).resize((RES, RES), Image.Resampling.LANCZOS),
                                    dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        probabilities = torch.softmax(classifier(x)["smile"], dim=1)[0]
    chosen = labeler.values["smile"].index(whole["smile"].values[0])
    assert int(probabilities.argmax()) == chosen
    assert whole["smile"].confidence[0] == pytest.approx(float(probabilities[chosen]), abs=1e-6)


def test_classifier_labeler_bad_input(runs):
    with pytest.raises(LabelerError, match="labeler.model"):
        build_labeler(LabelerConfig(name="classifier"), runs["registry"])
    with pytest.raises(LabelerError, match="unknown labeler 'nope'"):
        build_labeler(LabelerConfig(name="classifier", model="nope"), runs["registry"])
    labeler = build_labeler(LabelerConfig(name="classifier", model="v1"), runs["registry"])
    with pytest.raises(LabelerError, match="uint8 RGB"):
        labeler.label(np.zeros((2, 32, 32), np.uint8), [{}, {}])


def test_generator_registry_is_untouched_by_labelers(runs):
    registry = Registry(runs["registry"])
    assert registry.versions() == [] and registry.aliases() == {}
    assert registry.labelers.aliases() == {"tiny": "v1"}


def test_bad_input_exits_2_before_any_work(faces, tmp_path, capsys):
    reg = str(tmp_path / "reg")
    base = ["labeler", "train", "--set", f"run.storage_path={tmp_path / 'runs'}", "--set", f"publish.registry={reg}"]
    cases = [
        (["--set", "data.source=shards", "--set", f"data.url={faces['url']}", "--set", "attributes=[nope]"],
         "attributes: ['nope'] not among the dataset's attributes"),
        (["--set", "train.nope=1"], "train.nope: unknown key"),
        (["--set", "data.source=shards", "--set", f"data.url={tmp_path / 'missing'}"], "data.url: no ganray import"),
        (["--set", "publish.alias=v7"], "publish.alias"),
        (["--set", "heldout.fraction=1.5"], "heldout.fraction"),
    ]
    for extra, message in cases:
        assert cli([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    assert cli(["labeler", "eval", "--set", f"registry.url={reg}", "--set", "eval.model=v9"]) == 2
    assert "unknown labeler 'v9'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reg").exists()


# -- the classifier's encoder as an offline feature extractor (ganray eval) ------------------------


def test_eval_with_the_classifier_extractor_and_its_cache_follows_the_labeler_version(runs, faces, tmp_path):
    registry = Registry(runs["registry"])
    model = DCGANConfig(z_dim=8, g_width=4).model_dump()
    torch.manual_seed(0)
    registry.push(build_generator(DCGANConfig(**model), RES, {}).state_dict(), model, RES, {}, {"seed": 0})

    def evaluate(name: str) -> dict:
        out = tmp_path / f"{name}.json"
        settings = {"registry.url": runs["registry"], "eval.model": "v1", "eval.reference": faces["url"],
                    "eval.output": str(out), "eval.count": 24, "eval.reference_count": 32,
                    "eval.kid_subset_size": 12, "eval.kid_subsets": 5, "eval.small_count": 8,
                    "eval.extractor.name": "classifier", "eval.extractor.labeler": "tiny",
                    "eval.extractor.batch_size": 16, "eval.render_batch_size": 16}
        assert cli(["eval", "--config", str(REPO / "configs" / "eval_demo.yaml"),
                    *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]) == 0
        return json.loads(out.read_text())

    first = evaluate("first")
    assert first["comparable_to_published"] is False and "not comparable to published FID" in first["note"]
    extractor = first["comparable"]["extractor"]
    assert extractor["name"] == "classifier" and extractor["labeler_version"] == "v1"
    assert extractor["weights_sha256"] == registry.labelers.show("v1").content_hash
    assert extractor["feature_dim"] == 16 and np.isfinite(first["metrics"]["fid"])
    assert first["reference_cache"]["hit"] is False

    # The reference cache: the same labeler version reads it; another version (another feature
    # space, another content hash) never does.
    manifest = eval_job.reference_manifest(faces["url"])

    def reference(labeler: str):
        cfg = ExtractorConfig(name="classifier", labeler=labeler, labeler_registry=runs["registry"], batch_size=16)
        return eval_job.reference_features(faces["url"], manifest, 32, cfg)

    same_features, same_cache = reference("v1")
    assert same_cache == {"url": first["reference_cache"]["url"], "hit": True}
    registry.labelers.promote("v2", "tiny")  # the alias moves: the extractor follows it
    try:
        moved_features, moved_cache = reference("tiny")
    finally:
        registry.labelers.promote("v1", "tiny")
    assert moved_cache["hit"] is False and moved_cache["url"] != first["reference_cache"]["url"]
    assert not np.array_equal(moved_features["features"], same_features["features"])
    assert reference("v2")[1] == {"url": moved_cache["url"], "hit": True}


def test_classifier_extractor_needs_a_labeler(tmp_path, capsys):
    assert cli(["eval", "--set", "eval.model=v1", "--set", f"eval.reference={tmp_path}", "--set",
                f"eval.output={tmp_path / 'o.json'}", "--set", "eval.extractor.name=classifier"]) == 2
    assert "extractor classifier needs labeler" in capsys.readouterr().err


# -- age bands: one definition of their names --------------------------------------------------


def test_age_bands_default_names_and_configurable_starts():
    assert UTKFACE_ATTRIBUTES["age_group"] == ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69",
                                              "70+"]
    assert age_band_starts_from_names(UTKFACE_ATTRIBUTES["age_group"]) == [0, 3, 10, 20, 30, 40, 50, 60, 70]
    assert age_band_starts_from_names(["child", "adult"]) is None
    starts = [0, 18, 65]
    assert age_band_names(starts) == ["0-17", "18-64", "65+"]
    assert [age_band_index(a, starts) for a in (0, 17, 17.9, 18, 64, 65, 116, -1)] == [0, 0, 0, 1, 1, 2, 2, 0]
    source_labels = make_source_labels(LabelConfig(preset="utkface", age_band_starts=starts))
    assert source_labels.values["age_group"] == ["0-17", "18-64", "65+"]
    assert source_labels.lookup("17_1_2_20170116174525125.jpg.chip.jpg") == {"age_group": "0-17", "gender": "female",
                                                                             "race": "asian"}
    assert source_labels.lookup("65_0_0_20170116174525125.jpg.chip.jpg")["age_group"] == "65+"
    for bad in ([3, 10], [0, 10, 10], [0, 5, 2]):
        with pytest.raises(ConfigError, match="age_band_starts must start at 0 and increase"):
            load_config(ImportJob, None, ["import.src=x", "import.dst=y", "import.labels.preset=utkface",
                                          f"import.labels.age_band_starts={bad}"])


# -- the trained classifier verifying faces in the bulk job's closed loop ----------------------------


def test_closed_loop_keeps_only_faces_the_classifier_labels_as_their_stratum(runs, tmp_path):
    """Generator and labeler built apart: the job asks for age groups, the classifier checks them,
    and every kept face carries the classifier's own label and confidence for it. (An untrained
    generator's faces mostly read as one age group: the other strata run short, as reported.)"""
    attributes = {"age_group": ATTRIBUTES["age_group"], "smile": ATTRIBUTES["smile"]}
    model = DCGANConfig(z_dim=8, g_width=8, conditional=True, embed_dim=4).model_dump()
    torch.manual_seed(1)
    g = build_generator(DCGANConfig(**model), RES, attributes)
    with torch.no_grad():  # spread the weights: DCGAN's init gives near-flat images at this width
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    # The job reads labelers from its registry's labelers/: the one the labeler tests trained.
    version = Registry(runs["registry"]).push(g.state_dict(), model, RES, attributes, {"seed": 1})
    output = tmp_path / "faces"
    settings = [f"registry.url={runs['registry']}", f"generate.model={version}", f"generate.output={output}",
                "generate.count=7", "generate.shard_size=3", "generate.psi=1.0",
                "generate.labeler.name=classifier", "generate.labeler.model=tiny",
                "generate.closed_loop.strata=[age_group]", "generate.closed_loop.min_confidence=0.0",
                "generate.closed_loop.max_attempts_per_face=8", "generate.closed_loop.on_budget_exhausted=partial"]
    # Selective labels: a label precision instead of a confidence, one every stratum's value reaches.
    curves = LabelerRegistry(runs["registry"]).evaluation("tiny", "heldout")["attributes"]["age_group"]["calibration"]
    reached = {v: max(p for p in c["precision"] if p is not None) for v, c in curves["per_class"].items()
               if any(p is not None for p in c["precision"])}
    precision = min(reached.values())
    settings += [f"generate.closed_loop.min_label_precision={precision}", "generate.closed_loop.target=proportions",
                 "generate.closed_loop.proportions={" + ", ".join(f'"{v}": {1 / len(reached)}' for v in reached) + "}"]
    run_generate(load_config(GenerateJob, None, settings))

    table = to_ganray_table(pq.read_table(output / "data")).sort_by("face_id").to_pylist()
    assert table, "the classifier accepted no face at all"
    labeler = build_labeler(LabelerConfig(name="classifier", model="tiny"), runs["registry"])
    for row in table:
        assert row["label_age_group"] == row["stratum"] == row["age_group"]  # asked for, and seen
        again = labeler.label(decode_png(row["image"])[None], [{}])["age_group"]
        assert again.values == (row["label_age_group"],)  # the stored label is the classifier's own
        # Stored rounded to 6 places (docs/CONTRACTS.md), as float32.
        assert np.float32(round(float(again.confidence[0]), 6)) == np.float32(row["label_age_group_confidence"])
    for row in table:  # each label was given where its held-out precision reaches the precision asked for
        needed = threshold_for_precision(curves, row["label_age_group"], precision)
        assert row["label_age_group_confidence"] >= np.float32(needed)
        k = curves["thresholds"].index(needed)
        assert curves["per_class"][row["label_age_group"]]["precision"][k] >= precision
    report = json.loads((output / "balance_report.json").read_text())
    kept = {stratum: sum(r["stratum"] == stratum for r in table) for stratum in ("child", "adult", "senior")}
    assert {r["stratum"]: r["count"] for r in report["strata"]} == kept
    assert all(kept[r["stratum"]] <= r["target"] for r in report["strata"])
    # Beside the labeler's counts: the estimated true counts and label precision, with intervals.
    assert report["true_balance"]["available"] and report["true_balance"]["labeler_version"] == "v1"
    assert sum(r["estimated_true_count"] for r in report["strata"]) == pytest.approx(len(table), abs=0.1)
    for r in report["strata"]:
        lo, hi = r["true_count_interval"]
        assert lo <= r["estimated_true_count"] <= hi
        if kept[r["stratum"]]:
            assert r["label_precision_interval"][0] <= r["label_precision"] <= r["label_precision_interval"][1]
    job = json.loads((output / "job.json").read_text())
    assert job["parameters"]["closed_loop"]["min_label_precision"] == precision
    code = cli(["generate", "--set", f"registry.url={runs['registry']}", "--set", f"generate.model={version}",
                "--set", f"generate.output={tmp_path / 'refused'}", "--set", "generate.labeler.name=conditions",
                "--set", "generate.closed_loop.strata=[age_group]", "--set", "generate.closed_loop.min_label_precision=0.9"])
    assert code == 2 and not (tmp_path / "refused").exists()
