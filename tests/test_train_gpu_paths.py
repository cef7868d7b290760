"""What the training step does to a GPU, checked on CPU: rendering leaves the process's kernel
flags alone, a non-log step never waits for the device, batches travel as uint8 and are read one
ahead, and no op of a DCGAN or StyleGAN2 step lacks a deterministic CUDA kernel.

Host syncs are counted by recorders of the calls that make the host wait for a device: tensor to
Python number or list, `.numpy()`, and the aten ops with data-dependent output (nonzero and
friends) or a copy from the device to the host."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import ray
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from ganray.config import DCGANConfig, StyleGAN2Config, TrainConfig
from ganray.data.batches import BatchPrefetcher, host_batch, to_unit_range
from ganray.data.dataset import EpochSampler, IndexedRows, to_training_batch
from ganray.models import build_generator, build_models
from ganray.models.face import render_faces
from ganray.train.loop import MetricsWindow
from ganray.train.steps import GANSteps

ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "adult", "senior"]}
TINY_SG2 = dict(z_dim=16, w_dim=16, embed_dim=8, mapping_layers=2, channel_base=256, channel_max=16)
# Every regularizer and ADA adjusting p at every minibatch: all code paths of a step run.
FULL_STEP = dict(batch_size=8, num_workers=1, precision="fp32", augment="bgc", augment_p=0.5, ada_target=0.6,
                 ada_interval=1, r1_gamma=1.0, r1_interval=2)


# ---------------------------------------------------------------------------------------------
# 1. Rendering scopes cuDNN's and TF32's flags to itself

def cuda_kernel_flags() -> tuple[bool, ...]:
    return (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32)


def test_render_faces_sets_deterministic_kernels_only_while_it_renders():
    """A training rank renders sample grids and evaluations: afterwards it must train with the
    kernels its own flags choose, like every other rank."""
    g = build_generator(DCGANConfig(z_dim=16, g_width=8), 32, None).eval()
    during = []
    g.register_forward_hook(lambda *_: during.append(cuda_kernel_flags()))
    saved = cuda_kernel_flags()
    process = (False, True, True, True)  # what a training process may run with
    try:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = process
        render_faces(g, [1, 2])
        assert during == [(True, False, False, False)]
        assert cuda_kernel_flags() == process
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved


# ---------------------------------------------------------------------------------------------
# 2. No host sync in a step that does not log

SYNC_METHODS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
                torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__}
SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "aten::_unique2",
            "aten::unique_consecutive", "aten::unique_dim", "aten::repeat_interleave"}


FACTORIES = {torch.rand, torch.randn, torch.randint, torch.tensor, torch.as_tensor, torch.zeros, torch.ones,
             torch.full, torch.empty, torch.arange, torch.scalar_tensor}


class HostSyncs(TorchFunctionMode):
    """Records every call that makes the host wait for a device, except on tensors that live on the
    host in every run: those made without naming a device (a model's host-side coin flips), what is
    computed from them alone, and `host_side` (Adam's step counters, on the host by torch.optim's
    default)."""

    def __init__(self, host_side: list[torch.Tensor]):
        super().__init__()
        self.host_tensors = list(host_side)  # kept alive, so that their ids stay theirs
        self.host_side = {id(t) for t in host_side}
        self.calls: list[str] = []
        self._ops = _SyncOps(self)

    def __enter__(self):
        self._ops.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._ops.__exit__(*exc)

    def on_host(self, args) -> bool:
        return bool(args) and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host_side

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_METHODS and not self.on_host(args):
            self.calls.append(func.__name__)
        out = func(*args, **kwargs)
        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        made_on_host = func in FACTORIES and kwargs.get("device") is None
        if isinstance(out, torch.Tensor) and (made_on_host or (inputs and all(id(a) in self.host_side
                                                                               for a in inputs))):
            self.host_tensors.append(out)
            self.host_side.add(id(out))
        return out


class _SyncOps(TorchDispatchMode):
    def __init__(self, syncs: HostSyncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        to_host = name in ("aten::_to_copy", "aten::copy_") and any(
            isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args) and (
            (kwargs or {}).get("device") == torch.device("cpu")
            or (name == "aten::copy_" and args[0].device.type == "cpu"))
        if (name in SYNC_OPS or to_host) and not self.syncs.on_host(args):
            self.syncs.calls.append(name)
        return func(*args, **(kwargs or {}))


def adam_step_counters(steps: GANSteps) -> list[torch.Tensor]:
    return [s["step"] for opt in (steps.opt_G, steps.opt_D) for s in opt.state.values() if "step" in s]


def batch_of(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return torch.rand(8, 3, 32, 32, generator=g) * 2 - 1, torch.stack(
        [torch.randint(0, 2, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)], 1)


@pytest.mark.parametrize("model", [DCGANConfig(g_width=8, d_width=8, z_dim=16, conditional=True, embed_dim=4),
                                   StyleGAN2Config(**TINY_SG2, conditional=True)], ids=["dcgan", "stylegan2"])
def test_a_step_that_does_not_log_never_waits_for_the_device(model):
    torch.manual_seed(0)
    G, D = build_models(model, 32, ATTRIBUTES)
    train = {**FULL_STEP, **({"pl_weight": 2.0, "pl_interval": 2} if model.arch == "stylegan2" else {})}
    steps = GANSteps(G, D, copy.deepcopy(G).eval(), TrainConfig(**train), model.z_dim, torch.device("cpu"))
    window = MetricsWindow()

    def step(i: int) -> None:
        real, labels = batch_of(i)
        d = steps.discriminator_step(real, labels, d_index=i)
        window.add(d, steps.generator_step(8, labels, i), probabilities=True)

    step(0)  # the optimizers create their state
    with HostSyncs(adam_step_counters(steps)) as syncs:
        for i in range(1, 5):  # R1, path length and ADA's adjustment all run in these
            step(i)
    assert syncs.calls == []
    with HostSyncs(adam_step_counters(steps)) as at_log:  # the recorder sees what a log step reads
        window.means(), steps.augment.p, steps.ada_pending()
    assert "tolist" in at_log.calls and "__float__" in at_log.calls


def test_a_labeler_step_that_does_not_report_never_waits_for_the_device():
    """The attribute classifier's loop: its step and metric sums stay on the device between reports."""
    import contextlib

    from ganray.config import ClassifierModelConfig
    from ganray.labels.train import StepMetrics, classifier_step
    from ganray.models.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierModelConfig(width=8, max_channels=16, feature_dim=16, dropout=0.1), 32,
                             ATTRIBUTES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    names, window = list(ATTRIBUTES), StepMetrics()

    def step(i: int) -> None:
        x, labels = batch_of(i)
        window.add(classifier_step(model, opt, x, labels, names, contextlib.nullcontext()))

    step(0)  # the optimizer creates its state
    with HostSyncs([s["step"] for s in opt.state.values()]) as syncs:
        for i in range(1, 5):
            step(i)
    assert syncs.calls == []
    with HostSyncs([]) as at_report:
        means = window.means()
    assert at_report.calls == ["tolist"] and sorted(means) == sorted(["loss", "train_acc_gender", "train_acc_age"])
    assert window.count == 0 and 0 <= means["train_acc_age"] <= 1


# ---------------------------------------------------------------------------------------------
# 3. Batches: uint8 until on the device, the next one read while a step runs

def indexed_rows(n: int = 24) -> IndexedRows:
    rng = np.random.default_rng(0)
    blocks = [{"image": rng.integers(0, 256, (n // 2, 8, 8, 3), dtype=np.uint8),
               "gender": rng.integers(0, 2, n // 2), "age": rng.integers(0, 3, n // 2)} for _ in range(2)]
    return IndexedRows([ray.put(b) for b in blocks], [n // 2, n // 2], ["image", "gender", "age"])


class Transfers(TorchFunctionMode):
    """The dtype of every tensor moved with .to(device=...)."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[torch.dtype] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to and args and isinstance(args[0], torch.Tensor):
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_batches_travel_as_uint8_are_read_one_ahead_and_match_the_float_batches(ray_session):
    rows = indexed_rows()
    sampler = EpochSampler(rows.num_rows, 4, seed=3, hflip=True)
    batches = BatchPrefetcher(rows, sampler, ["age", "gender"], torch.device("cpu"))
    reference = EpochSampler(rows.num_rows, 4, seed=3, hflip=True)
    try:
        for k in range(8):  # over an epoch boundary (6 batches an epoch)
            with Transfers() as moved:
                real, labels = batches.next()
            # The batch after this one was drawn before this step's work starts, and a checkpoint
            # taken now resumes at it.
            assert sampler.state_dict() == {"epoch": (k + 2) // 6, "batch": (k + 2) % 6}
            assert batches.state_dict() == {"epoch": (k + 1) // 6, "batch": (k + 1) % 6}
            assert moved.dtypes == [torch.uint8, torch.int64]
            indices, flip = reference.next()
            expected, expected_labels = to_training_batch(rows.read(indices), flip, ["age", "gender"])
            assert torch.equal(real, expected) and torch.equal(labels, expected_labels)
    finally:
        batches.close()


def test_host_batch_then_unit_range_is_to_training_batch():
    rng = np.random.default_rng(1)
    batch = {"image": rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8), "a": rng.integers(0, 3, 5)}
    flip = np.array([True, False, True, True, False])
    images, labels = host_batch(batch, flip)
    assert images.dtype == torch.uint8
    # The same values worked out independently in numpy: NCHW, x / 127.5 - 1, flipped rows mirrored.
    pixels = batch["image"].astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    pixels = np.where(flip[:, None, None, None], pixels[:, :, ::-1], pixels).transpose(0, 3, 1, 2)
    expected = (torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(batch["a"][:, None].astype(np.int64)))
    assert torch.equal(to_unit_range(images), expected[0]) and torch.equal(labels, expected[1])
    assert all(torch.equal(a, b) for a, b in zip(to_training_batch(batch, flip), expected))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batches_for_a_cuda_device_come_from_pinned_memory(ray_session):
    rows = indexed_rows()
    batches = BatchPrefetcher(rows, EpochSampler(rows.num_rows, 4, seed=3), None, torch.device("cuda"))
    try:
        real, _ = batches.next()
        images, labels = batches._next.result()
        assert images.is_pinned() and labels.is_pinned() and real.is_cuda and real.dtype == torch.float32
    finally:
        batches.close()


# ---------------------------------------------------------------------------------------------
# 4. No op of a training step lacks a deterministic CUDA kernel

# The ops that "will throw a RuntimeError when mode=True" on CUDA, from the docstring of
# torch.use_deterministic_algorithms (PyTorch 2.13; docs.pytorch.org/docs/stable/generated/
# torch.use_deterministic_algorithms.html), as the aten ops they dispatch to. Ops listed there only
# for some arguments carry a check of those arguments; quantized resize_ cannot occur here.
NONDETERMINISTIC_ON_CUDA = {
    "aten::avg_pool3d_backward": None,                     # AvgPool3d, backward
    "aten::_adaptive_avg_pool2d_backward": None,           # AdaptiveAvgPool2d, backward
    "aten::_adaptive_avg_pool3d_backward": None,           # AdaptiveAvgPool3d, backward
    "aten::adaptive_max_pool2d_backward": None,            # AdaptiveMaxPool2d, backward
    "aten::fractional_max_pool2d_backward": None,          # FractionalMaxPool2d, backward
    "aten::fractional_max_pool3d_backward": None,          # FractionalMaxPool3d, backward
    "aten::max_unpool2d": None,                            # MaxUnpool1d, MaxUnpool2d
    "aten::max_unpool3d": None,                            # MaxUnpool3d
    "aten::upsample_linear1d_backward": None,              # interpolate linear, backward
    "aten::upsample_bilinear2d_backward": None,            # interpolate bilinear, backward
    "aten::_upsample_bilinear2d_aa_backward": None,
    "aten::upsample_bicubic2d_backward": None,             # interpolate bicubic, backward
    "aten::_upsample_bicubic2d_aa_backward": None,
    "aten::upsample_trilinear3d_backward": None,           # interpolate trilinear, backward
    "aten::reflection_pad1d_backward": None,               # ReflectionPad1d/2d/3d, backward
    "aten::reflection_pad2d_backward": None,
    "aten::reflection_pad3d_backward": None,
    "aten::nll_loss_forward": None,                        # NLLLoss
    "aten::nll_loss2d_forward": None,
    "aten::_ctc_loss_backward": None,                      # CTCLoss, backward
    "aten::_embedding_bag_backward": lambda args, kw: len(args) > 6 and args[6] == 2,  # EmbeddingBag max
    "aten::put_": None,                                    # put_ (either accumulate on CUDA)
    "aten::put": None,
    "aten::histc": None,                                   # histc
    "aten::bincount": lambda args, kw: (len(args) > 1 and args[1] is not None) or kw.get("weights") is not None,
    "aten::median": lambda args, kw: len(args) > 1,        # median with indices (the dim overload)
    "aten::nanmedian": lambda args, kw: len(args) > 1,
    "aten::grid_sampler_2d_backward": None,                # grid_sample, backward
    "aten::grid_sampler_3d_backward": None,
    "aten::cumsum": lambda args, kw: (kw.get("dtype") or args[0].dtype).is_floating_point,  # float cumsum
    "aten::cumsum_": lambda args, kw: args[0].dtype.is_floating_point,
    "aten::scatter_reduce": lambda args, kw: "prod" in args,  # scatter_reduce prod
    "aten::scatter_reduce_": lambda args, kw: "prod" in args,
}


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()
        self.flagged: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name, kwargs = func._schema.name, kwargs or {}
        self.ops.add(name)
        if name in NONDETERMINISTIC_ON_CUDA:
            condition = NONDETERMINISTIC_ON_CUDA[name]
            if condition is None or condition(args, kwargs):
                self.flagged.add(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("model", [DCGANConfig(g_width=8, d_width=8, z_dim=16, conditional=True, embed_dim=4),
                                   StyleGAN2Config(**TINY_SG2, conditional=True)], ids=["dcgan", "stylegan2"])
def test_every_op_of_a_training_step_has_a_deterministic_cuda_kernel(model):
    torch.manual_seed(0)
    G, D = build_models(model, 32, ATTRIBUTES)
    train = {**FULL_STEP, "r1_interval": 1,
             **({"pl_weight": 2.0, "pl_interval": 1} if model.arch == "stylegan2" else {})}
    steps = GANSteps(G, D, copy.deepcopy(G).eval(), TrainConfig(**train), model.z_dim, torch.device("cpu"))
    real, labels = batch_of(0)
    with OpRecorder() as recorded:
        steps.discriminator_step(real, labels, d_index=0)
        steps.generator_step(8, labels, 0)
    assert "aten::convolution_backward" in recorded.ops and "aten::gather" in recorded.ops  # backward was seen
    assert recorded.flagged == set()
    # ... and the recorder flags a listed op when a step has one.
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    with OpRecorder() as resized:
        torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear").sum().backward()
    assert resized.flagged == {"aten::upsample_bilinear2d_backward"}
