"""Stage ``dedup``: exact, near (MinHash) and semantic (FAISS) duplicates, global and incremental.

Global: all dataset partitions of a run are deduplicated together, in partition order, from
the features each partition's streamed ``features`` stage stored (no record is read for the
decision). Incremental: what earlier runs published (``index/runs/<run_id>/<pid>.parquet``:
ids, MinHash signatures, embeddings) comes first, so a new run drops what is already
published. The verdicts are then applied one partition at a time (one partition's records in
memory), each committed under a ``dedup`` manifest whose aggregate (layers, the kept records'
axes and tokens) the run report, the diversity coverage and the card merge.
Every dropped record names the layer, the record it duplicates (id and run) and the score.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import get_run_logger, task

from hare import lineage
from hare.config import DedupConfig, RunConfig
from hare.dedup import Duplicate, find_duplicates
from hare.layout import dedup_report_key, features_key, published_index_key, records_key
from hare.stage import StageResult, add_counts, reject_reasons, run_record_stage
from hare.store import KeyNotFound, ObjectStore, open_store
from hare.tables import from_parquet_bytes, to_parquet_bytes
from hare.tasks.features import split_features

STAGE = "dedup"


def load_published(store: ObjectStore, exclude_run: str) -> tuple[list[tuple[str, str]], np.ndarray | None, np.ndarray | None]:
    """(run id, record id) of everything earlier runs published, with their features."""
    refs, sigs, vecs = [], [], []
    for key in store.list("index/runs/"):
        # index/runs/<run>/<pid>.parquet (one shard per partition), or index/runs/<run>.parquet (older runs)
        run = key.split("/")[2].removesuffix(".parquet")
        if run == exclude_run or not key.endswith(".parquet"):
            continue
        ids, s, v = split_features(from_parquet_bytes(store.get_bytes(key), key))
        refs += [(run, i) for i in ids]
        sigs.append(s)
        vecs.append(v)
    if not refs:
        return [], None, None
    return refs, np.vstack(sigs), np.vstack(vecs)


def dedup_verdicts(prior_refs: list[tuple[str, str]], prior_sigs: np.ndarray | None, prior_vecs: np.ndarray | None,
                   run_id: str, parts: list[tuple[str, pa.Table, np.ndarray, np.ndarray]],
                   cfg: DedupConfig) -> dict[str, list[tuple[Duplicate, str, str] | None]]:
    """Per partition, per record: None (kept) or (duplicate, its record id, its run id)."""
    refs = list(prior_refs) + [(run_id, i) for _, t, _, _ in parts for i in t.column("id").to_pylist()]
    sig_blocks = ([prior_sigs] if prior_sigs is not None else []) + [s for _, _, s, _ in parts]
    vec_blocks = ([prior_vecs] if prior_vecs is not None else []) + [v for _, _, _, v in parts]
    sigs = np.vstack(sig_blocks) if sig_blocks else None
    vecs = np.vstack(vec_blocks) if vec_blocks else None
    dups = find_duplicates([r for _, r in refs], sigs, vecs, cfg) if refs else {}
    out: dict[str, list] = {}
    pos = len(prior_refs)
    for pid, table, _, _ in parts:
        verdicts = []
        for i in range(pos, pos + table.num_rows):
            d = dups.get(i)
            verdicts.append(None if d is None else (d, refs[d.of][1], refs[d.of][0]))
        out[pid] = verdicts
        pos += table.num_rows
    return out


def apply_verdicts(records: pa.Table, verdicts: list[tuple[Duplicate, str, str] | None]) -> tuple[pa.Table, pa.Table]:
    hits = [v for v in verdicts if v is not None]
    rejects = records.filter(pa.array([v is not None for v in verdicts]))
    for name, values, typ in (
        ("reject_stage", [STAGE] * len(hits), pa.string()),
        ("reject_reason", [f"duplicate:{d.layer}" for d, _, _ in hits], pa.string()),
        ("duplicate_of", [rid for _, rid, _ in hits], pa.string()),
        ("duplicate_of_run", [run for _, _, run in hits], pa.string()),
        ("duplicate_score", [d.score for d, _, _ in hits], pa.float64()),
    ):
        rejects = rejects.append_column(name, pa.array(values, typ))
    return records.filter(pa.array([v is None for v in verdicts])), rejects


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


class Dedup:
    """Applies the run's global verdicts to one partition (the decision itself is global)."""

    name, section, report, produces_records = STAGE, "dedup", "dedup.json", True

    def __init__(self, verdicts: dict[str, list[tuple[Duplicate, str, str] | None]] | None = None,
                 prior_records: int = 0) -> None:
        self.verdicts, self.prior_records = verdicts or {}, prior_records

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup.enabled

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        kept, rejects = apply_verdicts(records, self.verdicts[partition_id])
        earlier = sum(1 for r in rejects.column("duplicate_of_run").to_pylist() if r != run_id)
        tokens = int(pc.sum(kept.column("output_tokens")).as_py() or 0) if "output_tokens" in kept.column_names else 0
        return StageResult(kept, rejects, {"checked": records.num_rows, "layers": reject_reasons(rejects),
                                           "dropped_as_already_published": earlier,
                                           "against_published_records": self.prior_records,
                                           "axes": axes_counts(kept), "output_tokens": tokens})

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        layers: dict[str, int] = {}
        for a in aggregates:
            add_counts(layers, a["layers"])
        return {"checked": sum(a["checked"] for a in aggregates), "dropped": sum(layers.values()),
                "by_layer": {k.removeprefix("duplicate:"): v for k, v in sorted(layers.items())},
                "against_published_records": max((a["against_published_records"] for a in aggregates), default=0),
                "dropped_as_already_published": sum(a["dropped_as_already_published"] for a in aggregates)}


