"""`ganray samples VERSION`: the psi sweep and style-mixing grids of registry versions (no Ray needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ganray.cli import main as cli
from ganray.config import DCGANConfig, StyleGAN2Config
from ganray.images import decode_png
from ganray.models import build_generator
from ganray.models.face import labels_for_conditions, render_faces
from ganray.registry import Registry

ATTRIBUTES = {"age": ["young", "old"], "smile": ["no", "yes"]}
R = 32
DCGAN = DCGANConfig(z_dim=16, g_width=8, max_channels=32, conditional=True, embed_dim=4)
STYLEGAN2 = StyleGAN2Config(z_dim=16, w_dim=16, embed_dim=8, mapping_layers=2, channel_base=256, channel_max=16,
                            conditional=True)
SEEDS, SOURCES = [3, 4, 5, 6], [20, 21, 22]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1: a conditional DCGAN; v2: a conditional StyleGAN2 with tracked average w per condition and its
    noise off (psi = 0 then pins the face per condition); v3: the same StyleGAN2 with noise on."""
    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    torch.manual_seed(0)
    dcgan = build_generator(DCGAN, R, ATTRIBUTES)
    with torch.no_grad():
        for p in dcgan.parameters():
            p.normal_(0.0, 0.3)
    registry.push(dcgan.state_dict(), DCGAN.model_dump(), R, ATTRIBUTES, {"test": True})
    torch.manual_seed(1)
    stylegan2 = build_generator(STYLEGAN2, R, ATTRIBUTES)
    with torch.no_grad():  # an average w per condition (all 4 combinations) for truncation to pull towards
        every_combination = torch.tensor([[a, s] for a in range(2) for s in range(2)] * 2)
        for _ in range(3):
            stylegan2.map(torch.randn(8, STYLEGAN2.z_dim), every_combination, track=True)
    registry.push(stylegan2.state_dict(), STYLEGAN2.model_dump(), R, ATTRIBUTES, {"test": True})
    with torch.no_grad():
        for layer in stylegan2.synthesis.layers:
            layer.noise_strength.fill_(0.5)
    registry.push(stylegan2.state_dict(), STYLEGAN2.model_dump(), R, ATTRIBUTES, {"test": True})
    return registry


def cells(path, rows: int, cols: int) -> np.ndarray:
    """A grid PNG back into its (rows, cols, R, R, 3) cells."""
    image = decode_png(path.read_bytes())
    assert image.shape == (rows * R, cols * R, 3)
    return image.reshape(rows, R, cols, R, 3).transpose(0, 2, 1, 3, 4)


def run(registry, version: str, out, *extra: str) -> int:
    return cli(["samples", version, "--registry", registry.url, "--out", str(out),
                "--seeds", ",".join(map(str, SEEDS)), "--mix-sources", ",".join(map(str, SOURCES)), *extra])


