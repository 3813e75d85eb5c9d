"""Corrupt objects are moved aside, named and logged, never silently reused or silently lost.

:func:`quarantine_object` copies an object to ``quarantine/<original key>`` with a reason
beside it (``quarantine/<original key>.reason.json``: why, when, its sha256 and size, what it
should have hashed to) and deletes the original, so whatever reads the key next finds it
missing and recomputes it (a stage output: the stage is redone; an index shard: it is rebuilt
or left out). :func:`read_checked` is the read that does this on the way: it returns the
object's bytes (or its table) when it reads and matches the sha256 it should have, and
otherwise quarantines it and raises :class:`CorruptObject` naming the key and the reason.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa

from hare.clock import utc_now
from hare.store.layout import QUARANTINE_PREFIX, is_quarantine_reason, quarantine_key, quarantine_reason_key
from hare.store import KeyNotFound, ObjectStore, sha256_bytes

log = logging.getLogger("hare.quarantine")

class CorruptObject(RuntimeError):
    """An object failed to read or did not match its sha256; it is now under ``quarantine/``."""

    def __init__(self, key: str, reason: str, moved_to: str | None) -> None:
        where = f"; moved to {moved_to}" if moved_to else ""
        super().__init__(f"corrupt object {key}: {reason}{where}")
        self.key, self.reason, self.moved_to = key, reason, moved_to


def quarantine_object(store: ObjectStore, key: str, reason: str, data: bytes | None = None,
                      expected_sha256: str | None = None) -> str | None:
    """Move ``key`` to ``quarantine/<key>`` with ``reason``; returns the quarantine key (None
    when the object is already gone). ``data``: its bytes when the caller has them already."""
    if data is None:
        try:
            data = store.get_bytes(key)
        except KeyNotFound:
            return None
    dest = quarantine_key(key)
    store.put_bytes(dest, data)
    note = {"key": key, "reason": reason, "quarantined_at": utc_now(), "sha256": sha256_bytes(data),
            "bytes": len(data), "expected_sha256": expected_sha256}
    store.put_bytes(quarantine_reason_key(key), json.dumps(note, indent=2).encode())
    store.delete(key)
    log.warning("quarantine: %s moved to %s: %s", store.uri(key), store.uri(dest), reason)
    return dest


def read_checked(store: ObjectStore, key: str, sha256: str | None = None) -> bytes:
    """The object's bytes when it matches ``sha256`` (if given); else it is quarantined and
    :class:`CorruptObject` raised. :class:`KeyNotFound` when it is missing."""
    data = store.get_bytes(key)
    if sha256 is not None and sha256_bytes(data) != sha256:
        reason = f"sha256 {sha256_bytes(data)[:12]} does not match the recorded {sha256[:12]}"
        raise CorruptObject(key, reason, quarantine_object(store, key, reason, data, sha256))
    return data


def read_table_checked(store: ObjectStore, key: str, sha256: str | None = None) -> pa.Table:
    """A Parquet object as a table, checked as :func:`read_checked` does; one that does not
    parse (truncated, overwritten with garbage) is quarantined too."""
    from hare.store.tables import from_parquet_bytes

    data = read_checked(store, key, sha256)
    try:
        return from_parquet_bytes(data, key)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt object
        reason = f"unreadable Parquet: {type(exc).__name__}: {str(exc)[:200]}"
        raise CorruptObject(key, reason, quarantine_object(store, key, reason, data, sha256)) from exc


def list_quarantined(store: ObjectStore, prefix: str = "") -> list[dict]:
    """The reason notes of what is under ``quarantine/`` (optionally under one key prefix)."""
    out = []
    for key in store.list(f"{QUARANTINE_PREFIX}{prefix}"):
        if is_quarantine_reason(key):
            try:
                out.append(json.loads(store.get_bytes(key)))
            except (KeyNotFound, ValueError):
                continue
    return out
