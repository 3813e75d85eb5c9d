"""Stage ``dedup``: exact, near (MinHash) and semantic (FAISS lists) duplicates, global and incremental.

The decision (hare/stages/dedup/index.py) reads no record: it joins the band keys and list entries
each partition's streamed ``features`` stage stored with the store's sharded index, one task
per bucket group, so its cost grows with this run, not with what the store holds. Earlier
runs come first in the global order, so a new run drops what is already published. The
verdicts are then applied one partition at a time (Ray tasks; one partition's records in
memory each), each committed under a ``dedup`` manifest whose aggregate (layers, the kept
records' axes and tokens) the run report, the diversity coverage and the card merge. Every
dropped record names the layer, the record it duplicates (id and run) and the score.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task

from hare.store import lineage
from hare.config import RunConfig
from hare.stages.dedup.layers import Duplicate
from hare.stages.dedup.index import decide, parallel_map, publish_run, published_runs
from hare.store.layout import published_index_prefix, records_key, report_key
from hare.stages.base import MakerOf, RecordStage, StageResult, run_record_stage
from hare.store import KeyNotFound, ObjectStore, open_store
from hare.store.tables import from_parquet_bytes

STAGE = "dedup"
Verdicts = dict[int, tuple[Duplicate, str, str]]  # row -> (duplicate, its record id, its run id)


def apply_verdicts(records: pa.Table, verdicts: Verdicts) -> tuple[pa.Table, pa.Table]:
    """(kept, rejects): the rows with a verdict dropped, each naming what it duplicates."""
    dropped = sorted(verdicts)
    mask = pa.array([i in verdicts for i in range(records.num_rows)], pa.bool_())  # typed: an emptied partition
    rejects = records.filter(mask)
    hits = [verdicts[i] for i in dropped]
    for name, values, typ in (
        ("reject_stage", [STAGE] * len(hits), pa.string()),
        ("reject_reason", [f"duplicate:{d.layer}" for d, _, _ in hits], pa.string()),
        ("duplicate_of", [rid for _, rid, _ in hits], pa.string()),
        ("duplicate_of_run", [run for _, _, run in hits], pa.string()),
        ("duplicate_score", [d.score for d, _, _ in hits], pa.float64()),
    ):
        rejects = rejects.append_column(name, pa.array(values, typ))
    return records.filter(pc.invert(mask)), rejects


def axes_counts(records: pa.Table) -> dict[str, dict[str, int]]:
    """Kept records per domain, audience, style and kind: the coverage figures, per partition."""
    out: dict[str, dict[str, int]] = {}
    for axis, col in (("domains", "topic_path"), ("audiences", "audience"), ("styles", "style"), ("kinds", "kind")):
        values = records.column(col).to_pylist() if col in records.column_names else []
        if axis == "domains":
            values = [(v or "").split(" > ")[0] for v in values]
        out[axis] = {}
        for v in values:
            out[axis][v] = out[axis].get(v, 0) + 1
    return out


class Dedup(RecordStage):
    """Applies the run's global verdicts to one partition (the decision itself is global, over
    every partition's stored features: the stage runs after generation, not streamed)."""

    name, title, streamed = STAGE, "Deduplication", False

    def __init__(self, verdicts: Verdicts | None = None, prior_records: int = 0) -> None:
        super().__init__()
        self.verdicts, self.prior_records = verdicts or {}, prior_records

    def decided_by(self) -> str:
        """The digest of this partition's verdicts: a commit made under other verdicts (the
        index grew since, or another partition of the run changed) is redone, not reused."""
        rows = sorted((row, d.layer, d.score, of_id, of_run) for row, (d, of_id, of_run) in self.verdicts.items())
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        kept, rejects = apply_verdicts(records, self.verdicts)
        earlier = sum(1 for r in rejects.column("duplicate_of_run").to_pylist() if r != run_id)
        tokens = int(pc.sum(kept.column("output_tokens")).as_py() or 0) if "output_tokens" in kept.column_names else 0
        return StageResult(kept, rejects, {"dropped_as_already_published": earlier,
                                           "against_published_records": self.prior_records,
                                           "axes": axes_counts(kept), "output_tokens": tokens})

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"against_published_records": max((a["against_published_records"] for a in aggregates), default=0),
                "dropped_as_already_published": sum(a["dropped_as_already_published"] for a in aggregates)}

    def report(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        """The base report, with the rejects by layer (``duplicate:<layer>`` reasons) as well."""
        report = super().report(stats)
        return {**report, "by_layer": {k.removeprefix("duplicate:"): v
                                       for k, v in sorted(report["reject_reasons"].items())}}

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        layers = ", ".join(f"{k}: {v}" for k, v in report["by_layer"].items()) or "none"
        return [self.heading(), "",
                f"{report['rejected']} of {report['checked']} records dropped as duplicates ({layers}); "
                f"{report['dropped_as_already_published']} of them duplicated one of the "
                f"{report['against_published_records']} records published by earlier runs. Each is in "
                "`rejects/dedup/` with the record it duplicates and the score.", ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        d = cfg.dedup
        if not d.enabled:
            return ("off", "")
        return ("enabled", ", ".join(x for x in (
            "exact" if d.exact else "",
            f"near (MinHash Jaccard >= {d.near_threshold}, {d.num_perm} perms, {d.shingle_words}-word shingles)"
            if d.near else "",
            f"semantic (cosine >= {d.semantic_threshold})" if d.semantic else "") if x))

    def summary(self, report: dict[str, Any]) -> str:
        return (f"{self.name} {report['rejected']} ({report['dropped_as_already_published']} already published by "
                "earlier runs)")


@dataclass
class ApplyJob:
    cfg: RunConfig
    run_id: str
    partition_id: str
    verdicts: Verdicts
    prior_records: int
    source: str
    lookup: MakerOf | None = None


def apply_partition(job: ApplyJob) -> dict[str, Any]:
    """One partition's verdicts committed (or its earlier commit read)."""
    stage = Dedup(job.verdicts, job.prior_records)
    return run_record_stage(open_store(job.cfg.store.url), job.cfg, job.run_id, job.partition_id, stage, job.source,
                            job.lookup)


@task(name="dedup", retries=1, retry_delay_seconds=2)
def deduplicate(cfg: RunConfig, run_id: str, partition_ids: list[str], source: str,
                lookup: MakerOf | None = None) -> dict[str, Any]:
    """The global decision over stored features and the store's index, then each partition's
    verdicts committed in parallel; returns the merged report. ``lookup``: how to redo the
    stage that made a corrupt source (tasks/stages.py)."""
    store = open_store(cfg.store.url)
    decision = decide(store, cfg.dedup, run_id, partition_ids)
    stats = parallel_map(apply_partition, [ApplyJob(cfg, run_id, p, decision.verdicts[p], decision.prior_records, source, lookup)
                                           for p in partition_ids], num_cpus=Dedup().resources(cfg).num_cpus)
    report = {**Dedup().report(stats), "candidate_pairs": decision.candidates}
    store.put_bytes(report_key(run_id, STAGE), json.dumps(report, indent=2).encode())
    lineage.emit(store, run_id, "synthesize.dedup", "COMPLETE",
                 inputs=[lineage.dataset(store.uri(published_index_prefix(r))) for r in published_runs(store, exclude=run_id)],
                 outputs=[lineage.dataset(store.uri(records_key(run_id, p, STAGE))) for p in partition_ids],
                 facets={"stage": STAGE, **report})
    get_run_logger().info("dedup: dropped %d of %d %s", report["rejected"], report["checked"], report["by_layer"])
    return report


def write_published_index(store: ObjectStore, cfg: RunConfig, run_id: str, partition_ids: list[str],
                          final_stage: str) -> dict[str, Any]:
    """Record what this run published in the store's index (features, band keys, list
    entries of the kept records, one shard per partition and group), so later runs
    deduplicate against it."""

    def kept_ids(pid: str) -> set[str]:
        key = records_key(run_id, pid, final_stage)
        try:
            return set(from_parquet_bytes(store.get_bytes(key), key).column("id").to_pylist())
        except KeyNotFound:
            return set()

    return publish_run(store, cfg.dedup, run_id, partition_ids, kept_ids)
