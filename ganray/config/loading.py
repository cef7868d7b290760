"""Turning YAML files, `--set KEY=VALUE` overrides and stored dicts into validated configs, and
pydantic's errors into messages that name the key (ConfigError)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ganray.config.base import ConfigError
from ganray.config.models import _MODEL_CONFIG_ADAPTER, MODEL_CONFIGS, BaseModelConfig, _arch_of


J = TypeVar("J", bound=BaseModel)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.batch_size=64), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}: {e}") from None
        out.append((key.strip(), value))
    return out


def format_validation_error(err: ValidationError, prefix: tuple[str, ...] = ()) -> str:
    lines = []
    for e in err.errors():
        loc = prefix + tuple(e["loc"])
        # The model section's union adds the architecture's tag to the path: model.dcgan.g_width.
        if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_CONFIGS:
            loc = loc[:1] + loc[2:]
        key = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"]
        if e["type"] == "unknown_arch":
            msg = f"unknown architecture {_arch_of(e['input'])!r}; known: {', '.join(MODEL_CONFIGS)}"
            key = ".".join(str(p) for p in loc + ("arch",))
        elif e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def load_config(cls: type[J], path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> J:
    """Load `cls` from a YAML file (optional), then apply `--set` overrides, then validate."""
    tree: dict[str, Any] = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        tree.update(loaded)
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)


def parse_model_config(data: dict[str, Any] | BaseModelConfig) -> BaseModelConfig:
    """A stored `model` section (registry config.json, checkpoint config) -> its config object."""
    try:
        return _MODEL_CONFIG_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix=("model",))) from None
