"""Model registry: numbered, immutable generator versions and movable aliases, on any fsspec URL.

Layout under the registry URL (a local folder or s3://bucket/prefix):

    versions/v1/.claim                 exclusive create: who took the id (never reused)
    versions/v1/generator.safetensors  the generator's state dict (safetensors: no pickle)
    versions/v1/config.json            {"model": model config, "resolution": R, "attributes": {...}}
    versions/v1/provenance.json        training run, checkpoint, step, dataset manifest hash, metrics
    versions/v1/version.json           id, content hash, created_at: written LAST, it commits the version
    versions/v1/evaluations/NAME.json  results recorded for the version (e.g. by `ganray eval`), one per name
    aliases/NAME.json                  {"alias": NAME, "version": "v1", "updated_at": ...}
    labelers/...                       labeler versions and aliases, the same way (LabelerRegistry)
    gates/NAME.json                    the promotion gate of alias NAME (its policy: ganray/eval/gate.py),
                                       or {"removed": true}: no gate, not even a built-in one
    decisions/d-00000001.json          append-only log of gated promotions, one exclusively created file each

Version ids and alias names are checked wherever they come from (a caller, a folder listing, an
alias file): a value that is not `v<N>` or an alias name is refused with a RegistryError, so an
alias file naming "../../x" or "/abs/path" is never followed.

The registry stores evaluations, gates and decisions as opaque JSON: it does not know how metrics
are computed or compared (ganray.eval does).

A version id is claimed by an exclusive create (a local `open(..., "x")`, an S3 conditional PUT),
so two concurrent pushes never share an id and nothing is ever overwritten. A version without
version.json is an interrupted push: invisible, and its id is skipped. An alias moves with one
atomic write. The content hash is sha256(weights bytes + config.json bytes); loading checks it.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ganray import storage
from ganray.config import parse_model_config

DEFAULT_REGISTRY_URL = "./registry"
REGISTRY_ENV = "GANRAY_REGISTRY"

WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "config.json"
PROVENANCE_FILE = "provenance.json"
VERSION_FILE = "version.json"
CLAIM_FILE = ".claim"
EVALUATIONS_DIR = "evaluations"
GATES_DIR = "gates"
DECISIONS_DIR = "decisions"
LATEST = "latest"  # a built-in alias: the newest complete version

# Both are used with fullmatch only ("$" in match() would let a trailing newline through).
_VERSION_ID = re.compile(r"v([1-9][0-9]*)")
_ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_RECORD_NAME = _ALIAS_NAME  # evaluation names: the same safe file-name alphabet
_DECISION_FILE = re.compile(r"d-([0-9]{8,})\.json")


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown ref, bad alias, corrupt version)."""


def registry_url(url: str | None = None) -> str:
    """The registry to use: `url` if given, else $GANRAY_REGISTRY, else ./registry."""
    return url or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_URL


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_bytes(obj: Any) -> bytes:
    # Key order is kept, not sorted: the order of attributes is the order of the label columns.
    return (json.dumps(obj, indent=2) + "\n").encode()


def content_hash(weights: bytes, config: bytes) -> str:
    return storage.sha256_hex(weights + config)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    content_hash: str
    created_at: str
    model: dict[str, Any]
    resolution: int
    attributes: dict[str, list[str]]
    provenance: dict[str, Any]
    aliases: list[str] = field(default_factory=list)

    @property
    def conditions(self) -> dict[str, list[str]]:
        """The attributes the generator conditions on, name -> values ({} when unconditional)."""
        if not self.model.get("conditional"):
            return {}
        names = self.model.get("condition_on") or list(self.attributes)
        return {name: self.attributes[name] for name in names}

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "content_hash": self.content_hash, "created_at": self.created_at,
                "aliases": self.aliases, "resolution": self.resolution, "model": self.model,
                "attributes": self.attributes, "conditions": self.conditions, "provenance": self.provenance}


@dataclass(frozen=True)
class LoadedGenerator:
    version: str
    generator: torch.nn.Module
    info: VersionInfo


