"""Typed configs: bad keys, types and values fail before any Ray work, naming the key, exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ganray.config import ConfigError, ImportJob, TrainJob, load_config

REPO = Path(__file__).resolve().parents[1]
# Ganray job configs; a Ray Serve config file (top-level `applications`) is checked by the Serve tests.
CONFIGS = [p for p in sorted((REPO / "configs").glob("*.yaml")) if "applications" not in p.read_text()]


def test_demo_config_loads_with_overrides():
    job = load_config(TrainJob, REPO / "configs" / "demo.yaml",
                      ["train.batch_size=32", "model.spectral_norm=true", "run.name=x"])
    assert job.train.batch_size == 32
    assert job.model.spectral_norm is True
    assert job.run.name == "x"


@pytest.mark.parametrize("override, names", [
    ("train.batch_sizee=64", ["train.batch_sizee", "unknown key"]),
    ("train.batch_size=lots", ["train.batch_size", "integer"]),
    ("data.resolution=48", ["data.resolution", "power of two"]),
    ("train.batch_size=1", ["train.batch_size", "num_workers"]),
    ("train.g_lr=0", ["train.g_lr", "learning rate must be > 0"]),
    ("train.d_lr=-1e-4", ["train.d_lr", "> 0"]),
    ("train.loss=wasserstein", ["train.loss"]),
    ("train.precision=fp16", ["fp16", "use_gpu"]),
    ("data.source=shards", ["data.url"]),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(TrainJob, REPO / "configs" / "demo.yaml", [override])
    for name in names:
        assert name in str(err.value)


def test_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(TrainJob, None, ["train.batch_size"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainJob, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainJob, bad)
    with pytest.raises(ConfigError, match="train.batch_size.x: 'batch_size' is a value"):
        load_config(TrainJob, REPO / "configs" / "demo.yaml", ["train.batch_size.x=1"])


def test_import_config_requires_src_and_dst():
    with pytest.raises(ConfigError, match="import.src: required"):
        load_config(ImportJob, None, ["import.dst=/tmp/x"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_ganray_config_is_valid(path):
    """Each YAML in configs/ that is a ganray job config validates as its job type."""
    import yaml

    from ganray import config as C

    tree = yaml.safe_load(path.read_text())
    job_types = [C.TrainJob, C.ImportJob] + [getattr(C, n) for n in ("GenerateJob", "ServeJob", "EvalJob", "HumanEvalJob", "UtilityJob", "MonitorJob", "RetrainJob") if hasattr(C, n)]
    job_types += [C.LabelerTrainJob, C.LabelerEvalJob]
    errors = []
    for job_type in job_types:
        try:
            job_type.model_validate(tree)
            return
        except Exception as e:  # noqa: BLE001 - collect and report every type's complaint
            errors.append(f"{job_type.__name__}: {e}")
    pytest.fail(f"{path.name} is not a valid ganray config:\n" + "\n".join(errors))


def test_cli_config_error_exits_2_before_ray(tmp_path):
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--config", str(REPO / "configs" / "demo.yaml"),
         "--set", "train.batch_sizee=64", "--set", f"run.storage_path={storage}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "train.batch_sizee: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not storage.exists()  # nothing written


EXPECTED_COMMANDS = {"demo", "train", "data", "registry", "generate", "samples", "report", "eval", "labeler", "serve",
                     "lineage", "card", "studio", "monitor", "retrain"}


def test_every_subcommand_registers_and_answers_help():
    """Each subcommand is registered (a module that fails to import is an error, not a missing
    command) and `ganray NAME --help` exits 0 in a fresh process, nested actions included."""
    from ganray.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == EXPECTED_COMMANDS
    nested = {"data": ["import", "list", "show"], "registry": ["push", "list", "show", "promote", "history"]}
    nested["labeler"] = ["train", "eval", "list", "show", "promote"]
    nested["eval"] = ["utility"]
    for name in sorted(EXPECTED_COMMANDS):
        for argv in [[name]] + [[name, action] for action in nested.get(name, [])]:
            proc = subprocess.run([sys.executable, "-m", "ganray.cli", *argv, "--help"],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (argv, proc.stderr)
            assert proc.stdout.startswith("usage: ganray " + " ".join(argv)), proc.stdout[:200]


def test_model_arch_picks_the_config_class_and_names_bad_keys():
    from ganray.config import MODEL_CONFIGS, DCGANConfig, TrainJob, parse_model_config

    job = load_config(TrainJob, None, ["model.g_width=32"])
    assert isinstance(job.model, DCGANConfig) and job.model.arch == "dcgan" and job.model.g_width == 32
    assert job.model_dump()["model"]["g_width"] == 32  # the subclass's fields survive dumping
    assert parse_model_config({"arch": "dcgan", "z_dim": 8}).z_dim == 8
    with pytest.raises(ConfigError, match=r"model.arch: unknown architecture 'nope'; known: dcgan"):
        load_config(TrainJob, None, ["model.arch=nope"])
    with pytest.raises(ConfigError, match=r"  model.g_widthh: unknown key"):
        load_config(TrainJob, None, ["model.g_widthh=3"])
    with pytest.raises(ConfigError, match=r"  model.g_widthh: unknown key"):
        parse_model_config({"arch": "dcgan", "g_widthh": 3})
    assert set(MODEL_CONFIGS) == {"dcgan", "stylegan2"}


@pytest.mark.parametrize("resolution,ok", [(16, False), (32, True), (256, True), (512, False)])
def test_resolution_rule_belongs_to_the_architecture(resolution, ok):
    from ganray.config import DCGANConfig, TrainJob

    overrides = [f"data.resolution={resolution}"]
    if ok:
        assert load_config(TrainJob, None, overrides).data.resolution == resolution
        return
    with pytest.raises(ConfigError, match=r"data.resolution \(dcgan\) must be a power of two between "
                                          rf"{DCGANConfig.min_resolution} and {DCGANConfig.max_resolution}"):
        load_config(TrainJob, None, overrides)


def test_ray_address_is_top_level_in_every_job_config():
    from ganray import config as C

    for job_type in (C.TrainJob, C.ImportJob, C.GenerateJob, C.ServeJob):
        assert "ray_address" in job_type.model_fields, job_type.__name__
    with pytest.raises(ConfigError, match="run.ray_address: unknown key"):
        load_config(C.TrainJob, None, ["run.ray_address=auto"])


def test_a_generated_training_source_with_the_local_runner_is_refused_naming_both_keys():
    from ganray.config import LabelerTrainJob

    with pytest.raises(ConfigError, match="source.use 'generated' needs train.runner 'ray'"):
        load_config(LabelerTrainJob, None, ["train.runner=local", "train.num_workers=1", "source.use=generated",
                                            "source.generated=/tmp/out"])
