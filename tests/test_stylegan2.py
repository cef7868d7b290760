"""StyleGAN2 networks: shapes 32..1024, truncation per condition, style mixing, per-face noise,
average-w tracking, equalized learning rate, bf16, the registry round trip and the training steps."""
from __future__ import annotations

import copy

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ganray.config import ConfigError, DCGANConfig, StyleGAN2Config, TrainConfig, TrainJob, load_config
from ganray.models import build_generator, build_models, stylegan2
from ganray.models.face import (
    cpu_has_amx,
    labels_for_conditions,
    latents_for_seeds,
    noise_for_seeds,
    prepare_for_render,
    render_faces,
)
from ganray.models.losses import r1_penalty
from ganray.models.stylegan2 import EqualConv2d, EqualLinear, Generator
from ganray.models.stylegan2_layers import _linear_as_single_rows
from ganray.registry import Registry
from ganray.train.steps import GANSteps

ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
# Tiny widths: the structure (layers, styles, noise inputs, resampling) is the same as at full width.
TINY = dict(z_dim=16, w_dim=16, embed_dim=8, mapping_layers=2, channel_base=256, channel_max=16)


def tiny_cfg(**overrides) -> StyleGAN2Config:
    return StyleGAN2Config(**{**TINY, **overrides})


def labels_for(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(len(v), (batch,), generator=g) for v in ATTRIBUTES.values()], dim=1)


def set_noise_strength(G: Generator, value: float) -> Generator:
    with torch.no_grad():
        for layer in G.synthesis.layers:
            layer.noise_strength.fill_(value)
    return G


