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
from hare.dedup_index import band_objects, features_table, minhash_params, split_features  # noqa: F401 (re-export)
from hare.embedders import pool_embed
from hare.layout import features_key, run_bands_key
from hare.stage import StageResult
from hare.store import open_store

STAGE = "features"


class Features:
    """Per-partition dedup features and LSH band keys; the records pass through unchanged."""

    name, section, report, produces_records = STAGE, "dedup", None, False

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup.enabled

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        texts = [t or "" for t in records.column("text").to_pylist()]
        ids = records.column("id").to_pylist()
        sigs = minhash_signatures(texts, cfg.dedup)
        vecs = pool_embed(run_id)(texts) if cfg.dedup.semantic else np.zeros((len(texts), 0), np.float32)
        params = minhash_params(open_store(cfg.store.url), cfg.dedup)
        extra = {features_key(run_id, partition_id): features_table(ids, sigs, vecs),
                 **band_objects(params, ids, sigs, lambda g: run_bands_key(run_id, g, partition_id))}
        return StageResult(None, None, {"records": records.num_rows, "embedded": int(vecs.shape[1] > 0) * len(texts)},
                           extra=extra)

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"records": sum(a["records"] for a in aggregates), "embedded": sum(a["embedded"] for a in aggregates)}
