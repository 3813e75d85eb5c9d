"""The commit protocol: data objects first, the manifest last; the manifest is the commit.

A partition counts as done only when its manifest says ``succeeded`` *and* every output it
lists still exists with the recorded sha256. Anything else (no manifest, ``failed``, a
missing or altered object) is redone by a re-run, so nothing is trusted on faith.

``committed_manifest`` (what a re-run asks) re-hashes. ``check_outputs`` checks many manifests
at once in a thread pool: shallow (HEAD: exists with its recorded size, what ``hare status``
uses) or deep (re-hash, what ``hare verify`` uses).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from hare.clock import utc_now
from hare.store.layout import generated_key, manifest_key, plan_key, records_key, records_keys, rejects_key
from hare.store import KeyNotFound, ObjectStore, retry_count, sha256_bytes
from hare.store.tables import to_parquet_bytes

K = TypeVar("K")


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

    @property
    def inputs(self) -> dict[str, str] | None:
        """What the commit was computed from: the sha256 of every object it read, by key (and
        ``params:<section>``: the hash of the settings and input files it depends on). None for
        a commit of older code that did not record it (such a commit is redone)."""
        return self.stats.get("inputs")

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
    return parse_manifest(data, run_id, partition_id, stage)


UNREADABLE = "unreadable manifest: "


def parse_manifest(data: bytes, run_id: str, partition_id: str, stage: str) -> PartitionManifest:
    """A stored manifest; one that does not parse is a ``failed`` one (a corrupt manifest is no commit)."""
    try:
        return PartitionManifest.from_json(data)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return PartitionManifest(run_id, partition_id, stage, "failed", 0, error=f"{UNREADABLE}{exc}")


def verify_outputs(store: ObjectStore, manifest: PartitionManifest) -> str | None:
    """None when every listed output exists with its sha256, else what is wrong (the first)."""
    return next((p for p in check_objects(store, manifest.outputs, deep=True) if p), None)


def check_objects(store: ObjectStore, refs: Sequence[OutputRef], deep: bool = False,
                  workers: int = 16) -> list[str | None]:
    """Check each object against its ref, in parallel: None when it matches, else what is wrong.

    Shallow: one HEAD each, existence and size (what status trusts a manifest with). Deep: the
    object is read and re-hashed (sha256); memory holds at most ``workers`` objects at once."""

    def one(ref: OutputRef) -> str | None:
        if deep:
            try:
                data = store.get_bytes(ref.key)
            except KeyNotFound:
                return f"missing object {ref.key}"
            if sha256_bytes(data) != ref.sha256:
                return f"sha256 mismatch for {ref.key}"
            return None
        size = store.head(ref.key)
        if size is None:
            return f"missing object {ref.key}"
        if size != ref.bytes:
            return f"size mismatch for {ref.key}: {size} bytes, manifest says {ref.bytes}"
        return None

    if not refs:
        return []
    if workers <= 1 or len(refs) == 1:
        return [one(r) for r in refs]
    with ThreadPoolExecutor(max_workers=min(workers, len(refs)), thread_name_prefix="hare-check") as pool:
        return list(pool.map(one, refs))


def check_outputs(store: ObjectStore, manifests: Mapping[K, PartitionManifest], deep: bool = False,
                  workers: int = 16) -> dict[K, str | None]:
    """For each manifest (keyed as you like: its store key, or ``(partition_id, stage)``), None
    when every output it lists checks out, else the first problem. Shallow (default): existence
    and size by HEAD; ``deep``: re-hash. All outputs of all manifests are checked in one pool of
    ``workers`` threads, so 10,000 partitions cost 10,000 parallel HEADs, not a serial walk."""
    flat = [(k, ref) for k, m in manifests.items() for ref in m.outputs]
    problems = check_objects(store, [ref for _, ref in flat], deep=deep, workers=workers)
    out: dict[K, str | None] = {k: None for k in manifests}
    for (k, _), problem in zip(flat, problems):
        if problem is not None and out[k] is None:
            out[k] = problem
    return out


def committed_manifest(
    store: ObjectStore, run_id: str, partition_id: str, stage: str = "generate", quarantine: bool = False
) -> PartitionManifest | None:
    """The partition's manifest for ``stage`` if it is a valid commit, else None.

    ``quarantine``: an output whose sha256 no longer matches the manifest is moved aside under
    ``quarantine/`` with the reason (hare/store/quarantine.py) before the stage is redone, so a
    corrupt object is named and kept for inspection, never read again as if it were good."""
    m = read_manifest(store, run_id, partition_id, stage)
    if m is None or m.status != "succeeded":
        return None
    problems = check_objects(store, m.outputs, deep=True)
    if not any(problems):
        return m
    if quarantine:
        from hare.store.quarantine import quarantine_object

        for ref, problem in zip(m.outputs, problems):
            if problem and problem.startswith("sha256 mismatch"):
                quarantine_object(store, ref.key, f"{problem} (committed by {manifest_key(run_id, partition_id, stage)})",
                                  expected_sha256=ref.sha256)
    return None


def output_sha256(manifest: PartitionManifest | None, key: str) -> str | None:
    """The sha256 a manifest recorded for one of its outputs (None: not among them)."""
    if manifest is None:
        return None
    return next((o.sha256 for o in manifest.outputs if o.key == key), None)


def records_output(manifest: PartitionManifest | None, run_id: str, partition_id: str, stage: str) -> str:
    """The key a stage's commit keeps a partition's records under: the current one, or the
    spelling an earlier run wrote (``decontaminated/``) when that is what the commit lists."""
    listed = {o.key for o in manifest.outputs} if manifest is not None else set()
    return next((k for k in records_keys(run_id, partition_id, stage) if k in listed),
                records_key(run_id, partition_id, stage))


def kept_records(stats: dict[str, Any]) -> int:
    """Records a commit kept: ``kept``; earlier runs' commits said ``records``."""
    return int(stats.get("kept", stats.get("records", 0)))


