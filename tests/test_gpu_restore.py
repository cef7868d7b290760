"""What a GPU worker of either training loop does with a checkpoint and with collectives, checked on a
CPU machine: the worker's device is simulated with torch's "meta" device, on which tensors have a
device, shape and dtype but no data. A checkpoint loaded onto the worker's device puts the RNG states
there (torch.set_rng_state takes only CPU ByteTensors: on a GPU it raises) and Adam's `step` too
(torch keeps it on CPU); a metric reduced in a CPU tensor is refused by NCCL. In process, no Ray."""
from __future__ import annotations

import copy
import random
import socket

import pytest
import ray.train
import torch
import torch.distributed as dist

from ganray.checkpoints import STATE_FILE, checkpoint_dir_name, write_meta
from ganray.config import DCGANConfig, TrainConfig
from ganray.models import build_models
from ganray.train.steps import GANSteps
from ganray.worker import TrainWorker, rng_state

META = torch.device("meta")


@pytest.fixture
def rng_recorder(monkeypatch):
    """The devices of the tensors handed to torch.set_rng_state (which still runs); this process's
    RNG states are put back afterwards."""
    before = torch.get_rng_state(), random.getstate()
    seen: list[torch.device] = []
    original = torch.set_rng_state

    def record(state: torch.Tensor) -> None:
        seen.append(state.device)
        original(state)

    monkeypatch.setattr(torch, "set_rng_state", record)
    yield seen
    original(before[0])
    random.setstate(before[1])


def saved_checkpoint(tmp_path, state: dict) -> tuple[ray.train.Checkpoint, str]:
    """`state` stored as a complete checkpoint (what Ray Train hands a restarted worker), and its run."""
    run = tmp_path / "run"
    directory = run / checkpoint_dir_name(1)
    directory.mkdir(parents=True)
    torch.save(state, directory / STATE_FILE)
    write_meta(str(directory), {"step": 1})
    return ray.train.Checkpoint(str(directory)), str(run)


def adam_states(optimizer: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    states = list(optimizer.state_dict()["state"].values())
    assert states, "the optimizer has state to check"
    return states


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # meta weights hold no values
def test_a_resume_on_a_gpu_worker_sets_rng_from_cpu_and_keeps_adams_steps_on_cpu(tmp_path, rng_recorder):
    """The restore path of both loops on a worker whose device is not the CPU: the labeler's
    (model, AdamW) and the GAN's (G, D, G_ema, GANSteps' Adams, scalers, ADA, path-length mean)."""
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(classifier.parameters())
    classifier(torch.randn(3, 6)).sum().backward()
    opt.step()
    G, D = build_models(DCGANConfig(g_width=8, d_width=8, z_dim=16), 32, None)
    cfg = TrainConfig(precision="fp32")
    steps = GANSteps(G, D, copy.deepcopy(G), cfg, 16, torch.device("cpu"))
    steps.discriminator_step(torch.rand(4, 3, 32, 32) * 2 - 1, None)
    steps.generator_step(4, None, 0)
    offered, run = saved_checkpoint(tmp_path, {
        "model": classifier.state_dict(), "opt": opt.state_dict(),
        "G": G.state_dict(), "D": D.state_dict(), "G_ema": steps.G_ema.state_dict(), **steps.optimizer_state(),
        "rng": [rng_state()], "step": 1})

    worker = TrainWorker(rank=0, world_size=1, device=META)
    state = worker.resume(offered, run, say=print)

    assert rng_recorder == [torch.device("cpu")]
    # The labeler's restore.
    on_device = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).to(META)
    on_device.load_state_dict(state["model"])
    resumed = torch.optim.AdamW(on_device.parameters())
    resumed.load_state_dict(state["opt"])
    for entry in adam_states(resumed):
        assert entry["step"].device == torch.device("cpu")
        assert entry["exp_avg"].device == entry["exp_avg_sq"].device == META
    # The GAN's restore.
    G2, D2 = (m.to(META) for m in build_models(DCGANConfig(g_width=8, d_width=8, z_dim=16), 32, None))
    G_ema2 = copy.deepcopy(G2)
    for module, key in ((G2, "G"), (D2, "D"), (G_ema2, "G_ema")):
        module.load_state_dict(state[key])
    steps2 = GANSteps(G2, D2, G_ema2, cfg, 16, META)
    steps2.load_optimizer_state(state)
    for entry in adam_states(steps2.opt_G) + adam_states(steps2.opt_D):
        assert entry["step"].device == torch.device("cpu")
        assert entry["exp_avg"].device == META
    assert steps2.pl_mean.device == META


@pytest.fixture
def process_group():
    """A real gloo process group of one rank, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Recorded(Exception):
    """Raised by the recording all_reduce on a meta tensor, which holds no values to reduce."""


def test_collectives_get_tensors_on_the_workers_device(process_group, monkeypatch):
    seen: list[torch.device] = []
    original = dist.all_reduce

    def record(tensor: torch.Tensor, *args, **kwargs):
        seen.append(tensor.device)
        if tensor.device == META:
            raise Recorded
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", record)
    with pytest.raises(Recorded):
        TrainWorker(rank=0, world_size=1, device=META).mean({"loss": 1.5, "train_acc_smile": 0.25})
    assert seen == [META]

    cpu = TrainWorker(rank=0, world_size=1, device=torch.device("cpu"))
    assert cpu.mean({"loss": 1.5, "train_acc_smile": 0.25}) == {"loss": 1.5, "train_acc_smile": 0.25}
    assert seen == [META, torch.device("cpu")]
    assert cpu.gather({"rank": 0}) == [{"rank": 0}]
