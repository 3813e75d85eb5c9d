"""The commit protocol: data objects first, the manifest last; the manifest is the commit.

A partition counts as done only when its manifest says ``succeeded`` *and* every output it
lists still exists with the recorded sha256. Anything else (no manifest, ``failed``, a
missing or altered object) is redone by a re-run, so nothing is trusted on faith.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from hare.layout import manifest_key
from hare.store import KeyNotFound, ObjectStore, sha256_bytes
from hare.tables import to_parquet_bytes


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class OutputRef:
    key: str
    sha256: str
    bytes: int
    rows: int


@dataclass
class PartitionManifest:
    run_id: str
    partition_id: str
    stage: str
    status: str  # "succeeded" | "failed"
    attempts: int
    error: str | None = None
    outputs: list[OutputRef] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    finished_at: str = field(default_factory=utc_now)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PartitionManifest":
        raw = json.loads(data)
        raw["outputs"] = [OutputRef(**o) for o in raw.get("outputs", [])]
        return cls(**raw)


def read_manifest(
    store: ObjectStore, run_id: str, partition_id: str, stage: str = "generate"
) -> PartitionManifest | None:
    try:
        data = store.get_bytes(manifest_key(run_id, partition_id, stage))
    except KeyNotFound:
        return None
    try:
        return PartitionManifest.from_json(data)
    except (ValueError, TypeError) as exc:  # a corrupt manifest is no commit
        return PartitionManifest(run_id, partition_id, stage, "failed", 0, error=f"unreadable manifest: {exc}")


def verify_outputs(store: ObjectStore, manifest: PartitionManifest) -> str | None:
    """None when every listed output exists with its sha256, else what is wrong."""
    for out in manifest.outputs:
        try:
            data = store.get_bytes(out.key)
        except KeyNotFound:
            return f"missing object {out.key}"
        if sha256_bytes(data) != out.sha256:
            return f"sha256 mismatch for {out.key}"
    return None


def committed_manifest(
    store: ObjectStore, run_id: str, partition_id: str, stage: str = "generate"
) -> PartitionManifest | None:
    """The partition's manifest for ``stage`` if it is a valid commit, else None."""
    m = read_manifest(store, run_id, partition_id, stage)
    if m is None or m.status != "succeeded" or verify_outputs(store, m) is not None:
        return None
    return m


def commit_partition(
    store: ObjectStore,
    run_id: str,
    partition_id: str,
    stage: str,
    tables: dict[str, pa.Table],
    stats: dict[str, Any],
    attempts: int,
) -> PartitionManifest:
    """Write each table, then the manifest that lists them with their sha256 (the commit)."""
    outputs = []
    for key, table in tables.items():
        data = to_parquet_bytes(table)
        outputs.append(OutputRef(key, store.put_bytes(key, data), len(data), table.num_rows))
    manifest = PartitionManifest(run_id, partition_id, stage, "succeeded", attempts, None, outputs, stats)
    store.put_bytes(manifest_key(run_id, partition_id, stage), manifest.to_json())
    return manifest


def record_failure(
    store: ObjectStore, run_id: str, partition_id: str, stage: str, error: str, attempts: int
) -> PartitionManifest:
    """Leave a ``failed`` manifest so status and re-runs see what happened (never a commit)."""
    manifest = PartitionManifest(run_id, partition_id, stage, "failed", attempts, error[:2000])
    store.put_bytes(manifest_key(run_id, partition_id, stage), manifest.to_json())
    return manifest


def previous_attempts(store: ObjectStore, run_id: str, partition_id: str, stage: str = "generate") -> int:
    m = read_manifest(store, run_id, partition_id, stage)
    return m.attempts if m else 0
