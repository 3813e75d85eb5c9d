"""Stage ``decontam``: drop records that leak benchmark items (n-gram, then paraphrase).

:func:`decontaminate_table` is the plain function over an Arrow table of records;
:func:`decontaminate` is the Prefect task that runs it over a run's partitions, committing each
partition's kept records and rejects (with benchmark, item id, method and score) under a
``decontam`` manifest, and writes the run's contamination report.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from hare import lineage
from hare.benchmarks import load_benchmark
from hare.config import DecontamConfig, RunConfig
from hare.decontam import Decontaminator
from hare.layout import decontaminated_key, decontamination_key
from hare.schema import DECONTAM_REJECT_SCHEMA
from hare.stage import run_record_stage
from hare.store import open_store

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


@task(name="decontaminate", retries=1, retry_delay_seconds=2)
def decontaminate(cfg: RunConfig, run_id: str, partition_ids: list[str]) -> dict[str, Any]:
    """Decontaminate every dataset partition of a run; write the run's contamination report."""
    logger = get_run_logger()
    store = open_store(cfg.store.url)
    dec = build_decontaminator(cfg.decontamination)

    def stage_fn(records: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        return (*decontaminate_table(records, dec), {})

    results = [run_record_stage(store, run_id, pid, STAGE, cfg.stage_input(STAGE), stage_fn)
               for pid in partition_ids]
    report = contamination_report([r for r, _ in results], sum(st["checked"] for _, st in results))
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
