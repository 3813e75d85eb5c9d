"""Stage ``features``: MinHash signatures and sentence embeddings of a partition, computed once.

It runs per partition as soon as decontamination commits it (streamed behind generation), so
the global dedup decision at the end reads stored features instead of embedding the whole run
in one process. It drops nothing: the records pass through, and the features object
(``runs/<id>/features/<pid>.parquet``: id, minhash, embedding) is what it commits.
Embeddings go through the run's embedding actors (GPU when the cluster has one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from hare.config import RunConfig
from hare.dedup import minhash_signatures
from hare.embedders import pool_embed
from hare.layout import features_key
from hare.stage import StageResult

STAGE = "features"


def features_table(ids: list[str], sigs: np.ndarray, vecs: np.ndarray) -> pa.Table:
    return pa.table({
        "id": pa.array(list(ids), pa.string()),
        "minhash": pa.array(list(sigs), pa.list_(pa.uint64())),
        "embedding": pa.array(list(vecs), pa.list_(pa.float32())),
    })


def split_features(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, signatures (n, num_perm), embeddings (n, dim)) of a features table."""
    ids = table.column("id").to_pylist()
    sigs = np.array(table.column("minhash").to_pylist(), dtype=np.uint64).reshape(len(ids), -1)
    vecs = np.array(table.column("embedding").to_pylist(), dtype=np.float32).reshape(len(ids), -1)
    return ids, sigs, vecs


class Features:
    """Per-partition dedup features; the records pass through unchanged."""

    name, section, report, produces_records = STAGE, "dedup", None, False

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup.enabled

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        texts = [t or "" for t in records.column("text").to_pylist()]
        sigs = minhash_signatures(texts, cfg.dedup)
        vecs = pool_embed(run_id)(texts) if cfg.dedup.semantic else np.zeros((len(texts), 0), np.float32)
        table = features_table(records.column("id").to_pylist(), sigs, vecs)
        return StageResult(None, None, {"records": records.num_rows, "embedded": int(vecs.shape[1] > 0) * len(texts)},
                           extra={features_key(run_id, partition_id): table})

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"records": sum(a["records"] for a in aggregates), "embedded": sum(a["embedded"] for a in aggregates)}
