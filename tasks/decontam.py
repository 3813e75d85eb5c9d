"""Stage ``decontam``: drop records that leak benchmark items (n-gram, then paraphrase).

:func:`decontaminate_table` is the plain function over an Arrow table of records;
:func:`decontaminate` is the Prefect task that runs it over a run's partitions, committing each
partition's kept records and rejects (with benchmark, item id, method and score) under a
``decontam`` manifest, and writes the run's contamination report.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from hare import lineage
from hare.benchmarks import load_benchmark
from hare.config import DecontamConfig, RunConfig
from hare.decontam import Decontaminator
from hare.layout import decontaminated_key, decontamination_key, generated_key, rejects_key
from hare.manifest import commit_partition, committed_manifest, previous_attempts, record_failure
from hare.schema import DECONTAM_REJECT_SCHEMA
from hare.store import ObjectStore, open_store
from hare.tables import from_parquet_bytes

STAGE = "decontam"


def build_decontaminator(cfg: DecontamConfig) -> Decontaminator:
    from hare.embed import embed

    items = [item for spec in cfg.benchmarks for item in load_benchmark(spec)]
    return Decontaminator(cfg, items, embed)


def decontaminate_table(
    records: pa.Table, dec: Decontaminator, default_kind: str = "instruction"
) -> tuple[pa.Table, pa.Table]:
    """(kept records, rejects: the same columns plus the benchmark item each one leaked).

    Works on any table with a ``text`` column; ``kind`` (which picks N) defaults to
    ``default_kind`` when the table has none.
    """
    if "text" not in records.column_names:
        raise ValueError(f"no 'text' column to decontaminate (columns: {records.column_names})")
    texts = [t or "" for t in records.column("text").to_pylist()]
    kinds = records.column("kind").to_pylist() if "kind" in records.column_names else [default_kind] * len(texts)
    matches = dec.check(texts, kinds)
    hits = [m for m in matches if m is not None]
    rejects = records.filter(pa.array([m is not None for m in matches]))
    extra = {
        "reject_stage": [STAGE] * len(hits),
        "reject_reason": [f"contaminated:{m.method}:{m.benchmark}" for m in hits],
        "benchmark": [m.benchmark for m in hits],
        "benchmark_item": [m.item_id for m in hits],
        "match_method": [m.method for m in hits],
        "match_score": [m.score for m in hits],
    }
    for name, values in extra.items():
        if name not in rejects.column_names:
            rejects = rejects.append_column(name, pa.array(values, type=DECONTAM_REJECT_SCHEMA.field(name).type
                                                           if name in DECONTAM_REJECT_SCHEMA.names else None))
    return records.filter(pa.array([m is None for m in matches])), rejects


def contamination_report(rejects: list[pa.Table], checked: int) -> dict[str, Any]:
    """Per benchmark: records matched, by method, and which items."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"records": 0, "by_method": defaultdict(int), "items": set()})
    for table in rejects:
        for r in table.select(["benchmark", "benchmark_item", "match_method"]).to_pylist():
            b = per[r["benchmark"]]
            b["records"] += 1
            b["by_method"][r["match_method"]] += 1
            b["items"].add(r["benchmark_item"])
    return {
        "records_checked": checked,
        "records_dropped": sum(b["records"] for b in per.values()),
        "benchmarks": {name: {"records": b["records"], "by_method": dict(b["by_method"]),
                              "items": sorted(b["items"], key=lambda x: (len(x), x))}
                       for name, b in per.items()},
    }


def _partition(store: ObjectStore, dec: Decontaminator, run_id: str, pid: str) -> tuple[pa.Table, int]:
    """Decontaminate one committed partition (or reuse its commit); returns (rejects, checked)."""
    rk = rejects_key(run_id, STAGE, pid)
    done = committed_manifest(store, run_id, pid, STAGE)
    if done is not None:
        return from_parquet_bytes(store.get_bytes(rk), rk), done.stats["checked"]
    attempts = previous_attempts(store, run_id, pid, STAGE) + 1
    started = time.perf_counter()
    try:
        records = from_parquet_bytes(store.get_bytes(generated_key(run_id, pid)), generated_key(run_id, pid))
        kept, rejects = decontaminate_table(records, dec)
        stats = {"checked": records.num_rows, "records": kept.num_rows, "rejects": rejects.num_rows,
                 "seconds": round(time.perf_counter() - started, 3)}
        commit_partition(store, run_id, pid, STAGE, {decontaminated_key(run_id, pid): kept, rk: rejects},
                         stats, attempts)
    except Exception as exc:
        record_failure(store, run_id, pid, STAGE, f"{type(exc).__name__}: {exc}", attempts)
        raise
    return rejects, records.num_rows


@task(name="decontaminate", retries=1, retry_delay_seconds=2)
def decontaminate(cfg: RunConfig, run_id: str, partition_ids: list[str]) -> dict[str, Any]:
    """Decontaminate every dataset partition of a run; write the run's contamination report."""
    logger = get_run_logger()
    store = open_store(cfg.store.url)
    dec = build_decontaminator(cfg.decontamination)
    results = [_partition(store, dec, run_id, pid) for pid in partition_ids]
    report = contamination_report([r for r, _ in results], sum(n for _, n in results))
    store.put_bytes(decontamination_key(run_id), json.dumps(report, indent=2).encode())
    lineage.emit(
        store, run_id, "synthesize.decontam", "COMPLETE",
        inputs=[lineage.dataset(b.source if "://" in b.source else f"file://{b.source}")
                for b in cfg.decontamination.benchmarks],
        outputs=[lineage.dataset(store.uri(decontaminated_key(run_id, p))) for p in partition_ids],
        facets={"stage": STAGE, "records_dropped": report["records_dropped"]},
    )
    logger.info("decontamination: %d of %d records dropped", report["records_dropped"], report["records_checked"])
    return report
