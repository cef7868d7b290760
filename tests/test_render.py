"""Seed -> face rendering: independent of batching, truncation, conditions, deterministic PNG bytes."""
from __future__ import annotations

import copy
import struct
import zlib

import numpy as np
import pytest
import torch

from ganray.config import DCGANConfig
from ganray.images import decode_png, encode_png
from ganray.models.face import (
    cpu_has_native_bf16,
    resolve_precision,
    labels_for_conditions,
    latents_for_seeds,
    prepare_for_render,
    render_faces,
    resolve_conditions,
)
from ganray.models import build_generator

ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}


def tiny_generator(conditional: bool = False, seed: int = 0) -> Generator:
    """A small random generator whose faces use the whole pixel range (DCGAN's init at this width
    gives nearly flat grey images, which would hide rounding differences)."""
    torch.manual_seed(seed)
    cfg = DCGANConfig(z_dim=16, g_width=8, conditional=conditional, embed_dim=4)
    g = build_generator(cfg, 32, ATTRIBUTES if conditional else None)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0.0, 0.3)
    return g.eval()


def test_latents_depend_on_the_seed_alone():
    batch = latents_for_seeds([5, 6, 7], z_dim=16)
    assert torch.equal(batch[1], latents_for_seeds([6], 16)[0])
    assert torch.equal(latents_for_seeds([7, 5], 16), batch[[2, 0]])
    assert not torch.equal(batch[0], batch[1])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_faces_are_identical_across_batch_sizes_and_positions(precision):
    g = tiny_generator()
    seeds = list(range(100, 140))
    whole = render_faces(g, seeds, psi=0.7, precision=precision)
    assert whole.shape == (40, 32, 32, 3) and whole.dtype == np.uint8
    in_chunks = np.concatenate([render_faces(g, seeds[i:i + 7], psi=0.7, precision=precision)
                                for i in range(0, 40, 7)])
    one_by_one = np.concatenate([render_faces(g, [s], psi=0.7, precision=precision) for s in seeds[::-1]])[::-1]
    np.testing.assert_array_equal(whole, in_chunks)
    np.testing.assert_array_equal(whole, one_by_one)
    assert whole.std() > 20  # varied images, not flat grey