def test_stylegan2_grids_are_render_faces_faces(registry, tmp_path, capsys):
    out = tmp_path / "v2"
    assert run(registry, "v2", out, "--psi-steps", "3", "--condition", "age=old", "--crossover", "2",
               "--psi", "0.8") == 0
    assert "style mixing (sources [20, 21, 22] x destinations [3, 4, 5, 6], crossover 2 of 8)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["psi_sweep.png", "samples.json", "style_mixing.png"]
    index = json.loads((out / "samples.json").read_text())
    assert index["psi_sweep"]["columns_psi"] == [0.0, 0.5, 1.0] and index["style_mixing"]["crossover"] == 2

    G = registry.load_generator("v2").generator
    sweep = cells(out / "psi_sweep.png", len(SEEDS), 3)
    labels = labels_for_conditions(G, {"age": "old"}, len(SEEDS), seeds=SEEDS)
    for j, psi in enumerate([0.0, 0.5, 1.0]):
        np.testing.assert_array_equal(sweep[:, j], render_faces(G, SEEDS, psi, labels))
    # psi = 0: one face per condition (noise is off in v2); the open attribute (smile) is drawn per seed.
    smiles = labels[:, 1].tolist()  # the smile value index of each row
    for a in range(len(SEEDS)):
        for b in range(len(SEEDS)):
            assert np.array_equal(sweep[a, 0], sweep[b, 0]) == (smiles[a] == smiles[b])
    assert len(set(smiles)) == 2  # both conditions occur, so the check above saw equal and unequal pairs

    grid = cells(out / "style_mixing.png", 1 + len(SEEDS), 1 + len(SOURCES))
    assert not grid[0, 0].any()  # the empty corner
    source_labels = labels_for_conditions(G, {"age": "old"}, len(SOURCES), seeds=SOURCES)
    np.testing.assert_array_equal(grid[0, 1:], render_faces(G, SOURCES, 0.8, source_labels))
    np.testing.assert_array_equal(grid[1:, 0], render_faces(G, SEEDS, 0.8, labels))
    for i, destination in enumerate(SEEDS):
        np.testing.assert_array_equal(grid[1 + i, 1:], render_faces(G, SOURCES, 0.8, source_labels,
                                                                    mix_seeds=[destination] * 3, crossover=2))
        assert not np.array_equal(grid[1 + i, 1:], grid[0, 1:])  # the destination's fine styles show


def test_psi_zero_with_every_condition_fixed_is_one_face_unless_noise_is_on(registry, tmp_path):
    fixed = ("--condition", "age=young", "--condition", "smile=yes")
    assert run(registry, "v2", tmp_path / "quiet", "--psi-steps", "2", *fixed) == 0
    quiet = cells(tmp_path / "quiet" / "psi_sweep.png", len(SEEDS), 2)
    assert (quiet[:, 0] == quiet[0, 0]).all() and not (quiet[:, 1] == quiet[0, 1]).all()
    assert run(registry, "v3", tmp_path / "noisy", "--psi-steps", "2", *fixed) == 0
    noisy = cells(tmp_path / "noisy" / "psi_sweep.png", len(SEEDS), 2)
    assert not (noisy[:, 0] == noisy[0, 0]).all()  # each face's own noise inputs


def test_dcgan_gets_the_psi_sweep_and_a_message_about_mixing(registry, tmp_path, capsys):
    out = tmp_path / "v1"
    assert run(registry, "v1", out, "--condition", "age=young", "--condition", "smile=no") == 0
    printed = capsys.readouterr().out
    assert "no style-mixing grid: it is a dcgan with a single latent input" in printed
    assert sorted(p.name for p in out.iterdir()) == ["psi_sweep.png", "samples.json"]
    sweep = cells(out / "psi_sweep.png", len(SEEDS), 6)  # default: 6 psi values
    assert (sweep[:, 0] == sweep[0, 0]).all() and not (sweep[:, -1] == sweep[0, -1]).all()
    G = registry.load_generator("v1").generator
    labels = labels_for_conditions(G, {"age": "young", "smile": "no"}, len(SEEDS), seeds=SEEDS)
    np.testing.assert_array_equal(sweep[:, 2], render_faces(G, SEEDS, 0.4, labels))


@pytest.mark.parametrize("args, message", [
    (("v2", "--crossover", "9"), "--crossover must be a w index from 0 to 8"),
    (("v9",), "unknown model 'v9'"),
    (("v2", "--seeds", "1,x"), "--seeds: expected comma-separated"),
    (("v2", "--psi-steps", "1"), "a psi sweep needs at least 2 steps"),
    (("v2", "--psi", "2.5"), "--psi must be from 0.0 to 2.0"),
    (("v2", "--condition", "hair=red"), "--condition: unknown attribute 'hair'"),
    (("v2", "--condition", "age"), "--condition: expected NAME=VALUE"),
])
def test_bad_input_exits_2_and_writes_nothing(registry, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert cli(["samples", *args, "--registry", registry.url, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
