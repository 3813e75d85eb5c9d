"""Stage ``dedup``: exact, near (MinHash) and semantic (FAISS) duplicates, global and incremental.

Global: all dataset partitions of a run are deduplicated together, in partition order.
Incremental: what earlier runs published (``index/runs/<run_id>.parquet`` in the store: ids,
MinHash signatures, embeddings) comes first, so a new run drops what is already published.
Features (signatures and embeddings) are computed once per partition and stored beside it
(``runs/<id>/features/<pid>.parquet``); a re-run reads them instead of recomputing.
Every dropped record names the layer, the record it duplicates (id and run) and the score.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
from prefect import get_run_logger, task

from hare import lineage
from hare.config import DedupConfig, RunConfig
from hare.dedup import Duplicate, find_duplicates, minhash_signatures
from hare.layout import dedup_report_key, features_key, published_index_key, records_key
from hare.stage import run_record_stage
from hare.store import KeyNotFound, ObjectStore, open_store
from hare.tables import from_parquet_bytes, to_parquet_bytes

STAGE = "dedup"
Embed = Callable[[Sequence[str]], np.ndarray]


def features_table(ids: Sequence[str], sigs: np.ndarray, vecs: np.ndarray) -> pa.Table:
    return pa.table({
        "id": pa.array(list(ids), pa.string()),
        "minhash": pa.array(list(sigs), pa.list_(pa.uint64())),
        "embedding": pa.array(list(vecs), pa.list_(pa.float32())),
    })


def split_features(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = table.column("id").to_pylist()
    sigs = np.array(table.column("minhash").to_pylist(), dtype=np.uint64).reshape(len(ids), -1)
    vecs = np.array(table.column("embedding").to_pylist(), dtype=np.float32).reshape(len(ids), -1)
    return ids, sigs, vecs


def partition_features(store: ObjectStore, run_id: str, pid: str, records: pa.Table,
                       cfg: DedupConfig, embed: Embed) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and embeddings of these records, from the stored features when they match."""
    ids = records.column("id").to_pylist()
    key = features_key(run_id, pid)
    try:
        stored = from_parquet_bytes(store.get_bytes(key), key)
        s_ids, sigs, vecs = split_features(stored)
        if s_ids == ids and sigs.shape[1] == cfg.num_perm:
            return sigs, vecs
    except KeyNotFound:
        pass
    texts = records.column("text").to_pylist()
    sigs, vecs = minhash_signatures(texts, cfg), embed(texts)
    store.put_bytes(key, to_parquet_bytes(features_table(ids, sigs, vecs)))
    return sigs, vecs


def load_published(store: ObjectStore, exclude_run: str) -> tuple[list[tuple[str, str]], np.ndarray | None, np.ndarray | None]:
    """(run id, record id) of everything earlier runs published, with their features."""
    refs, sigs, vecs = [], [], []
    for key in store.list("index/runs/"):
        run = key.rsplit("/", 1)[1].removesuffix(".parquet")
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


@task(name="dedup", retries=1, retry_delay_seconds=2)
def deduplicate(cfg: RunConfig, run_id: str, partition_ids: list[str]) -> dict[str, Any]:
    """Deduplicate the run's dataset partitions against each other and what is published."""
    from hare.embed import embed

    store = open_store(cfg.store.url)
    source = cfg.stage_input(STAGE)
    parts = []
    for pid in partition_ids:
        key = records_key(run_id, pid, source)
        records = from_parquet_bytes(store.get_bytes(key), key)
        parts.append((pid, records, *partition_features(store, run_id, pid, records, cfg.dedup, embed)))
    prior_refs, prior_sigs, prior_vecs = load_published(store, run_id)
    verdicts = dedup_verdicts(prior_refs, prior_sigs, prior_vecs, run_id, parts, cfg.dedup)

    results = []
    for pid, _, _, _ in parts:
        def stage_fn(records: pa.Table, pid: str = pid) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
            kept, rejects = apply_verdicts(records, verdicts[pid])
            return kept, rejects, {"layers": dict(Counter(rejects.column("reject_reason").to_pylist()))}

        results.append(run_record_stage(store, run_id, pid, STAGE, source, stage_fn))
    layers = Counter(r for rej, _ in results for r in rej.column("reject_reason").to_pylist())
    report = {
        "checked": sum(st["checked"] for _, st in results),
        "dropped": sum(layers.values()),
        "by_layer": {k.removeprefix("duplicate:"): v for k, v in sorted(layers.items())},
        "against_published_records": len(prior_refs),
        "dropped_as_already_published": sum(
            1 for rej, _ in results for run in rej.column("duplicate_of_run").to_pylist() if run != run_id),
    }
    store.put_bytes(dedup_report_key(run_id), json.dumps(report, indent=2).encode())
    lineage.emit(store, run_id, "synthesize.dedup", "COMPLETE",
                 inputs=[lineage.dataset(store.uri(k)) for k in store.list("index/runs/") if run_id not in k],
                 outputs=[lineage.dataset(store.uri(records_key(run_id, p, STAGE))) for p in partition_ids],
                 facets={"stage": STAGE, **report})
    get_run_logger().info("dedup: dropped %d of %d %s", report["dropped"], report["checked"], report["by_layer"])
    return report


def write_published_index(store: ObjectStore, run_id: str, partition_ids: list[str], final: pa.Table) -> None:
    """Record what this run published so later runs deduplicate against it."""
    keep = set(final.column("id").to_pylist())
    tables = []
    for pid in partition_ids:
        try:
            feats = from_parquet_bytes(store.get_bytes(features_key(run_id, pid)))
        except KeyNotFound:
            continue
        tables.append(feats.filter(pa.array([i in keep for i in feats.column("id").to_pylist()])))
    if tables:
        store.put_bytes(published_index_key(run_id), to_parquet_bytes(pa.concat_tables(tables)))
