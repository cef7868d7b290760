"""Lineage and history: the registry's event log, data versions, the chain from a generated face back
to the imported data, and a version's history in time order."""
from __future__ import annotations

import threading

import pytest

from ganray import registry_events
from ganray.registry_events import EventLogError, append_event, causes, events


@pytest.fixture(params=["local", "s3"])
def registry_url(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


def test_event_log_appends_in_order_filters_by_version_and_follows_causes(registry_url):
    assert events(registry_url, "generator") == []
    first = append_event(registry_url, "generator", "drift_alert", {"fid": 80.0}, version="v2")
    second = append_event(registry_url, "generator", "retrain", {"data_version": "abc"}, cause=first)
    third = append_event(registry_url, "generator", "evaluation", {"fid": 12.0}, cause=second, version="v3")
    append_event(registry_url, "labeler", "training_run", {})  # another model's log: not mixed in
    assert (first, second, third) == ("generator-00000001", "generator-00000002", "generator-00000003")
    log = events(registry_url, "generator")
    assert [e["id"] for e in log] == [first, second, third]
    assert [e["kind"] for e in log] == ["drift_alert", "retrain", "evaluation"]
    assert log[0]["time"] <= log[1]["time"] <= log[2]["time"] and log[1]["version"] is None
    assert [e["id"] for e in events(registry_url, "generator", version="v3")] == [third]
    assert [e["id"] for e in causes(registry_url, third)] == [third, second, first]
    assert [e["kind"] for e in events(registry_url, "labeler")] == ["training_run"]


def test_concurrent_writers_never_share_an_event(tmp_path):
    url = str(tmp_path / "registry")
    ids: list[str] = []
    lock = threading.Lock()

    def write(n: int) -> None:
        for i in range(10):
            event_id = append_event(url, "generator", "monitoring", {"writer": n, "i": i})
            with lock:
                ids.append(event_id)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = events(url, "generator")
    assert len(set(ids)) == 40 and sorted(ids) == [e["id"] for e in log]
    for n in range(4):  # each writer's events in the order it wrote them
        assert [e["payload"]["i"] for e in log if e["payload"]["writer"] == n] == list(range(10))


@pytest.mark.parametrize("bad", [
    dict(model="../x"), dict(kind="no spaces"), dict(version="3"), dict(cause="../../e"), dict(payload=[1]),
])
def test_bad_events_are_refused_and_nothing_is_written(tmp_path, bad):
    url = str(tmp_path / "registry")
    args = {"model": "generator", "kind": "monitoring", "payload": {}, **bad}
    with pytest.raises(EventLogError):
        append_event(url, args["model"], args["kind"], args["payload"], cause=args.get("cause"),
                     version=args.get("version"))
    assert not (tmp_path / "registry").exists()
    assert registry_events.event(url, "generator-00000001") is None
