"""The shape every per-partition record stage shares, and the one wrapper that runs them.

A stage (quality, decontam, features) is one object: a name (keys, manifests, reports and the
CLI all use it), its config section, ``enabled(cfg)``, ``process(records) -> StageResult``
(kept rows, rejects with reasons, other objects to commit, and a small mergeable aggregate) and
``merge(aggregates) -> report``. :func:`run_record_stage` reads the partition's records from
the stage before, skips the work when the stage's own manifest already commits it, and else
commits what ``process`` returned with the manifest last (attempts counted, failures recorded,
the aggregate in the manifest's stats), so no stage writes that code itself (datatrove's
steps get their stats the same way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from hare.layout import records_key, rejects_key
from hare.manifest import commit_partition, committed_manifest, previous_attempts, record_failure
from hare.store import ObjectStore
from hare.tables import from_parquet_bytes

if TYPE_CHECKING:
    from hare.config import RunConfig


@dataclass
class StageResult:
    """What a stage made of one partition's records."""

    kept: pa.Table | None                 # None: the records pass through unchanged (features)
    rejects: pa.Table | None              # with reject_stage and reject_reason columns
    aggregate: dict[str, Any]             # counts, reasons, sketches: merged into the run report
    extra: dict[str, pa.Table] = field(default_factory=dict)  # other objects to commit, by key


class RecordStage(Protocol):
    name: str              # "quality": its folder, manifest suffix, report and CLI verb
    section: str           # its config section (resources live there too)
    report: str | None     # run-level report file, runs/<id>/<report>, or None
    produces_records: bool  # False: the next stage reads the records this one read

    def enabled(self, cfg: "RunConfig") -> bool: ...
    def process(self, cfg: "RunConfig", run_id: str, partition_id: str, records: pa.Table) -> StageResult: ...
    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]: ...


def run_record_stage(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str,
                     stage: RecordStage, source: str) -> dict[str, Any]:
    """The stats of ``stage`` on one partition (its aggregate included), computed now from the
    records ``source`` kept, or read from the stage's commit."""
    done = committed_manifest(store, run_id, partition_id, stage.name)
    if done is not None and "aggregate" in done.stats:  # a commit of older code has none: redo it
        return done.stats
    attempts = previous_attempts(store, run_id, partition_id, stage.name) + 1
    started = time.perf_counter()
    try:
        src = records_key(run_id, partition_id, source)
        records = from_parquet_bytes(store.get_bytes(src), src)
        result = stage.process(cfg, run_id, partition_id, records)
        outputs: dict[str, pa.Table] = {}
        if result.kept is not None:
            outputs[records_key(run_id, partition_id, stage.name)] = result.kept
        if result.rejects is not None:
            outputs[rejects_key(run_id, stage.name, partition_id)] = result.rejects
        outputs.update(result.extra)
        kept = result.kept.num_rows if result.kept is not None else records.num_rows
        stats = {"checked": records.num_rows, "records": kept,
                 "rejects": result.rejects.num_rows if result.rejects is not None else 0,
                 "seconds": round(time.perf_counter() - started, 3), "aggregate": result.aggregate}
        commit_partition(store, run_id, partition_id, stage.name, outputs, stats, attempts)
    except Exception as exc:
        record_failure(store, run_id, partition_id, stage.name, f"{type(exc).__name__}: {exc}", attempts)
        raise
    return stats


def reject_reasons(rejects: pa.Table) -> dict[str, int]:
    """Rejects counted by reason (the aggregate every filtering stage keeps)."""
    if rejects.num_rows == 0:
        return {}
    counts = rejects.group_by("reject_reason").aggregate([("reject_reason", "count")])
    return dict(zip(counts.column("reject_reason").to_pylist(), counts.column("reject_reason_count").to_pylist()))


def add_counts(target: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for k, n in counts.items():
        target[k] = target.get(k, 0) + n
    return target