def generator(conditional: bool = False, seed: int = 0, noise: float = 0.5, resolution: int = 32,
              **overrides) -> Generator:
    """A tiny G with noise switched on (it starts at 0) and averages of w tracked over a few
    training-mode batches (so per-condition truncation has targets), in eval mode."""
    torch.manual_seed(seed)
    G = build_generator(tiny_cfg(conditional=conditional, **overrides), resolution,
                        ATTRIBUTES if conditional else None)
    set_noise_strength(G, noise)
    with torch.no_grad():
        for i in range(3):
            G.map(torch.randn(24, G.z_dim), labels_for(24, seed=i) if conditional else None, track=True)
    return G.eval()


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("resolution", [32, 64, 128, 256, 512, 1024])
def test_shapes_at_every_resolution(resolution, conditional):
    # channel_base = resolution: one channel at R, doubling towards 4x4 (capped at 8): cheap at 1024.
    cfg = tiny_cfg(channel_base=resolution, channel_max=8, conditional=conditional)
    G, D = build_models(cfg, resolution, ATTRIBUTES)
    assert isinstance(G, stylegan2.Generator) and isinstance(D, stylegan2.Discriminator)
    batch = 2 if resolution <= 256 else 1
    labels = labels_for(batch) if conditional else None
    images = G(torch.randn(batch, cfg.z_dim), labels)
    assert images.shape == (batch, 3, resolution, resolution) and images.dtype == torch.float32
    logits = D(images, labels)
    assert logits.shape == (batch,) and logits.dtype == torch.float32
    steps = int(math.log2(resolution)) - 2  # doublings from 4x4
    assert G.num_ws == 2 * steps + 2
    assert [r for r, _ in G.noise_inputs] == [4] + [4 * 2**(i // 2 + 1) for i in range(2 * steps)]
    assert len(D.blocks) == steps
    assert (G.z_dim, G.resolution, G.condition_names) == (16, resolution, list(ATTRIBUTES) if conditional else [])
    assert D.condition_values == (ATTRIBUTES if conditional else {})


def test_channels_follow_channel_base_and_max():
    assert stylegan2._channels(StyleGAN2Config(), 1024) == {
        4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    G = Generator(tiny_cfg(channel_base=512, channel_max=32), 64)
    assert G.synthesis.const.shape == (32, 4, 4)
    assert [layer.weight.shape[0] for layer in G.synthesis.layers] == [32, 32, 32, 32, 32, 16, 16, 8, 8]
    with pytest.raises(ValueError, match="channel_base 512 gives no channels at 1024x1024"):
        Generator(tiny_cfg(channel_base=512), 1024)
    with pytest.raises(ValueError, match="mbstd_channels 3 must divide the 16 channels at 4x4"):
        stylegan2.Discriminator(tiny_cfg(mbstd_channels=3), 32)
    with pytest.raises(ValueError, match="power of two"):
        Generator(tiny_cfg(), 48)


def test_config_by_name_and_its_resolution_range():
    job = load_config(TrainJob, None, ["model.arch=stylegan2", "data.resolution=1024", "model.w_dim=64"])
    assert isinstance(job.model, StyleGAN2Config) and job.model.w_dim == 64 and job.model.z_dim == 512
    with pytest.raises(ConfigError, match=r"data.resolution \(stylegan2\) must be a power of two between 32 and 1024"):
        load_config(TrainJob, None, ["model.arch=stylegan2", "data.resolution=16"])
    with pytest.raises(ConfigError, match="resample_filter taps must be >= 0"):
        load_config(TrainJob, None, ["model.arch=stylegan2", "model.resample_filter=[1,-3,3,1]"])
    with pytest.raises(ConfigError, match="style_mixing_prob"):
        load_config(TrainJob, None, ["model.arch=stylegan2", "model.style_mixing_prob=1.5"])
    with pytest.raises(ValueError, match="combinations of values, more than 4096"):
        Generator(tiny_cfg(conditional=True), 32, {f"a{i}": ["x", "y", "z", "w"] for i in range(7)})
    Generator(tiny_cfg(conditional=True, w_avg_per_condition=False), 32, {f"a{i}": ["x", "y", "z", "w"] for i in range(7)})


def test_psi_zero_gives_one_face_per_condition():
    # Noise is the one input truncation leaves alone (as in StyleGAN2): switch it off to compare faces.
    G = generator(conditional=True, noise=0.0)
    seeds = list(range(10, 16))
    faces = {}
    for gender, age in [("female", "young"), ("male", "senior"), ("male", "young")]:
        labels = labels_for_conditions(G, {"gender": gender, "age": age}, len(seeds))
        at_mean = render_faces(G, seeds, psi=0.0, labels=labels)
        assert (at_mean == at_mean[0]).all(), (gender, age)
        untruncated = render_faces(G, seeds[:2], psi=1.0, labels=labels[:2])
        assert not np.array_equal(untruncated[0], untruncated[1])
        # The target is this combination's own tracked average w.
        index = int(G.condition_index(labels[:1]))
        assert torch.equal(G.map(torch.randn(1, G.z_dim), labels[:1], psi=0.0)[0, 0], G.condition_latent_means[index])
        faces[(gender, age)] = at_mean[0]
    assert not np.array_equal(faces[("female", "young")], faces[("male", "senior")])
    assert not np.array_equal(faces[("male", "young")], faces[("male", "senior")])
    # A combination never seen in training falls back to the overall average w.
    G.condition_latent_updates[0] = 0
    unseen = labels_for_conditions(G, {"gender": "female", "age": "young"}, 1)
    assert torch.equal(G.map(torch.randn(1, G.z_dim), unseen, psi=0.0)[0, 0], G.latent_mean)

    unconditional = generator(noise=0.0)
    at_mean = render_faces(unconditional, seeds, psi=0.0)
    assert (at_mean == at_mean[0]).all() and at_mean.std() > 5


def test_style_mixing_at_render_time():
    G = generator(conditional=True)
    seeds, second = [1, 2, 3], [7, 8, 9]
    labels = labels_for(3)
    first_faces = render_faces(G, seeds, 0.8, labels)
    second_faces = render_faces(G, second, 0.8, labels)
    # Crossover 0: every style and noise input from the second seed: the second seed's face.
    np.testing.assert_array_equal(render_faces(G, seeds, 0.8, labels, mix_seeds=second, crossover=0), second_faces)
    np.testing.assert_array_equal(render_faces(G, seeds, 0.8, labels, mix_seeds=second, crossover=G.num_ws),
                                  first_faces)
    mixed = render_faces(G, seeds, 0.8, labels, mix_seeds=second, crossover=4)
    assert not np.array_equal(mixed, first_faces) and not np.array_equal(mixed, second_faces)
    np.testing.assert_array_equal(render_faces(G, seeds[1:2], 0.8, labels[1:2], mix_seeds=[8], crossover=4), mixed[1:2])

    for bad in (-1, G.num_ws + 1, 2.0):
        with pytest.raises(ValueError, match=f"crossover must be a layer index from 0 to {G.num_ws}"):
            render_faces(G, seeds, labels=labels, mix_seeds=second, crossover=bad)
    with pytest.raises(ValueError, match="got 2 mix_seeds for 3 seeds"):
        render_faces(G, seeds, labels=labels, mix_seeds=second[:2], crossover=1)
    with pytest.raises(ValueError, match="needs both mix_seeds and crossover"):
        render_faces(G, seeds, labels=labels, mix_seeds=second)
    dcgan = build_generator(DCGANConfig(z_dim=8, g_width=4), 32).eval()
    with pytest.raises(ValueError, match="style mixing needs a style-based generator"):
        render_faces(dcgan, [1], mix_seeds=[2], crossover=0)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_noise_comes_from_each_faces_seed(precision):
    G = generator(conditional=True)
    seeds = list(range(200, 222))
    labels = labels_for(len(seeds))
    whole = render_faces(G, seeds, 0.7, labels, precision)
    torch.manual_seed(12345)  # the global RNG plays no part
    in_chunks = np.concatenate([render_faces(G, seeds[i:i + 5], 0.7, labels[i:i + 5], precision)
                                for i in range(0, len(seeds), 5)])
    one_by_one = np.concatenate([render_faces(G, [s], 0.7, labels[i:i + 1], precision)
                                 for i, s in reversed(list(enumerate(seeds)))])[::-1]
    np.testing.assert_array_equal(whole, in_chunks)
    np.testing.assert_array_equal(whole, one_by_one)
    # The noise is there and is the seed's own: the same face without noise, or with another
    # face's noise, differs.
    without_noise = render_faces(set_noise_strength(G, 0.0), seeds[:4], 0.7, labels[:4], precision)
    assert not np.array_equal(without_noise, whole[:4])
    rows = noise_for_seeds(G, [5, 6, 7])
    assert all(torch.equal(layer[1], noise_for_seeds(G, [6])[i][0]) for i, layer in enumerate(rows))
    assert not torch.equal(rows[-1][0], rows[-1][1])


def _stylegan64(seed: int) -> Generator:
    """A StyleGAN2-64 with noise on and averages of w tracked; its faces spread over the pixel range,
    so many pixels sit near a rounding boundary."""
    return generator(conditional=True, seed=seed, z_dim=32, w_dim=32, embed_dim=16, channel_base=1024,
                     channel_max=32, resolution=64)


def test_faces_do_not_depend_on_the_batch_across_models_and_precisions():
    """bf16 batched, fp32 one face at a time on CPU: with batched fp32, a face differed by a level
    between batches of 7 and 16, and alone vs in a batch, each in 1 of these 12 models."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's thread count plays no part (render_faces uses one)
    try:
        seeds, labels = list(range(500, 516)), labels_for(16)
        for model_seed in range(12):
            G = _stylegan64(model_seed)
            for precision in ("bf16", "fp32"):
                whole = render_faces(G, seeds, 0.8, labels, precision)
                np.testing.assert_array_equal(whole[5:12], render_faces(G, seeds[5:12], 0.8, labels[5:12], precision))
                np.testing.assert_array_equal(whole[3:4], render_faces(G, seeds[3:4], 0.8, labels[3:4], precision))
                assert whole.std() > 50
    finally:
        torch.set_num_threads(before)



@pytest.mark.parametrize("mapping", [dict(z_dim=512, w_dim=512, mapping_layers=8), {}], ids=["default-width", "tiny"])
def test_rendering_maps_a_batch_in_one_call_and_each_face_as_if_alone(mapping):
    """The mapping network runs once per render (twice with mix seeds), not once per face, and every
    face's ws are the bits it gets when mapped alone (the default width goes through BLAS, the tiny
    one below BLAS_BATCHED_MIN_PRODUCTS row by row)."""
    G = generator(conditional=True, **mapping)
    seeds, labels = list(range(40, 49)), labels_for(9)
    calls = []
    hook = G.mapping.register_forward_hook(lambda module, inputs, w: calls.append(len(w)))
    try:
        render_faces(G, seeds, 0.7, labels, "fp32")
        assert calls == [9]
        calls.clear()
        render_faces(G, seeds, 0.7, labels, "fp32", mix_seeds=list(range(60, 69)), crossover=2)
        assert calls == [9, 9]
    finally:
        hook.remove()
    z = latents_for_seeds(seeds, G.z_dim)
    with torch.no_grad():
        alone = torch.cat([G.map(z[i:i + 1], labels[i:i + 1], 0.7) for i in range(9)])
        assert torch.equal(G.map(z, labels, 0.7, single_rows=True), alone)


def test_linear_as_single_rows_gives_each_row_the_bits_of_a_one_row_product():
    """Around the size where torch's CPU batched product leaves BLAS, and for batches up to a few hundred."""
    torch.manual_seed(0)
    for in_features, out_features in [(20, 19), (20, 20), (64, 7), (512, 512), (515, 256)]:
        weight, bias = torch.randn(out_features, in_features) * 0.05, torch.randn(out_features)
        for batch in (1, 2, 7, 64, 300):
            x = torch.randn(batch, in_features)
            alone = torch.cat([F.linear(x[i:i + 1], weight, bias) for i in range(batch)])
            assert torch.equal(_linear_as_single_rows(x, weight, bias), alone), (in_features, out_features, batch)

def test_off_the_cpu_the_mapping_runs_in_fixed_shape_products_whose_rows_ignore_the_batch():
    """On a GPU every mapping product has FIXED_ROWS rows (one kernel whatever the batch): checked on
    the meta device (the shapes of the products it runs) and on CPU (a row's bits do not depend on
    its batch, its position in it, or the other rows)."""
    from torch.overrides import TorchFunctionMode

    from ganray.models.stylegan2_layers import FIXED_ROWS, _linear_in_fixed_rows

    class Products(TorchFunctionMode):
        shapes: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.linear:
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    weight, bias = torch.randn(32, 16, device="meta"), torch.randn(32, device="meta")
    with Products() as products:
        out = _linear_as_single_rows(torch.randn(2 * FIXED_ROWS + 5, 16, device="meta"), weight, bias)
    assert out.shape == (2 * FIXED_ROWS + 5, 32) and products.shapes == [(FIXED_ROWS, 16)] * 3

    torch.manual_seed(0)
    weight, bias = torch.randn(512, 512) * 0.05, torch.randn(512)
    x = torch.randn(200, 512)
    alone = torch.cat([_linear_in_fixed_rows(x[i:i + 1], weight, bias) for i in range(200)])
    perm = torch.randperm(200)
    assert torch.equal(_linear_in_fixed_rows(x[perm], weight, bias), alone[perm])
    for batch in (3, 64, 65, 130):
        parts = [_linear_in_fixed_rows(x[s:s + batch], weight, bias) for s in range(0, 200, batch)]
        assert torch.equal(torch.cat(parts), alone), batch


def test_the_prepared_form_renders_the_plain_generators_bytes_and_only_in_its_precision():
    """prepare_for_render puts a style-based generator in channels_last for bf16 (what the bulk job
    and Serve render with): the same bytes as the plain generator, whatever the batch; for fp32 it
    stays as it is (there channels_last changed a pixel in ~10^4). A generator prepared for one
    precision refuses to render in another."""
    seeds, labels = list(range(500, 516)), labels_for(16)
    for model_seed in range(6):
        plain = _stylegan64(model_seed)
        fast = prepare_for_render(copy.deepcopy(plain), "bf16")
        # channels_last on a CPU with AMX only: oneDNN's reference bf16 kernels (AVX2-only CPUs) and
        # its AVX512-BF16 kernels (AMD EPYC Zen 5) gave other bytes in it, so there the plain layout is kept.
        layout = torch.channels_last if cpu_has_amx() else torch.contiguous_format
        assert fast.synthesis.layers[0].weight.is_contiguous(memory_format=layout)
        whole = render_faces(fast, seeds, 0.8, labels, "bf16")
        np.testing.assert_array_equal(whole, render_faces(plain, seeds, 0.8, labels, "bf16"))
        np.testing.assert_array_equal(whole[5:12], render_faces(fast, seeds[5:12], 0.8, labels[5:12], "bf16"))
        np.testing.assert_array_equal(whole[3:4], render_faces(fast, seeds[3:4], 0.8, labels[3:4], "bf16"))
        assert whole.std() > 50
    with pytest.raises(ValueError, match="prepared to render in bf16"):
        render_faces(fast, seeds[:1], 0.8, labels[:1], "fp32")
    kept = prepare_for_render(copy.deepcopy(plain), "fp32")
    assert kept.synthesis.layers[0].weight.is_contiguous()
    np.testing.assert_array_equal(render_faces(kept, seeds[:3], 0.8, labels[:3], "fp32"),
                                  render_faces(plain, seeds[:3], 0.8, labels[:3], "fp32"))


def test_average_w_is_tracked_in_training_mode_only():
    torch.manual_seed(0)
    G = build_generator(tiny_cfg(conditional=True, w_avg_beta=0.9), 32, ATTRIBUTES)
    z, labels = torch.randn(6, 16), torch.tensor([[0, 0], [0, 0], [1, 2], [1, 2], [1, 2], [0, 0]])
    w = G.mapping(z, stylegan2._label_codes(labels, [2, 3])).detach()
    G.eval()
    G(z, labels)
    assert int(G.latent_mean_updates) == 0 and not G.latent_mean.any()
    G.train()
    G.style_mixing_prob = 0.0
    G(z, labels)
    torch.testing.assert_close(G.latent_mean, w.mean(0))  # the first update sets the average
    G(z[:2], labels[:2])
    torch.testing.assert_close(G.latent_mean, torch.lerp(w[:2].mean(0), w.mean(0), 0.9))
    assert int(G.latent_mean_updates) == 2
    # Per combination: (female, young) = index 0 seen twice, (male, senior) = index 5 once.
    assert G.condition_latent_updates.tolist() == [2, 0, 0, 0, 0, 1]
    torch.testing.assert_close(G.condition_latent_means[5], w[2:5].mean(0))
    first = w[[0, 1, 5]].mean(0)
    torch.testing.assert_close(G.condition_latent_means[0], torch.lerp(w[:2].mean(0), first, 0.9))
    assert not G.condition_latent_means[1:5].any()
    G.eval()
    before = G.state_dict()["latent_mean"].clone()
    render_faces(G, [1, 2], labels=labels[:2])
    assert torch.equal(G.latent_mean, before)


def test_style_mixing_in_training_mode_follows_its_probability():
    torch.manual_seed(0)
    G = build_generator(tiny_cfg(style_mixing_prob=1.0), 32).train()
    z = torch.randn(3, 16)
    noise = noise_for_seeds(G, [1, 2, 3])
    with torch.no_grad():
        unmixed = G.synthesis(G.map(z, track=False), noise)
        assert not torch.equal(G(z, noise=noise), unmixed)  # always mixed at p = 1
        G.style_mixing_prob = 0.0
        assert torch.equal(G(z, noise=noise), unmixed)
        G.style_mixing_prob = 1.0
        assert torch.equal(G.eval()(z, noise=noise), unmixed)  # never in eval mode


def test_equalized_learning_rate():
    torch.manual_seed(0)
    cfg = StyleGAN2Config(conditional=True, channel_base=2048, channel_max=256, mapping_lr_mult=0.01)
    G, D = build_models(cfg, 32, ATTRIBUTES)
    for name, module in [*G.named_modules(), *D.named_modules()]:
        if isinstance(module, EqualLinear) and module.weight.numel() > 1000:
            lr_mult = 0.01 if name.startswith(("mapping.layers", "label_mapping.layers")) else 1.0
            assert module.bias_gain == lr_mult, name
            # Stored N(0, 1/lr_mult^2); used as N(0, 1) * lr_mult / sqrt(fan_in).
            assert abs(module.weight.std().item() * lr_mult - 1) < 0.1, name
            assert module.weight_gain == pytest.approx(lr_mult / math.sqrt(module.weight.shape[1])), name
        if isinstance(module, EqualConv2d) and module.weight.numel() > 1000:
            assert abs(module.weight.std().item() - 1) < 0.1, name
            assert module.weight_gain == pytest.approx(1 / math.sqrt(module.weight[0].numel())), name
    for layer in G.synthesis.layers:  # modulated convs: raw N(0, 1), demodulation normalises
        assert abs(layer.weight.std().item() - 1) < 0.1
    # The runtime scaling is what the forward pass computes with.
    fc = EqualLinear(64, 8, bias_init=0.5, lr_mult=0.1, activation=False)
    x = torch.randn(4, 64)
    torch.testing.assert_close(fc(x), F.linear(x, fc.weight * 0.1 / 8, fc.bias * 0.1))
    assert fc.bias.detach().mul(0.1).eq(0.5).all()  # biases start at their init value, whatever lr_mult
    conv = EqualConv2d(4, 6, 3, activation=False)
    images = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(conv(images), F.conv2d(images, conv.weight / 6, conv.bias, padding=1))


def test_bf16_autocast_forward_backward_and_r1_on_cpu():
    torch.manual_seed(0)
    G, D = build_models(tiny_cfg(conditional=True), 32, ATTRIBUTES)
    labels = labels_for(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = G(torch.randn(4, 16), labels)
        logits = D(fake, labels)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    F.softplus(-logits).mean().backward()
    for name, p in [*G.named_parameters(), *D.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert G.synthesis.layers[-1].noise_strength.grad != 0  # noise strengths learn
    penalty = r1_penalty(D, torch.rand(4, 3, 32, 32) * 2 - 1, labels)  # double backward through D
    assert torch.isfinite(penalty) and penalty > 0


def test_the_existing_training_steps_run_it_with_deterministic_kernels():
    torch.manual_seed(0)
    G, D = build_models(tiny_cfg(conditional=True), 32, ATTRIBUTES)
    G_ema = build_generator(tiny_cfg(conditional=True), 32, ATTRIBUTES).eval().requires_grad_(False)
    steps = GANSteps(G, D, G_ema, TrainConfig(batch_size=4, num_workers=1, r1_gamma=1.0), 16, torch.device("cpu"))
    labels = labels_for(4)
    torch.use_deterministic_algorithms(True)  # as train.deterministic sets it: no op may lack a deterministic kernel
    try:
        result = steps.discriminator_step(torch.rand(4, 3, 32, 32) * 2 - 1, labels)
        loss = steps.generator_step(4, labels, step=0)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.isfinite(result.loss) and torch.isfinite(loss)
    # G_ema takes G's tracked averages of w with its buffers.
    assert int(G.latent_mean_updates) >= 2 and torch.equal(G_ema.latent_mean, G.latent_mean)
    assert torch.equal(G_ema.condition_latent_means, G.condition_latent_means)


def test_build_by_name_and_registry_round_trip_render_the_same_bytes(tmp_path):
    model = {"arch": "stylegan2", **TINY, "conditional": True}
    G = generator(conditional=True)
    registry = Registry(str(tmp_path / "registry"))
    version = registry.push(G.state_dict(), model, 32, ATTRIBUTES, {"run_name": "t"})
    loaded = registry.load_generator(version).generator
    assert isinstance(loaded, stylegan2.Generator) and not loaded.training
    assert torch.equal(loaded.condition_latent_means, G.condition_latent_means)
    labels = labels_for(4)
    for kwargs in ({"psi": 0.6}, {"psi": 1.0, "mix_seeds": [9, 8, 7, 6], "crossover": 3}):
        np.testing.assert_array_equal(render_faces(loaded, [1, 2, 3, 4], labels=labels, **kwargs),
                                      render_faces(G, [1, 2, 3, 4], labels=labels, **kwargs))


def test_mapping_network_depth_and_width_are_configurable():
    """mapping_layers fully connected layers; the hidden ones mapping_width wide (default w_dim), the last w_dim."""
    G = build_generator(StyleGAN2Config(**{**TINY, "mapping_layers": 3, "mapping_width": 24}), 32, None)
    widths = [(layer.weight.shape[1], layer.weight.shape[0]) for layer in G.mapping.layers]
    assert widths == [(16, 24), (24, 24), (24, 16)]  # z_dim -> 24 -> 24 -> w_dim
    default = build_generator(StyleGAN2Config(**{**TINY, "mapping_layers": 3}), 32, None)
    assert [layer.weight.shape[0] for layer in default.mapping.layers] == [16, 16, 16]
    assert G(torch.randn(2, 16), None).shape == (2, 3, 32, 32)
