"""The folder layout both training runs share, the GAN's (ganray.train.checkpoint) and the attribute
classifier's (ganray.labels.checkpoint): which checkpoints a run has, which of them are whole, and which
one a restarted worker group resumes from, and the digest of a training state. What a checkpoint's
state holds is theirs.

    {run.storage_path}/{run.name}/checkpoint_{step:08d}/   (Ray Train's checkpoint_dir_name)
        state.pt    torch.save of the full state, weights_only-loadable
        meta.json   the bookkeeping without tensors; its `files` names every other file and its size
        ...         whatever else the run writes (the GAN: samples and loss curves)

Ray Train uploads a checkpoint's files concurrently (to S3 in parallel), so the order they were written
in marks nothing: a checkpoint is complete when meta.json is there and every file it names is there
with the size it names (`is_complete`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from typing import Any, Callable

import torch

from ganray.storage import url_to_fs

STATE_FILE = "state.pt"
META_FILE = "meta.json"
CHECKPOINT_PREFIX = "checkpoint_"
FILES_KEY = "files"  # in meta.json: {file name: size in bytes} of every other file of the checkpoint


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def run_url(storage_path: str, run_name: str) -> str:
    return posixpath.join(storage_path.rstrip("/"), run_name)


def write_meta(directory: str, meta: dict[str, Any]) -> None:
    """Write meta.json into the local checkpoint `directory`, after every other file of it: it names
    each of them with its size (FILES_KEY), which is what `is_complete` checks in storage."""
    files = {name: os.path.getsize(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump({**meta, FILES_KEY: files}, f, indent=1)


def is_complete(fs, path: str) -> bool:
    """Whether the checkpoint directory `path` was stored whole: its meta.json is there and every
    file it names is there with the size it names. An upload that stopped part way (the endpoint
    went away, the worker died) lacks meta.json or one of the files, or holds a short one.
    (Checkpoints written before meta.json named its files count as complete with meta.json.)"""
    try:
        sizes = {posixpath.basename(info["name"].rstrip("/")): info.get("size")
                 for info in fs.ls(path, detail=True)}
        if META_FILE not in sizes:
            return False
        meta = json.loads(fs.cat_file(posixpath.join(path, META_FILE)))
    except (FileNotFoundError, ValueError):
        return False
    named = meta.get(FILES_KEY, {}) if isinstance(meta, dict) else None
    return isinstance(named, dict) and all(sizes.get(name) == size for name, size in named.items())


def _checkpoint_names(fs, root: str) -> list[str]:
    """The checkpoint directory names under the run folder `root`, complete or not, oldest first."""
    if not fs.exists(root):
        return []
    names = (posixpath.basename(entry.rstrip("/")) for entry in fs.ls(root, detail=False))
    return sorted(name for name in names if name.startswith(CHECKPOINT_PREFIX))


def list_checkpoints(storage_path: str, run_name: str) -> list[str]:
    """URLs of the run's complete checkpoints, oldest first."""
    run = run_url(storage_path, run_name)
    fs, root = url_to_fs(run)
    return [posixpath.join(run, name) for name in _checkpoint_names(fs, root)
            if is_complete(fs, posixpath.join(root, name))]


def latest_checkpoint(storage_path: str, run_name: str) -> str | None:
    """URL of the run's newest complete checkpoint, None if it has none."""
    checkpoints = list_checkpoints(storage_path, run_name)
    return checkpoints[-1] if checkpoints else None


def resumable_checkpoint(run: str, offered: str) -> str | None:
    """The newest complete checkpoint of the run at `run` (its URL) that is not newer than `offered`,
    the checkpoint directory name Ray Train hands a restarted or re-run worker group; None if none.

    Ray Train registers a checkpoint once the worker's upload returns, but pyarrow can swallow a
    failed upload (it logs "Error ignored when destroying file" and Ray logs "Checkpoint successfully
    created"): if the storage recovers before the controller writes its snapshot, Ray offers a
    checkpoint whose state.pt is missing or short. The one before it resumes the same run."""
    fs, root = url_to_fs(run)
    for name in reversed(_checkpoint_names(fs, root)):  # newest first: usually the offered one
        if name <= offered and is_complete(fs, posixpath.join(root, name)):
            return posixpath.join(run, name)
    return None


def load_state(checkpoint_url: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, STATE_FILE), "rb") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def read_meta(checkpoint_url: str) -> dict[str, Any]:
    fs, path = url_to_fs(checkpoint_url)
    with fs.open(posixpath.join(path, META_FILE), "r") as f:
        return json.load(f)


def restore(offered, run: str, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The state a (re)started worker resumes from, on CPU: that of `offered` (`ray.train.get_checkpoint()`,
    None on a fresh run) when it is complete in storage, else that of the newest complete checkpoint
    before it (`resumable_checkpoint`), announced through `say`; None to start from the beginning.
    CPU, whatever the worker's device: RNG states must be CPU tensors, and optimizers place their
    own state on load (ganray.worker)."""
    if offered is None:
        return None
    name = posixpath.basename(offered.path.rstrip("/"))
    usable = resumable_checkpoint(run, name)
    if usable is not None and posixpath.basename(usable) == name:
        with offered.as_directory() as directory:
            return load_state(directory)
    say(f"[ganray] {name} is incomplete in storage; resuming from "
        f"{posixpath.basename(usable) if usable else 'the start'} instead")
    return load_state(usable) if usable is not None else None


def state_digest(state: dict[str, Any], keys: tuple[str, ...]) -> str:
    """A SHA-256 over the training state under `keys` (every tensor's dtype, shape and bytes, every
    other value's repr, every key): equal digests mean bit-identical models, optimizers, scalers,
    RNGs and data position, whichever device they were on."""
    h = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                h.update(str(k).encode())
                visit(obj[k])
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)
        else:
            h.update(repr(obj).encode())

    for key in keys:
        h.update(key.encode())
        visit(state[key])
    return h.hexdigest()
