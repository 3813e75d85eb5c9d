"""Leases: a lock object in the store with an owner and an expiry, taken with a conditional write.

One holder at a time for a name (a run id, the store's index): :func:`acquire` creates the
lease object with ``put_if_absent`` (S3 ``If-None-Match: *``; a create-exclusive file locally);
if it exists and has expired (its holder crashed, or released it), the lease is taken over
with ``replace_if`` (S3 ``If-Match`` on its ETag; a compare-and-swap under a folder lock
locally), so of two takers exactly one wins. A holder renews it (:meth:`Lease.renew`, or
:func:`held`, which renews in a thread every third of the ttl) and releases it at the end by
writing it back as expired. Each lease carries a random token: a holder only ever renews or
releases the lease it took, never one taken over after it expired.

The run id lease (:func:`hold_run`): ``runs/<run_id>/_lease.json``. Starting a run id that
another live process holds is refused with :class:`LeaseHeld`, whose message names the owner
and when the lease expires; a crashed run's lease expires after ``HARE_LEASE_SECONDS``
(default 120 s) and the next start takes it over.

A lease also names its holder process (host, boot id, pid and the pid's start time). A lease
whose holder ran on this machine and is gone (the pid is dead, or reused by another process)
is taken over at once, without waiting for its expiry: after a SIGKILL of ``hare run``, the
next ``hare rerun`` starts straight away. Another machine's holder is only ever judged by
its expiry (we cannot see its processes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from hare.store.layout import run_lease_key
from hare.process_tree import process_start
from hare.store.runs import RunError
from hare.store import KeyNotFound, ObjectStore

log = logging.getLogger("hare.lease")

DEFAULT_TTL_S = 120.0
TTL_ENV = "HARE_LEASE_SECONDS"


class LeaseHeld(RunError):
    """Another live holder has the lease; the message names it and when its lease expires."""

    def __init__(self, message: str, holder: "Lease") -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(RuntimeError):
    """A holder found its lease taken over (it had expired): stop writing under it."""


def lease_ttl_s() -> float:
    raw = os.environ.get(TTL_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_TTL_S
    except ValueError:
        raise RunError(f"{TTL_ENV}={raw!r} is not a number of seconds") from None


def _flow_run_id() -> str | None:
    """The Prefect flow run this process runs, if any (never imports Prefect: a process that has
    not loaded it runs no flow)."""
    prefect_runtime = sys.modules.get("prefect.runtime")
    if prefect_runtime is None:
        return None
    try:
        return prefect_runtime.flow_run.id
    except Exception:  # noqa: BLE001 - outside Prefect
        return None


def default_owner() -> str:
    """Who holds a lease, for messages: host, process id and, inside Prefect, the flow run."""
    owner = f"{socket.gethostname()} pid {os.getpid()}"
    flow_run = _flow_run_id()
    return f"{owner}, flow run {flow_run}" if flow_run else owner


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def this_process() -> dict[str, Any]:
    """Who holds a lease, as a machine can check it: host, boot id, pid, the pid's start time."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "flow_run": _flow_run_id()}


@dataclass
class Lease:
    """The lease object as stored (JSON), plus the store version it was read at."""

    name: str
    owner: str
    token: str
    acquired_at: float
    expires_at: float  # epoch seconds
    ttl_s: float
    key: str = ""
    version: str = ""
    holder: dict[str, Any] = field(default_factory=dict)   # this_process() of the holder
    # not stored: the lease this one was taken over from (a crashed holder's), for the caller
    previous: "Lease | None" = field(default=None, compare=False, repr=False)

    def to_json(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k not in ("key", "version", "previous")}
        return json.dumps(body, indent=2, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes, key: str, version: str) -> "Lease":
        try:
            raw = json.loads(data)
            return cls(str(raw["name"]), str(raw["owner"]), str(raw["token"]), float(raw["acquired_at"]),
                       float(raw["expires_at"]), float(raw["ttl_s"]), key, version, dict(raw.get("holder") or {}))
        except (ValueError, KeyError, TypeError):  # an unreadable lease counts as expired
            return cls("", "(unreadable lease)", "", 0.0, 0.0, 0.0, key, version)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    def holder_gone(self) -> bool:
        """The holder ran on this machine (same host, same boot) and that process is no more."""
        h = self.holder
        if not h.get("pid") or h.get("host") != socket.gethostname() or h.get("boot_id") != _boot_id():
            return False
        return process_start(int(h["pid"])) != h.get("pid_start")

    def live(self) -> bool:
        """Someone holds it: not expired, and its holder is not a process known to be dead."""
        return not self.expired() and not self.holder_gone()

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.expires_at, timezone.utc).isoformat(timespec="seconds")
        left = self.expires_at - time.time()
        return f"{self.owner} (lease expires {until}, in {max(left, 0):.0f} s, unless renewed)"

    def renew(self, store: ObjectStore) -> None:
        """Push the expiry ``ttl_s`` ahead; :class:`LeaseLost` if someone took it over."""
        nxt = Lease(self.name, self.owner, self.token, self.acquired_at, time.time() + self.ttl_s, self.ttl_s, self.key,
                    holder=self.holder)
        if not store.replace_if(self.key, nxt.to_json(), self.version):
            current = read_lease(store, self.key)
            if current is None or current.token != self.token:
                raise LeaseLost(f"lease {self.key} was taken over by "
                                f"{current.owner if current else 'nobody (deleted)'}")
            self.version = current.version  # our own write landed on a retried request
            self.expires_at = current.expires_at
            return
        _, self.version = store.get_versioned(self.key)
        self.expires_at = nxt.expires_at

    def release(self, store: ObjectStore) -> None:
        """Write the lease back as expired (only if it is still ours), so the next taker need not wait."""
        done = Lease(self.name, self.owner, self.token, self.acquired_at, 0.0, self.ttl_s, self.key, holder=self.holder)
        try:
            if not store.replace_if(self.key, done.to_json(), self.version):
                log.warning("lease %s: not released, it is no longer ours", self.key)
        except Exception as exc:  # noqa: BLE001 - it expires by itself
            log.warning("lease %s: release failed (%s); it expires at %s", self.key, exc, self.expires_at)