class VersionStore:
    """Numbered, immutable versions and movable aliases under one URL: what generator and labeler
    versions share (claims, aliases, `latest`, recorded evaluations). The files of a version are
    the subclass's."""

    KIND = "model"  # what its versions are, in messages

    def __init__(self, url: str | None = None):
        self.url = storage.normalize_url(registry_url(url))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # Every path below the store is built here, from a checked version id or alias name.

    def _version_url(self, version: str, *parts: str) -> str:
        if not isinstance(version, str) or not _VERSION_ID.fullmatch(version):
            raise RegistryError(f"{version!r} is not a version id (v1, v2, ...)")
        return storage.child(self.url, "/".join(["versions", version, *parts]))

    def _alias_url(self, alias: str) -> str:
        if not isinstance(alias, str) or not _ALIAS_NAME.fullmatch(alias):
            raise RegistryError(f"{alias!r} is not an alias name")
        return storage.child(self.url, f"aliases/{alias}.json")

    def _read_json(self, url: str) -> dict[str, Any]:
        try:
            data = json.loads(storage.read_bytes(url))
        except ValueError:
            raise RegistryError(f"{url} is corrupt: not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{url} is corrupt: not a JSON object")
        return data

    def _alias_target(self, alias: str) -> str:
        """The version an alias file names, after checking it is a version id (never followed otherwise)."""
        url = self._alias_url(alias)
        version = self._read_json(url).get("version")
        if not isinstance(version, str) or not _VERSION_ID.fullmatch(version):
            raise RegistryError(f"alias {alias!r} in {self.url} is corrupt: {url} names {version!r}, which is "
                                "not a version id (v1, v2, ...); refusing to follow it")
        return version

    # -- writing -------------------------------------------------------------------------------

    def _claimed_ids(self) -> list[int]:
        ids = []
        for entry in storage.ls(storage.join(self.url, "versions")):
            match = _VERSION_ID.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
            if match:
                ids.append(int(match.group(1)))
        return ids

    def _claim_next(self) -> str:
        """A fresh version id, claimed for this push (never one another push has or had)."""
        next_id = max(self._claimed_ids(), default=0) + 1
        while not self._claim(f"v{next_id}"):
            next_id += 1
        return f"v{next_id}"

    def _claim(self, version: str) -> bool:
        """Take `version` for this push; False if another push already has it."""
        claim = _json_bytes({"claimed_at": _now(), "host": socket.gethostname(), "pid": os.getpid()})
        return storage.create_exclusive(self._version_url(version, CLAIM_FILE), claim)

    @staticmethod
    def _check_alias(alias: str) -> None:
        if not isinstance(alias, str) or not _ALIAS_NAME.fullmatch(alias) or _VERSION_ID.fullmatch(alias) \
                or alias == LATEST:
            raise RegistryError(
                f"invalid alias {alias!r}: use letters, digits, '_', '.', '-', starting with a letter; "
                f"not a version id (v1, v2, ...) and not {LATEST!r} (built in)")

    def promote(self, ref: str, alias: str) -> str:
        """Point `alias` at the version `ref` resolves to (one atomic write); returns that version.

        This is the unchecked move: an alias's gate is applied by ganray.eval.gate.promote (and
        `ganray registry promote`), which calls this once the gate allows it."""
        self._check_alias(alias)
        version = self.resolve(ref)
        storage.atomic_write(self._alias_url(alias),
                             _json_bytes({"alias": alias, "version": version, "updated_at": _now()}))
        return version

    def record(self, ref: str, name: str, result: dict[str, Any]) -> str:
        """Store `result` (any JSON object) as the evaluation `name` of the version `ref` resolves to,
        replacing an earlier one of that name in one atomic write; returns the version."""
        version = self.resolve(ref)
        if not isinstance(result, dict):
            raise RegistryError(f"an evaluation is a JSON object, got {type(result).__name__}")
        storage.atomic_write(self._version_url(version, EVALUATIONS_DIR, f"{self._record_name(name)}.json"),
                             _json_bytes(result))
        return version

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _record_name(name: str) -> str:
        if not isinstance(name, str) or not _RECORD_NAME.fullmatch(name):
            raise RegistryError(f"{name!r} is not an evaluation name (letters, digits, '_', '.', '-', "
                                "starting with a letter)")
        return name

    def evaluations(self, ref: str) -> dict[str, dict[str, Any]]:
        """Every evaluation recorded for the version `ref` resolves to, name -> result."""
        version = self.resolve(ref)
        found = {}
        for entry in storage.ls(self._version_url(version, EVALUATIONS_DIR)):
            name = entry.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            if entry.endswith(".json") and _RECORD_NAME.fullmatch(name) and not storage.is_temp(entry):
                found[name] = self._read_json(entry)
        return dict(sorted(found.items()))

    def evaluation(self, ref: str, name: str) -> dict[str, Any] | None:
        url = self._version_url(self.resolve(ref), EVALUATIONS_DIR, f"{self._record_name(name)}.json")
        return self._read_json(url) if storage.exists(url) else None

    def versions(self) -> list[str]:
        """Complete version ids, oldest first."""
        return [f"v{i}" for i in sorted(self._claimed_ids())
                if storage.exists(self._version_url(f"v{i}", VERSION_FILE))]

    def aliases(self) -> dict[str, str]:
        found = {}
        for entry in storage.ls(storage.join(self.url, "aliases")):
            name = entry.rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")
            # Only files named like an alias are aliases (not temporary files of an alias move).
            if entry.endswith(".json") and _ALIAS_NAME.fullmatch(name) and not storage.is_temp(entry):
                found[name] = self._alias_target(name)
        return dict(sorted(found.items()))

    def resolve(self, ref: str) -> str:
        """The version id that `ref` (a version id, an alias or "latest") names."""
        if _VERSION_ID.fullmatch(ref):
            if storage.exists(self._version_url(ref, VERSION_FILE)):
                return ref
        elif ref == LATEST:
            versions = self.versions()
            if versions:
                return versions[-1]
        elif _ALIAS_NAME.fullmatch(ref) and storage.exists(self._alias_url(ref)):
            version = self._alias_target(ref)
            if not storage.exists(self._version_url(version, VERSION_FILE)):
                raise RegistryError(f"alias {ref!r} in {self.url} names {version}, which is not a complete version")
            return version
        known = self.versions()
        raise RegistryError(f"unknown {self.KIND} {ref!r} in registry {self.url}: "
                            + (f"versions {known}, aliases {sorted(self.aliases())}" if known else "it holds no versions"))