def test_truncation_pulls_every_face_to_the_mean_latent():
    g = tiny_generator()
    at_mean = render_faces(g, [1, 2, 3], psi=0.0)
    assert (at_mean == at_mean[0]).all()  # psi = 0: every seed gives the face of the mean latent
    assert not (render_faces(g, [1, 2], psi=1.0)[0] == render_faces(g, [1, 2], psi=1.0)[1]).all()
    # A model with a learned mean latent (a buffer named latent_mean) is truncated towards it.
    mean = torch.randn(16, generator=torch.Generator().manual_seed(9))
    g.register_buffer("latent_mean", mean)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = ((g(mean[None]).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    np.testing.assert_array_equal(render_faces(g, [4], psi=0.0)[0], expected[0].permute(1, 2, 0).numpy())


def test_conditions_become_labels_and_bad_ones_are_named():
    g = tiny_generator(conditional=True)
    labels = labels_for_conditions(g, {"gender": "male", "age": "senior"}, batch=3)
    assert labels.tolist() == [[1, 2]] * 3
    with pytest.raises(ValueError, match="unknown attribute 'hair'"):
        labels_for_conditions(g, {"hair": "red"}, batch=1)
    with pytest.raises(ValueError, match="unknown value 'old' for attribute 'age'"):
        labels_for_conditions(g, {"age": "old"}, batch=1)
    with pytest.raises(ValueError, match="a value for attribute 'age' is required"):
        labels_for_conditions(g, {"gender": "male"}, batch=1)
    # With seeds, attributes left open are drawn per seed, the same way every time.
    drawn = labels_for_conditions(g, {"gender": "female"}, batch=40, seeds=list(range(40)))
    assert (drawn[:, 0] == 0).all() and set(drawn[:, 1].tolist()) == {0, 1, 2}
    assert torch.equal(drawn, labels_for_conditions(g, {"gender": "female"}, 40, seeds=list(range(40))))
    assert resolve_conditions(g, None, seed=3) == resolve_conditions(g, {}, seed=3)
    with pytest.raises(ValueError, match="unconditional"):
        labels_for_conditions(tiny_generator(), {"gender": "male"}, batch=1)
    assert labels_for_conditions(tiny_generator(), None, batch=2) is None


def test_conditions_change_the_face():
    g = tiny_generator(conditional=True)
    female = render_faces(g, [7], labels=labels_for_conditions(g, {"gender": "female", "age": "young"}, 1))
    male = render_faces(g, [7], labels=labels_for_conditions(g, {"gender": "male", "age": "young"}, 1))
    assert not np.array_equal(female, male)


def test_training_mode_and_cpu_fp16_are_refused():
    g = tiny_generator().train()
    with pytest.raises(ValueError, match="training mode"):
        render_faces(g, [1])
    with pytest.raises(ValueError, match="needs a GPU"):
        render_faces(g.eval(), [1], precision="fp16")


def test_auto_precision_is_bf16_where_the_cpu_computes_it_else_fp32_and_renders_as_what_it_resolves_to():
    """auto on CPU: bf16 with AMX or AVX512-BF16, fp32 on an AVX2-only CPU (its reference bf16 kernels
    are ~35x slower). A face rendered with auto is the face of the precision it resolves to, prepared
    or not, and a generator prepared with auto records that precision."""
    resolved = resolve_precision("auto", "cpu")
    assert resolved == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cpu"), fp16=False) == resolved
    for concrete in ("fp32", "bf16", "fp16"):
        assert resolve_precision(concrete, "cpu") == concrete
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bf32", "cpu")
    g = tiny_generator(conditional=True)
    labels = labels_for_conditions(g, {}, 6, seeds=list(range(6)))
    expected = render_faces(g, list(range(6)), 0.7, labels, resolved)
    np.testing.assert_array_equal(render_faces(g, list(range(6)), 0.7, labels, "auto"), expected)
    np.testing.assert_array_equal(render_faces(g, list(range(6)), 0.7, labels), expected)  # the default
    other = {"bf16": "fp32", "fp32": "bf16"}[resolved]
    assert not np.array_equal(render_faces(g, list(range(6)), 0.7, labels, other), expected)
    prepared = prepare_for_render(copy.deepcopy(g), "auto")
    assert prepared.prepared_for_precision == resolved
    np.testing.assert_array_equal(render_faces(prepared, list(range(6)), 0.7, labels, "auto"), expected)
    with pytest.raises(ValueError, match=f"prepared to render in {resolved}"):
        render_faces(prepared, [1], 0.7, labels[:1], other)


def _png_chunk_types(data: bytes) -> list[bytes]:
    types, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        types.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return types


def test_png_bytes_are_deterministic_lossless_and_without_metadata():
    image = render_faces(tiny_generator(), [11])[0]
    data = encode_png(image)
    assert data == encode_png(image.copy())
    np.testing.assert_array_equal(decode_png(data), image)
    assert _png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]  # no time, text or gamma chunks
    assert zlib.crc32(data) == zlib.crc32(encode_png(image))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))


