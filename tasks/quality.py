"""Stage ``quality``: rules first, every reject with its rule's name; scores kept for the report.

:func:`filter_table` is the plain function over a table of records (any table with ``text``;
``kind`` and ``finish_reason`` when present); :func:`filter_quality` is the Prefect task that runs
it over a run's partitions under the common stage wrapper and writes the quality-consistency
report (`runs/<run_id>/quality.json`, also on the dataset card).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task

from hare import lineage
from hare.config import QualityConfig, RunConfig
from hare.layout import quality_key, records_key
from hare.quality import SCORE_NAMES, judge
from hare.stage import run_record_stage
from hare.store import open_store
from hare.tables import from_parquet_bytes

STAGE = "quality"


def filter_table(records: pa.Table, cfg: QualityConfig, default_kind: str = "explanation") -> tuple[pa.Table, pa.Table]:
    """(kept with ``q_<score>`` columns, rejects with the same plus reject_stage and reject_reason)."""
    if "text" not in records.column_names:
        raise ValueError(f"no 'text' column to filter (columns: {records.column_names})")
    n = records.num_rows
    texts = [t or "" for t in records.column("text").to_pylist()]
    kinds = records.column("kind").to_pylist() if "kind" in records.column_names else [default_kind] * n
    finish = records.column("finish_reason").to_pylist() if "finish_reason" in records.column_names else ["stop"] * n
    verdicts = [judge(t, k, f or "stop", cfg) for t, k, f in zip(texts, kinds, finish)]
    scored = records
    for name in SCORE_NAMES:
        scored = scored.append_column(f"q_{name}", pa.array([v.scores[name] for v in verdicts], pa.float64()))
    bad = pa.array([v.reason is not None for v in verdicts])
    rejects = scored.filter(bad)
    reasons = [v.reason for v in verdicts if v.reason is not None]
    rejects = rejects.append_column("reject_stage", pa.array([STAGE] * len(reasons), pa.string()))
    rejects = rejects.append_column("reject_reason", pa.array(reasons, pa.string()))
    return scored.filter(pc.invert(bad)), rejects


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    p = np.percentile(values, [5, 25, 50, 75, 95])
    return {"p5": round(float(p[0]), 4), "p25": round(float(p[1]), 4), "median": round(float(p[2]), 4),
            "p75": round(float(p[3]), 4), "p95": round(float(p[4]), 4), "iqr": round(float(p[3] - p[1]), 4),
            "n": len(values)}


def quality_report(kept: list[pa.Table], rejects: list[pa.Table]) -> dict[str, Any]:
    """Spread of every score over kept records; reject counts by reason, per domain and kind."""
    kept_rows = [r for t in kept for r in t.to_pylist()]
    rej_rows = [r for t in rejects for r in t.to_pylist()]

    def domain(r: dict[str, Any]) -> str:
        return (r.get("topic_path") or "(none)").split(" > ")[0]

    by = {"domain": defaultdict(Counter), "kind": defaultdict(Counter)}
    for r in rej_rows:
        by["domain"][domain(r)][r["reject_reason"]] += 1
        by["kind"][r.get("kind") or "(none)"][r["reject_reason"]] += 1
    kept_by = {"domain": Counter(domain(r) for r in kept_rows), "kind": Counter(r.get("kind") or "(none)" for r in kept_rows)}
    return {
        "checked": len(kept_rows) + len(rej_rows),
        "kept": len(kept_rows),
        "rejected": len(rej_rows),
        "reject_reasons": dict(Counter(r["reject_reason"] for r in rej_rows).most_common()),
        "scores": {name: _spread([r[f"q_{name}"] for r in kept_rows]) for name in SCORE_NAMES},
        "by_domain": {d: {"kept": kept_by["domain"].get(d, 0), "rejects": dict(c)}
                      for d, c in sorted({**{d: Counter() for d in kept_by["domain"]}, **by["domain"]}.items())},
        "by_kind": {k: {"kept": kept_by["kind"].get(k, 0), "rejects": dict(c)}
                    for k, c in sorted({**{k: Counter() for k in kept_by["kind"]}, **by["kind"]}.items())},
    }


@task(name="quality", retries=1, retry_delay_seconds=2)
def filter_quality(cfg: RunConfig, run_id: str, partition_ids: list[str]) -> dict[str, Any]:
    """Filter every dataset partition of a run and write the quality-consistency report."""
    store = open_store(cfg.store.url)

    def stage_fn(records: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
        kept, rejects = filter_table(records, cfg.quality)
        return kept, rejects, {"reasons": dict(Counter(rejects.column("reject_reason").to_pylist()))}

    results = [run_record_stage(store, run_id, pid, STAGE, cfg.stage_input(STAGE), stage_fn)
               for pid in partition_ids]
    kept = [from_parquet_bytes(store.get_bytes(records_key(run_id, p, STAGE))) for p in partition_ids]
    report = quality_report(kept, [r for r, _ in results])
    store.put_bytes(quality_key(run_id), json.dumps(report, indent=2).encode())
    lineage.emit(store, run_id, "synthesize.quality", "COMPLETE",
                 outputs=[lineage.dataset(store.uri(records_key(run_id, p, STAGE))) for p in partition_ids],
                 facets={"stage": STAGE, "kept": report["kept"], "rejected": report["rejected"]})
    get_run_logger().info("quality: kept %d of %d; reasons %s", report["kept"], report["checked"],
                          report["reject_reasons"])
    return report