class Registry(VersionStore):
    """Generator versions at the registry's top level; labeler versions under `labelers/` (`.labelers`)."""

    @property
    def labelers(self) -> "LabelerRegistry":
        return LabelerRegistry(self.url)

    def push(self, generator_state: dict[str, torch.Tensor], model_config: dict[str, Any], resolution: int,
             attributes: dict[str, list[str]] | None, provenance: dict[str, Any]) -> str:
        """Store a generator as a new version; returns its id (e.g. "v3")."""
        model = parse_model_config(model_config).model_dump(mode="json")  # validates, fills defaults
        attributes = {name: [str(v) for v in values] for name, values in (attributes or {}).items()}
        self._build(model, resolution, attributes, generator_state)  # refuse weights that do not fit
        weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in generator_state.items()})
        config = _json_bytes({"model": model, "resolution": resolution, "attributes": attributes})

        version = self._claim_next()
        storage.atomic_write(self._version_url(version, WEIGHTS_FILE), weights)
        storage.atomic_write(self._version_url(version, CONFIG_FILE), config)
        storage.atomic_write(self._version_url(version, PROVENANCE_FILE), _json_bytes(provenance))
        storage.atomic_write(self._version_url(version, VERSION_FILE), _json_bytes(
            {"version": version, "content_hash": content_hash(weights, config), "created_at": _now()}))
        return version

    def set_gate(self, alias: str, gate: dict[str, Any] | None) -> None:
        """Store the promotion gate of `alias` (opaque JSON for ganray.eval.gate); None removes it, and
        is stored too, so that an alias with a built-in gate stays ungated once its gate is removed."""
        self._check_alias(alias)
        storage.atomic_write(storage.child(self.url, f"{GATES_DIR}/{alias}.json"),
                             _json_bytes(gate if gate is not None else {"removed": True, "removed_at": _now()}))

    def append_decision(self, entry: dict[str, Any]) -> str:
        """Append `entry` to the decisions log: a new file per entry, created exclusively, never
        rewritten. Returns its id (d-00000001, ...)."""
        body = _json_bytes({**entry, "recorded_at": _now()})
        number = max(self._decision_numbers(), default=0) + 1
        while not storage.create_exclusive(storage.child(self.url, f"{DECISIONS_DIR}/d-{number:08d}.json"), body):
            number += 1  # another writer took this number: take the next
        return f"d-{number:08d}"

    def gate(self, alias: str, default: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The stored gate of `alias`; None if it was removed; `default` if none was ever set."""
        self._check_alias(alias)
        url = storage.child(self.url, f"{GATES_DIR}/{alias}.json")
        if not storage.exists(url):
            return default
        gate = self._read_json(url)
        return None if gate.get("removed") is True else gate

    def _decision_numbers(self) -> list[int]:
        numbers = []
        for entry in storage.ls(storage.join(self.url, DECISIONS_DIR)):
            match = _DECISION_FILE.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
            if match:
                numbers.append(int(match.group(1)))
        return numbers

    def decisions(self) -> list[dict[str, Any]]:
        """The decisions log, oldest first, each entry with its id."""
        return [{"id": f"d-{n:08d}", **self._read_json(storage.child(self.url, f"{DECISIONS_DIR}/d-{n:08d}.json"))}
                for n in sorted(self._decision_numbers())]

    def show(self, ref: str) -> VersionInfo:
        version = self.resolve(ref)
        stamp = self._read_json(self._version_url(version, VERSION_FILE))
        if stamp.get("version") != version:
            raise RegistryError(f"version {version} in {self.url} is corrupt: its {VERSION_FILE} says {stamp.get('version')!r}")
        config = self._read_json(self._version_url(version, CONFIG_FILE))
        return VersionInfo(
            version=version,
            content_hash=stamp["content_hash"],
            created_at=stamp["created_at"],
            model=config["model"],
            resolution=config["resolution"],
            attributes=config["attributes"],
            provenance=self._read_json(self._version_url(version, PROVENANCE_FILE)),
            aliases=[a for a, v in self.aliases().items() if v == version],
        )

    def list(self) -> list[VersionInfo]:
        return [self.show(v) for v in self.versions()]

    @staticmethod
    def _build(model: dict[str, Any], resolution: int, attributes: dict[str, list[str]],
               state: dict[str, torch.Tensor]) -> torch.nn.Module:
        from ganray.models import build_generator

        generator = build_generator(model, resolution, attributes)
        try:
            generator.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RegistryError(f"the weights do not fit the model config: {e}") from None
        return generator

    def load_generator(self, ref: str, device: str | torch.device = "cpu") -> LoadedGenerator:
        """The generator of `ref`, in eval mode on `device`, after checking its content hash."""
        info = self.show(ref)
        weights = storage.read_bytes(self._version_url(info.version, WEIGHTS_FILE))
        config = storage.read_bytes(self._version_url(info.version, CONFIG_FILE))
        if content_hash(weights, config) != info.content_hash:
            raise RegistryError(f"version {info.version} in {self.url} is corrupt: its files do not match "
                                f"the content hash {info.content_hash}")
        generator = self._build(info.model, info.resolution, info.attributes, load_safetensors(weights))
        return LoadedGenerator(version=info.version, generator=generator.to(device).eval(), info=info)


# ---------------------------------------------------------------------------------------------
# Labeler versions: a second kind of entry, beside generators, with its own numbering and aliases

LABELERS_DIR = "labelers"
CLASSIFIER_WEIGHTS_FILE = "classifier.safetensors"
HELDOUT_EVALUATION = "heldout"  # the evaluation every labeler version is committed with


@dataclass(frozen=True)
class LabelerInfo:
    version: str
    content_hash: str
    created_at: str
    kind: str                       # "attribute_classifier"
    model: dict[str, Any]           # the classifier's config (ganray.config.ClassifierModelConfig)
    resolution: int
    attributes: dict[str, list[str]]
    provenance: dict[str, Any]
    aliases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "content_hash": self.content_hash, "created_at": self.created_at,
                "aliases": self.aliases, "kind": self.kind, "resolution": self.resolution, "model": self.model,
                "attributes": self.attributes, "provenance": self.provenance}


@dataclass(frozen=True)
class LoadedLabeler:
    version: str
    classifier: torch.nn.Module  # ganray.models.classifier.AttributeClassifier, in eval mode
    info: LabelerInfo


class LabelerRegistry(VersionStore):
    """Labeler versions under REGISTRY/labelers/ (their own v1, v2, ... and aliases; `latest` too):

        labelers/versions/v1/.claim                   exclusive create, as for generators
        labelers/versions/v1/classifier.safetensors   the attribute classifier's state dict
        labelers/versions/v1/config.json              {"kind", "model", "resolution", "attributes"}
        labelers/versions/v1/provenance.json          training run, checkpoint, step, dataset manifest hash
        labelers/versions/v1/evaluations/heldout.json held-out accuracy per class, confusion matrices
        labelers/versions/v1/version.json             written LAST: commits the version
        labelers/aliases/NAME.json

    The held-out evaluation is written before version.json, so every committed version has one.
    The content hash is sha256(weights bytes + config.json bytes), checked on load.
    """

    KIND = "labeler"

    def __init__(self, url: str | None = None):
        super().__init__(url)
        self.registry_url = self.url
        self.url = storage.join(self.url, LABELERS_DIR)

    @staticmethod
    def _build(model: dict[str, Any], resolution: int, attributes: dict[str, list[str]],
               state: dict[str, torch.Tensor]) -> torch.nn.Module:
        from ganray.models.classifier import build_classifier

        classifier = build_classifier(model, resolution, attributes)
        try:
            classifier.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RegistryError(f"the weights do not fit the classifier config: {e}") from None
        return classifier

    def push(self, classifier_state: dict[str, torch.Tensor], model_config: dict[str, Any], resolution: int,
             attributes: dict[str, list[str]], provenance: dict[str, Any], heldout: dict[str, Any]) -> str:
        """Store an attribute classifier and its held-out evaluation as a new labeler version."""
        from ganray.config import ClassifierModelConfig

        model = ClassifierModelConfig.model_validate(model_config).model_dump(mode="json")
        attributes = {name: [str(v) for v in values] for name, values in attributes.items()}
        self._build(model, resolution, attributes, classifier_state)  # refuse weights that do not fit
        if not isinstance(heldout, dict):
            raise RegistryError("a labeler version needs its held-out evaluation (a JSON object)")
        weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in classifier_state.items()})
        config = _json_bytes({"kind": "attribute_classifier", "model": model, "resolution": resolution,
                              "attributes": attributes})
        version = self._claim_next()
        storage.atomic_write(self._version_url(version, CLASSIFIER_WEIGHTS_FILE), weights)
        storage.atomic_write(self._version_url(version, CONFIG_FILE), config)
        storage.atomic_write(self._version_url(version, PROVENANCE_FILE), _json_bytes(provenance))
        storage.atomic_write(self._version_url(version, EVALUATIONS_DIR, f"{HELDOUT_EVALUATION}.json"),
                             _json_bytes(heldout))
        storage.atomic_write(self._version_url(version, VERSION_FILE), _json_bytes(
            {"version": version, "content_hash": content_hash(weights, config), "created_at": _now()}))
        return version

    def show(self, ref: str) -> LabelerInfo:
        version = self.resolve(ref)
        stamp = self._read_json(self._version_url(version, VERSION_FILE))
        if stamp.get("version") != version:
            raise RegistryError(f"labeler version {version} in {self.url} is corrupt: its {VERSION_FILE} says "
                                f"{stamp.get('version')!r}")
        config = self._read_json(self._version_url(version, CONFIG_FILE))
        return LabelerInfo(
            version=version, content_hash=stamp["content_hash"], created_at=stamp["created_at"],
            kind=config.get("kind", "attribute_classifier"), model=config["model"],
            resolution=config["resolution"], attributes=config["attributes"],
            provenance=self._read_json(self._version_url(version, PROVENANCE_FILE)),
            aliases=[a for a, v in self.aliases().items() if v == version],
        )

    def list(self) -> list[LabelerInfo]:
        return [self.show(v) for v in self.versions()]

    def load_classifier(self, ref: str, device: str | torch.device = "cpu") -> LoadedLabeler:
        """The classifier of labeler version `ref`, in eval mode on `device`, after checking its content hash."""
        info = self.show(ref)
        weights = storage.read_bytes(self._version_url(info.version, CLASSIFIER_WEIGHTS_FILE))
        config = storage.read_bytes(self._version_url(info.version, CONFIG_FILE))
        if content_hash(weights, config) != info.content_hash:
            raise RegistryError(f"labeler version {info.version} in {self.url} is corrupt: its files do not match "
                                f"the content hash {info.content_hash}")
        classifier = self._build(info.model, info.resolution, info.attributes, load_safetensors(weights))
        return LoadedLabeler(version=info.version, classifier=classifier.to(device).eval(), info=info)