def _trained_looking_dcgan64(seed: int, g_width: int = 16, max_channels: int = 128):
    """A DCGAN-64 whose outputs use the whole [-1, 1] range, as a trained one does, so that many
    pixels sit near a rounding boundary."""
    from torch import nn

    torch.manual_seed(seed)
    g = build_generator(DCGANConfig(z_dim=16, g_width=g_width, max_channels=max_channels), 64)
    for bn in [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.momentum = None  # running statistics = those of the next batch
    with torch.no_grad():
        g(torch.randn(64, 16))
        g.net[-2].weight.mul_(10)
    return g.eval()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_faces_are_identical_across_batch_sizes_when_the_caller_uses_more_threads(precision):
    """Two intra-op threads made oneDNN give a face different pixels in a batch of 7 than of 16 (a
    level here and there); render_faces runs its forward pass on one thread, so they are equal, and
    the caller's thread count is left as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seeds = list(range(500, 516))
        for model_seed in range(12):
            g = _trained_looking_dcgan64(model_seed)
            whole = render_faces(g, seeds, precision=precision)
            assert torch.get_num_threads() == 2
            np.testing.assert_array_equal(whole[5:12], render_faces(g, seeds[5:12], precision=precision))
            np.testing.assert_array_equal(whole[3:4], render_faces(g, seeds[3:4], precision=precision))
            assert whole.std() > 50
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("widths", [(16, 128), (64, 512)], ids=["narrow", "default-widths"])
def test_the_prepared_fast_form_renders_the_same_bytes_whatever_the_batch(precision, widths):
    """prepare_for_render (channels_last and DCGAN's render form: what the bulk job and Serve render
    with) gives each face the bytes of the plain generator, and they still do not depend on the batch
    the face is in. The 4x4 -> 8x8 layer runs in tiles of up to 16 side-by-side images: batches of
    20 (tiles of 16 and 4), 10, 7 and 1 are checked against the plain generator's batch of 20."""
    from ganray.models.dcgan_render import TILE_INPUT_COLUMNS, LatentProjection, RenderConvTranspose

    seeds = list(range(700, 720))
    for model_seed in range(4 if widths[0] == 16 else 2):
        plain = _trained_looking_dcgan64(model_seed, *widths)
        fast = prepare_for_render(copy.deepcopy(plain), precision)
        if precision == "bf16" and not cpu_has_native_bf16():
            # oneDNN's reference bf16 kernels (AVX2-only CPUs): the rewrites gave other bytes there, so
            # prepare_for_render keeps the plain generator (the bytes and the precision guard still hold).
            assert not any(isinstance(m, (LatentProjection, RenderConvTranspose)) for m in fast.modules())
            assert fast.net[0].weight.is_contiguous()
            np.testing.assert_array_equal(render_faces(fast, seeds[:7], precision="bf16"),
                                          render_faces(plain, seeds[:7], precision="bf16"))
            with pytest.raises(ValueError, match="prepared to render in bf16"):
                render_faces(fast, seeds[:1], precision="fp32")
            continue
        assert isinstance(fast.net[0], LatentProjection)
        assert fast.net[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
        convs = [m for m in fast.net if isinstance(m, RenderConvTranspose)]
        assert len(convs) == 4 and all(m.weight_bf16.is_contiguous(memory_format=torch.channels_last)
                                       for m in convs)
        tile_widths = []  # images per tile of the tiled layer (4x4 maps: 5 columns each with the zero one)
        real_tiles = convs[0]._tiles
        convs[0]._tiles = lambda x, w, b, n: (tile_widths.append(n), real_tiles(x, w, b, n))[1]
        assert plain.net[0].weight.is_contiguous()  # a copy was prepared, not the original
        whole = render_faces(fast, seeds, precision=precision)
        np.testing.assert_array_equal(whole, render_faces(plain, seeds, precision=precision))
        np.testing.assert_array_equal(whole[3:13], render_faces(fast, seeds[3:13], precision=precision))
        np.testing.assert_array_equal(whole[5:12], render_faces(fast, seeds[5:12], precision=precision))
        np.testing.assert_array_equal(whole[3:4], render_faces(fast, seeds[3:4], precision=precision))
        assert tile_widths == [16, 4, 10, 7, 1] and TILE_INPUT_COLUMNS // 5 == 16
        other = "fp32" if precision == "bf16" else "bf16"
        with pytest.raises(ValueError, match=f"prepared to render in {precision}"):
            render_faces(fast, seeds[:1], precision=other)
        assert whole.std() > 50


def test_the_render_conv_keeps_every_setting_of_a_layer_it_does_not_tile():
    """RenderConvTranspose wraps any ConvTranspose2d: one of another shape (output padding, groups)
    is not tiled and gives the layer's own values."""
    from ganray.models.dcgan_render import RenderConvTranspose

    torch.manual_seed(0)
    conv = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2).eval()
    wrapped = RenderConvTranspose(conv)
    assert not wrapped.tileable
    x = torch.randn(3, 8, 5, 5)
    with torch.inference_mode():
        assert torch.equal(wrapped(x), conv(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(wrapped(x), conv(x))
