"""Stage ``features``: MinHash signatures and sentence embeddings of a partition, computed once.

It runs per partition as soon as the stage before it commits (streamed behind generation), so
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
from hare.stages.dedup.layers import minhash_signatures
from hare.stages.dedup.index import band_objects, features_table, minhash_params, split_features  # noqa: F401 (re-export)
from hare.engines.embedders import pool_embed
from hare.store.layout import features_key, run_bands_key
from hare.stages.base import RecordStage, StageResult
from hare.store import open_store

STAGE = "features"
# The dedup settings a partition's features follow (signatures, band layout, index groups,
# whether to embed); the thresholds of the decision are not among them.
FEATURE_SETTINGS = ("num_perm", "shingle_words", "near_threshold", "index_groups", "semantic")


class Features(RecordStage):
    """Per-partition dedup features and LSH band keys; the records pass through unchanged."""

    name, title = STAGE, "Features"
    produces_records, has_report = False, False

    def enabled(self, cfg: RunConfig) -> bool:
        return cfg.dedup.enabled

    def params(self, cfg: RunConfig) -> dict[str, Any]:
        """The dedup settings it follows (its own section holds only its resources)."""
        return {"section": cfg.dedup.model_dump(mode="json", include=set(FEATURE_SETTINGS))}

    def setup(self, cfg: RunConfig, run_id: str) -> Any:
        """The store's band layout (fixed by the first run that indexed into it)."""
        return minhash_params(open_store(cfg.store.url), cfg.dedup)

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        texts = [t or "" for t in records.column("text").to_pylist()]
        ids = records.column("id").to_pylist()
        sigs = minhash_signatures(texts, cfg.dedup)
        vecs = pool_embed(run_id)(texts) if cfg.dedup.semantic else np.zeros((len(texts), 0), np.float32)
        extra = {features_key(run_id, partition_id): features_table(ids, sigs, vecs),
                 **band_objects(self.ready(cfg, run_id), ids, sigs, lambda g: run_bands_key(run_id, g, partition_id))}
        return StageResult(None, None, {"embedded": int(vecs.shape[1] > 0) * len(texts)}, extra=extra)

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return {"embedded": sum(a["embedded"] for a in aggregates)}