def stored_features(store: ObjectStore, run_id: str, partition_ids: list[str]) -> list[tuple[str, list[str], np.ndarray, np.ndarray]]:
    """(partition, ids, signatures, embeddings) from each partition's features commit."""
    out = []
    for pid in partition_ids:
        key = features_key(run_id, pid)
        out.append((pid, *split_features(from_parquet_bytes(store.get_bytes(key), key))))
    return out


@task(name="dedup", retries=1, retry_delay_seconds=2)
def deduplicate(cfg: RunConfig, run_id: str, partition_ids: list[str], source: str) -> dict[str, Any]:
    """The global decision over stored features (this run and what is published), then each
    partition's verdicts committed one partition at a time; returns the merged report."""
    store = open_store(cfg.store.url)
    feats = stored_features(store, run_id, partition_ids)
    prior_refs, prior_sigs, prior_vecs = load_published(store, run_id)
    parts = [(pid, pa.table({"id": ids}), sigs, vecs) for pid, ids, sigs, vecs in feats]
    verdicts = dedup_verdicts(prior_refs, prior_sigs, prior_vecs, run_id, parts, cfg.dedup)
    stage = Dedup(verdicts, len(prior_refs))
    stats = [run_record_stage(store, cfg, run_id, pid, stage, source) for pid in partition_ids]
    report = stage.merge([st["aggregate"] for st in stats])
    store.put_bytes(dedup_report_key(run_id), json.dumps(report, indent=2).encode())
    lineage.emit(store, run_id, "synthesize.dedup", "COMPLETE",
                 inputs=[lineage.dataset(store.uri(k)) for k in store.list("index/runs/") if run_id not in k],
                 outputs=[lineage.dataset(store.uri(records_key(run_id, p, STAGE))) for p in partition_ids],
                 facets={"stage": STAGE, **report})
    get_run_logger().info("dedup: dropped %d of %d %s", report["dropped"], report["checked"], report["by_layer"])
    return report


def write_published_index(store: ObjectStore, run_id: str, partition_ids: list[str], final_stage: str) -> None:
    """Record what this run published, one index shard per partition (features of the kept
    records), so later runs deduplicate against it without one huge object."""
    for pid in partition_ids:
        try:
            feats = from_parquet_bytes(store.get_bytes(features_key(run_id, pid)))
        except KeyNotFound:
            continue
        key = records_key(run_id, pid, final_stage)
        keep = set(from_parquet_bytes(store.get_bytes(key), key).column("id").to_pylist())
        shard = feats.filter(pa.array([i in keep for i in feats.column("id").to_pylist()]))
        store.put_bytes(published_index_key(run_id, pid), to_parquet_bytes(shard))