def read_lease(store: ObjectStore, key: str) -> Lease | None:
    """The lease stored at ``key``, None when there is none."""
    try:
        data, version = store.get_versioned(key)
    except KeyNotFound:
        return None
    return Lease.parse(data, key, version)


def acquire(store: ObjectStore, key: str, name: str, owner: str | None = None, ttl_s: float | None = None,
            what: str | None = None) -> Lease:
    """Take the lease at ``key``: create it, or take over an expired one or one whose holder
    process is gone (:meth:`Lease.live`; the returned lease's ``previous`` is then the one taken
    over). :class:`LeaseHeld` when a live holder has it. ``what`` names the locked thing."""
    ttl = lease_ttl_s() if ttl_s is None else ttl_s
    owner = owner or default_owner()
    token = secrets.token_hex(8)
    current: Lease | None = None
    for _ in range(8):  # each turn: someone else changed the lease between our read and write
        now = time.time()
        mine = Lease(name, owner, token, now, now + ttl, ttl, key, holder=this_process())
        if store.put_if_absent(key, mine.to_json()):
            return _confirm(store, mine)
        current = read_lease(store, key)
        if current is None:
            continue  # deleted meanwhile: try to create it again
        if current.token == token:  # our create landed on a request that was retried
            return current
        if current.live():
            raise LeaseHeld(f"{what or name} is held by {current.describe()}; wait for it to finish, "
                            f"or if it crashed, start again after its lease expires", current)
        if store.replace_if(key, mine.to_json(), current.version):
            why = "expired" if current.expired() else "its process is gone"
            log.info("lease %s: taken over from %s (%s)", key, current.owner, why)
            taken = _confirm(store, mine)
            taken.previous = current if current.expires_at > 0 else None  # not released: it crashed
            return taken
    raise LeaseHeld(f"{what or name}: the lease at {key} keeps changing hands; try again", current or Lease(name, "(unknown)", "", 0, 0, ttl, key))


def _confirm(store: ObjectStore, mine: Lease) -> Lease:
    """The lease as stored after our write (its version, for renew and release)."""
    current = read_lease(store, mine.key)
    if current is None or current.token != mine.token:
        raise LeaseHeld(f"{mine.name}: lost the lease at {mine.key} right after taking it", current or mine)
    return current


@contextlib.contextmanager
def held(store: ObjectStore, key: str, name: str, owner: str | None = None, ttl_s: float | None = None,
         what: str | None = None) -> Iterator[Lease]:
    """Hold the lease while the block runs: renewed in a thread every third of the ttl,
    released at the end. A renewal that fails for good is logged (the lease then expires)."""
    lease = acquire(store, key, name, owner, ttl_s, what)
    stop = threading.Event()

    def renew_loop() -> None:
        while not stop.wait(lease.ttl_s / 3):
            try:
                lease.renew(store)
            except LeaseLost as exc:
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - the store is retried inside; try again next turn
                log.warning("lease %s: renewal failed: %s", key, exc)

    thread = threading.Thread(target=renew_loop, name=f"hare-lease-{name}", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join(timeout=5)
        lease.release(store)


def hold_run(store: ObjectStore, run_id: str, ttl_s: float | None = None) -> contextlib.AbstractContextManager[Lease]:
    """The run id's lease for the duration of a run: a second start of the same run id while
    this one lives is refused with :class:`LeaseHeld` naming this owner."""
    return held(store, run_lease_key(run_id), run_id, ttl_s=ttl_s, what=f"run {run_id}")