def rejected_records(stats: dict[str, Any]) -> int:
    """Records a commit rejected: ``rejected``; earlier runs' commits said ``rejects``."""
    return int(stats.get("rejected", stats.get("rejects", 0)))


def commit_partition(
    store: ObjectStore,
    run_id: str,
    partition_id: str,
    stage: str,
    tables: dict[str, pa.Table],
    stats: dict[str, Any],
    attempts: int,
    inputs: dict[str, str] | None = None,
    retries_since: int | None = None,
) -> PartitionManifest:
    """Write each table, then the manifest that lists them with their sha256 (the commit).
    ``inputs``: the sha256 of what the stage read, by key (kept in the manifest's stats).
    ``retries_since``: this process's store retry count (``retry_count()``) when the task
    began; the transient store errors retried since, up to the manifest, go in
    ``stats["store_retries"]`` (an outage ridden out shows there)."""
    if inputs is not None:
        stats = {**stats, "inputs": dict(sorted(inputs.items()))}
    outputs = []
    for key, table in tables.items():
        data = to_parquet_bytes(table)
        outputs.append(OutputRef(key, store.put_bytes(key, data), len(data), table.num_rows))
    if retries_since is not None:
        stats = {**stats, "store_retries": retry_count() - retries_since}
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


@dataclass
class PartitionStart:
    """What a partition's first commit (generate, or read for a corpus) starts from: its plan's
    bytes and sha256, the commit already there if it was made from this plan (then the task
    skips), and the attempt number. One place for the skip-or-redo rule of every first commit."""

    plan_key: str
    plan_bytes: bytes
    inputs: dict[str, str]
    reusable: PartitionManifest | None   # committed from this plan (or by older code that kept no inputs)
    plan_changed: bool                   # committed, but from another plan: redone
    attempts: int
    retries_before: int

    def skipped(self, partition_id: str, say: Any) -> dict[str, Any] | None:
        """The task's result when the partition is committed from this plan (said with ``say``), else None."""
        if self.reusable is None:
            return None
        say("partition %s already committed; skipped", partition_id)
        return {"partition_id": partition_id, "status": "skipped", "stats": self.reusable.stats}


def commit_first(store: ObjectStore, start: PartitionStart, run_id: str, partition_id: str, kept: pa.Table,
                 rejects: pa.Table, stats: dict[str, Any]) -> PartitionManifest:
    """Commit a partition's first stage (``generate``: generated or read records and their rejects)."""
    return commit_partition(store, run_id, partition_id, "generate",
                            {generated_key(run_id, partition_id): kept, rejects_key(run_id, "generate", partition_id): rejects},
                            stats, start.attempts, start.inputs, retries_since=start.retries_before)


def start_partition(store: ObjectStore, run_id: str, partition_id: str) -> PartitionStart:
    """Read the partition's plan and decide whether its committed generation is still good."""
    retries_before = retry_count()
    pk = plan_key(run_id, partition_id)
    plan_bytes = store.get_bytes(pk)
    inputs = {pk: sha256_bytes(plan_bytes)}
    done = committed_manifest(store, run_id, partition_id, quarantine=True)
    reusable = done if done is not None and done.inputs in (None, inputs) else None
    return PartitionStart(pk, plan_bytes, inputs, reusable, done is not None and reusable is None,
                          previous_attempts(store, run_id, partition_id) + 1, retries_before)
