"""The one wrapper every per-partition record stage runs under (quality, decontam, ...).

A stage is a plain function ``records -> (kept, rejects, stats)`` over Arrow tables. This
wrapper reads the partition's records from the previous stage, skips the work when the stage's
own manifest already commits it, and otherwise commits kept records and rejects with the
manifest last (attempts counted, failures recorded), so no stage writes that code itself.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pyarrow as pa

from hare.layout import records_key, rejects_key
from hare.manifest import commit_partition, committed_manifest, previous_attempts, record_failure
from hare.store import ObjectStore
from hare.tables import from_parquet_bytes

StageFn = Callable[[pa.Table], tuple[pa.Table, pa.Table, dict[str, Any]]]


def run_record_stage(
    store: ObjectStore, run_id: str, partition_id: str, stage: str, input_stage: str, fn: StageFn
) -> tuple[pa.Table, dict[str, Any]]:
    """(rejects, stats) of ``stage`` on one partition, computed now or read from its commit."""
    rk = rejects_key(run_id, stage, partition_id)
    done = committed_manifest(store, run_id, partition_id, stage)
    if done is not None:
        return from_parquet_bytes(store.get_bytes(rk), rk), done.stats
    attempts = previous_attempts(store, run_id, partition_id, stage) + 1
    started = time.perf_counter()
    try:
        src = records_key(run_id, partition_id, input_stage)
        records = from_parquet_bytes(store.get_bytes(src), src)
        kept, rejects, extra = fn(records)
        stats = {"checked": records.num_rows, "records": kept.num_rows, "rejects": rejects.num_rows,
                 "seconds": round(time.perf_counter() - started, 3), **extra}
        commit_partition(store, run_id, partition_id, stage,
                         {records_key(run_id, partition_id, stage): kept, rk: rejects}, stats, attempts)
    except Exception as exc:
        record_failure(store, run_id, partition_id, stage, f"{type(exc).__name__}: {exc}", attempts)
        raise
    return rejects, stats
