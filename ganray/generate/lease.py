"""One writer at a time on a generation output: a lease with a heartbeat, on local disk and S3.

    OUT/_lease/lease-00000001.json   {"holder": {host, pid, pid_namespace, job_id}, "since", "heartbeat_at",
    OUT/_lease/lease-00000002.json    "expires_after_s", "generation", "released"}  ...

The lease is the key with the highest generation. A driver takes it by creating the next
generation's key with an exclusive create (a local hard link of a complete temporary file, which
fails if the name exists; an S3 conditional PUT, If-None-Match: *), and only when the current one
is released, expired (no heartbeat for `expires_after_s`, the holder's own promise) or held by a
dead process on this host. Two drivers taking over the same lease both try to create the same
key, so exactly one wins; the other re-reads and refuses, naming the winner.

The holder rewrites its key every `expires_after_s / HEARTBEATS_PER_EXPIRY` seconds from a
background thread. A holder that stalled past its expiry has been superseded once the next
generation's key exists: its heartbeat stops, `check()` raises LeaseLost, and its shard writers
refuse to commit (they check `superseded_url` just before writing a shard's commit entry).
Generations are never deleted, so "the next key exists" stays true once it is. Expiry compares
the holder's wall clock with the taker's: hosts' clocks must agree to well within the expiry.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any

from ganray import storage

LEASE_DIR = "_lease"
HEARTBEATS_PER_EXPIRY = 4  # a holder misses 3 heartbeats in a row before others may take over
_LEASE_NAME = re.compile(r"^lease-(\d{8})\.json$")


class LeaseHeld(ValueError):
    """Another driver holds the output's lease (the message names it). CLI exit 2."""


class LeaseLost(RuntimeError):
    """This driver's lease was taken over (it stalled past its expiry): it must stop writing."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _pid_namespace() -> str | None:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def lease_url(output_url: str, generation: int) -> str:
    return storage.join(output_url, LEASE_DIR, f"lease-{generation:08d}.json")


def _latest(output_url: str) -> tuple[int, dict[str, Any] | None] | None:
    """(generation, record or None if unreadable) of the current lease; None when there is none."""
    generations = [int(m.group(1)) for url in storage.ls(storage.join(output_url, LEASE_DIR))
                   if (m := _LEASE_NAME.match(url.rsplit("/", 1)[-1]))]
    if not generations:
        return None
    generation = max(generations)
    try:
        record = json.loads(storage.read_bytes(lease_url(output_url, generation)))
    except (OSError, ValueError):
        return generation, None
    well_formed = (isinstance(record, dict) and isinstance(record.get("holder"), dict)
                   and isinstance(record.get("heartbeat_at"), (int, float))
                   and isinstance(record.get("expires_after_s"), (int, float)))
    return generation, record if well_formed else None


def _holder_is_dead(holder: dict[str, Any]) -> bool:
    """The holder is a process of this host (and pid namespace) that no longer exists."""
    if holder.get("host") != socket.gethostname() or holder.get("pid_namespace") != _pid_namespace():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError):
        return False
    return False


def _describe(record: dict[str, Any], now: float) -> str:
    holder = record.get("holder", {})
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, job {holder.get('job_id')}, "
            f"since {record.get('since')} (last heartbeat {now - record.get('heartbeat_at', now):.0f} s ago; "
            f"it expires {record.get('expires_after_s')} s after its last heartbeat)")


class OutputLease:
    """The lease on one output, held by this process. Use `acquire`; release with `release()` or `with`."""

    def __init__(self, output_url: str, generation: int, record: dict[str, Any]):
        self.output_url = output_url
        self.generation = generation
        self.url = lease_url(output_url, generation)
        self.superseded_url = lease_url(output_url, generation + 1)
        self._record = record
        self._stop = threading.Event()
        self._lost: str | None = None
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease-heartbeat {self.url}", daemon=True)

    @classmethod
    def acquire(cls, output_url: str, job_id: str, expires_after_s: float) -> "OutputLease":
        """Take the output's lease or raise LeaseHeld naming its holder."""
        while True:
            now = time.time()
            latest = _latest(output_url)
            if latest is not None:
                generation, record = latest
                if record is None:
                    raise LeaseHeld(f"output {output_url}: lease file {lease_url(output_url, generation)} is "
                                    "unreadable; if no driver is writing this output, remove it and re-run")
                live = (not record.get("released") and now - record["heartbeat_at"] <= record["expires_after_s"]
                        and not _holder_is_dead(record["holder"]))
                if live:
                    raise LeaseHeld(f"output {output_url} is being written by another driver: "
                                    f"{_describe(record, now)}; nothing was written. Wait for it to finish, "
                                    "or for its lease to expire if it died.")
            next_generation = latest[0] + 1 if latest else 1
            record = {
                "holder": {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
                           "job_id": job_id},
                "generation": next_generation,
                "since": _iso(now),
                "heartbeat_at": now,
                "expires_after_s": expires_after_s,
                "released": False,
            }
            if storage.create_exclusive(lease_url(output_url, next_generation), _json(record)):
                lease = cls(output_url, next_generation, record)
                lease._heartbeat.start()
                return lease
            # Another driver created that generation first: read it again (it is live now).

    @property
    def interval_s(self) -> float:
        return self._record["expires_after_s"] / HEARTBEATS_PER_EXPIRY

    def _superseded(self) -> bool:
        return storage.exists(self.superseded_url)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._superseded():
                    self._lost = f"another driver took over the lease on {self.output_url} ({self.superseded_url})"
                    return
                self._record["heartbeat_at"] = time.time()
                storage.atomic_write(self.url, _json(self._record))
            except Exception:  # a storage hiccup: try again at the next beat; expiry covers several
                continue

    def stop_heartbeat(self) -> None:
        """Stop refreshing the lease (release does this too); the lease then expires."""
        self._stop.set()
        if self._heartbeat.is_alive() and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()

    def check(self) -> None:
        """Raise LeaseLost if another driver has taken this lease over."""
        if self._lost or self._superseded():
            raise LeaseLost(self._lost or f"another driver took over the lease on {self.output_url} "
                            f"({self.superseded_url}): this driver stalled past its lease expiry and stops")

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (unless it was taken over)."""
        self.stop_heartbeat()
        if self._lost or self._superseded():
            return
        self._record.update(released=True, released_at=_iso(time.time()))
        storage.atomic_write(self.url, _json(self._record))

    def __enter__(self) -> "OutputLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_superseded(superseded_url: str) -> None:
    """For shard writers: refuse to commit once the driver's lease has been taken over."""
    if storage.exists(superseded_url):
        raise LeaseLost(f"the lease of the driver that started this write was taken over ({superseded_url}); "
                        "not committing")


def _json(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()
