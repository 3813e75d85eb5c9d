"""Stage ``decontam``: drop records that leak benchmark items (n-gram, then paraphrase).

:func:`decontaminate_table` is the plain function over an Arrow table of records;
:class:`Decontam` is the stage object the flow runs on each partition as soon as its quality
commit lands: kept records and rejects (with benchmark, item id, method and score) under a
``decontam`` manifest, whose aggregate merges into the run's contamination report.
"""

from __future__ import annotations

import functools
from typing import Any

import pyarrow as pa

from hare.benchmarks import load_benchmark
from hare.config import DecontamConfig, RunConfig
from hare.decontam import Decontaminator
from hare.schema import DECONTAM_REJECT_SCHEMA
from hare.stage import StageResult, add_counts

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
    rejects = records.filter(pa.array([m is not None for m in matches], pa.bool_()))
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
    return records.filter(pa.array([m is None for m in matches], pa.bool_())), rejects


def contamination_aggregate(rejects: pa.Table, checked: int) -> dict[str, Any]:
    """One partition's figures: records matched per benchmark, by method, and which items."""
    per: dict[str, dict[str, Any]] = {}
    rows = rejects.select(["benchmark", "benchmark_item", "match_method"]).to_pylist() if rejects.num_rows else []
    for r in rows:
        b = per.setdefault(r["benchmark"], {"records": 0, "by_method": {}, "items": []})
        b["records"] += 1
        add_counts(b["by_method"], {r["match_method"]: 1})
        if r["benchmark_item"] not in b["items"]:
            b["items"].append(r["benchmark_item"])
    return {"records_checked": checked, "benchmarks": per}


def merge_contamination(aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's contamination report: per benchmark, records matched, by method, and items."""
    per: dict[str, dict[str, Any]] = {}
    for agg in aggregates:
        for name, b in agg["benchmarks"].items():
            slot = per.setdefault(name, {"records": 0, "by_method": {}, "items": set()})
            slot["records"] += b["records"]
            add_counts(slot["by_method"], b["by_method"])
            slot["items"].update(b["items"])
    return {
        "records_checked": sum(a["records_checked"] for a in aggregates),
        "records_dropped": sum(b["records"] for b in per.values()),
        "benchmarks": {name: {"records": b["records"], "by_method": b["by_method"],
                              "items": sorted(b["items"], key=lambda x: (len(x), x))}
                       for name, b in per.items()},
    }


def contamination_report(rejects: list[pa.Table], checked: int) -> dict[str, Any]:
    """Per benchmark: records matched, by method, and which items (``hare decontam`` on a file)."""
    return {**merge_contamination([contamination_aggregate(r, 0) for r in rejects]), "records_checked": checked}


@functools.lru_cache(maxsize=2)
def _decontaminator(section_json: str, run_id: str) -> Decontaminator:
    """Built once per worker process and config (benchmark n-grams and item embeddings), and
    reused by every partition that worker decontaminates."""
    from hare.embedders import pool_embed

    cfg = DecontamConfig.model_validate_json(section_json)
    items = [item for spec in cfg.benchmarks for item in load_benchmark(spec)]
    return Decontaminator(cfg, items, pool_embed(run_id))


class Decontam:
    """Stage ``decontam``: n-gram overlap, then confirmed paraphrase search, per benchmark."""

    name, section, report, produces_records = STAGE, "decontamination", "decontamination.json", True

    def enabled(self, cfg: RunConfig) -> bool:
        return bool(cfg.decontamination.benchmarks)

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        dec = _decontaminator(cfg.decontamination.model_dump_json(), run_id)
        kept, rejects = decontaminate_table(records, dec)
        return StageResult(kept, rejects, contamination_aggregate(rejects, records.num_rows))

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_contamination(aggregates)
