"""An append-only log of what happened to a registry's models: data versions, training runs,
evaluations, monitoring records, drift alerts, retraining, each tied to the event that caused it.

Layout under the registry URL (beside what ganray/registry.py keeps; a local folder or s3://):

    events/<model>/e-00000001.json   one event per file, created exclusively, never rewritten

`model` names a line of models in the registry: `generator` (its top-level versions) or `labeler`
(its labelers/ versions); any name of the alias alphabet is accepted. Numbers are taken like the
decisions log's: the next free one, by an exclusive create (local hard link, S3 conditional PUT),
so two concurrent writers never share a file and the zero-padded names list in append order.

An event:

    {"id": "generator-00000003", "model": "generator", "kind": "monitoring",
     "time": "2026-12-06T06:01:02.123456+00:00", "version": "v3" | null,
     "payload": {...any JSON object...}, "cause": "generator-00000002" | null}

Promotions and evaluations are not logged here: the registry already keeps them (decisions log,
versions/vN/evaluations/), and a version's history (ganray/lineage.py) reads them from there.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from ganray import storage

EVENTS_DIR = "events"
GENERATOR = "generator"  # the registry's top-level generator versions
LABELER = "labeler"      # its labelers/ versions
# The kinds ganray writes; other names of the same alphabet are accepted (a kind is a word, not a schema).
KINDS = ("data_version", "training_run", "evaluation", "promotion", "monitoring", "drift_alert", "retrain")

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_VERSION_ID = re.compile(r"v[1-9][0-9]*")
_EVENT_FILE = re.compile(r"e-([0-9]{8,})\.json")
_EVENT_ID = re.compile(r"([A-Za-z][A-Za-z0-9_.-]{0,63})-([0-9]{8,})")


class EventLogError(ValueError):
    """A bad event (name, version, payload) or a corrupt event file."""


def _registry_root(registry: Any) -> str:
    """The registry URL of a Registry / LabelerRegistry object or of a URL string."""
    if isinstance(registry, str):
        return storage.normalize_url(registry)
    return getattr(registry, "registry_url", None) or registry.url  # LabelerRegistry.url is its labelers/ folder


def _checked(value: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise EventLogError(f"{value!r} is not {what}")
    return value


def _log_url(registry: Any, model: str) -> str:
    model = _checked(model, _NAME, "a model name (letters, digits, '_', '.', '-', starting with a letter)")
    return storage.child(_registry_root(registry), f"{EVENTS_DIR}/{model}")


def _numbers(log_url: str) -> list[int]:
    numbers = []
    for entry in storage.ls(log_url):
        match = _EVENT_FILE.fullmatch(entry.rstrip("/").rsplit("/", 1)[-1])
        if match:
            numbers.append(int(match.group(1)))
    return sorted(numbers)


def append_event(registry: Any, model: str, kind: str, payload: dict[str, Any], cause: str | None = None,
                 version: str | None = None) -> str:
    """Append one event to `model`'s log in `registry` (a Registry or its URL); returns its id.

    `version`: the model version it concerns (v3), if any; `cause`: the id of the event that caused it."""
    log_url = _log_url(registry, model)
    _checked(kind, _NAME, "an event kind (letters, digits, '_', '.', '-', starting with a letter)")
    if version is not None:
        _checked(version, _VERSION_ID, "a version id (v1, v2, ...)")
    if cause is not None:
        _checked(cause, _EVENT_ID, "an event id (MODEL-00000001)")
    if not isinstance(payload, dict):
        raise EventLogError(f"an event's payload is a JSON object, got {type(payload).__name__}")
    event = {"model": model, "kind": kind, "time": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
             "version": version, "payload": payload, "cause": cause}
    number = (_numbers(log_url) or [0])[-1] + 1
    while True:
        event_id = f"{model}-{number:08d}"
        body = (json.dumps({"id": event_id, **event}, indent=1) + "\n").encode()
        if storage.create_exclusive(storage.join(log_url, f"e-{number:08d}.json"), body):
            return event_id
        number += 1  # another writer took this number: take the next


def events(registry: Any, model: str, version: str | None = None) -> list[dict[str, Any]]:
    """`model`'s events in the order they were appended (time order), only `version`'s if given."""
    log_url = _log_url(registry, model)
    found = []
    for number in _numbers(log_url):
        url = storage.join(log_url, f"e-{number:08d}.json")
        try:
            event = json.loads(storage.read_bytes(url))
        except ValueError:
            raise EventLogError(f"{url} is corrupt: not JSON") from None
        if not isinstance(event, dict) or event.get("id") != f"{model}-{number:08d}":
            raise EventLogError(f"{url} is corrupt: not an event of {model!r} numbered {number}")
        if version is None or event.get("version") == version:
            found.append(event)
    return found


def event(registry: Any, event_id: str) -> dict[str, Any] | None:
    """The event with id `event_id` (MODEL-00000001), or None if there is none."""
    model, number = _checked(event_id, _EVENT_ID, "an event id (MODEL-00000001)").rsplit("-", 1)
    url = storage.join(_log_url(registry, model), f"e-{number}.json")
    if not storage.exists(url):
        return None
    try:
        return json.loads(storage.read_bytes(url))
    except ValueError:
        raise EventLogError(f"{url} is corrupt: not JSON") from None


def causes(registry: Any, event_id: str) -> list[dict[str, Any]]:
    """The chain of causes of `event_id`, the event itself first, then what caused it, and so on."""
    chain, seen = [], set()
    current: str | None = event_id
    while current is not None and current not in seen:
        seen.add(current)
        found = event(registry, current)
        if found is None:
            break
        chain.append(found)
        current = found.get("cause")
    return chain
