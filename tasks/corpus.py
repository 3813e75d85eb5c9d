"""Stage ``generate`` of a corpus partition (HARE's D1): read its byte ranges / row groups of
the corpus and commit them as records, exactly as a generated partition is committed.

The plan (:func:`plan_corpus_partitions`) lists the corpus files and cuts them into partitions
``c00000...`` (hare/priors/corpus.py says how); :func:`corpus_records` is the plain function
(one partition's documents -> records and rejects); :func:`read_corpus_partition` is the thin
Prefect task that commits them under the ``generate`` manifest, so every stage after it,
``hare status``, the viewer, the progress artifact and ``hare rerun`` treat the partition like a
generated one. A damaged file fails its partition only, with one line naming the file.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Iterator

import pyarrow as pa
from prefect import get_run_logger, task

from hare.config import CorpusSource, RunConfig
from hare.priors.corpus import cut_partitions, list_corpus_files, merge_row_groups, read_documents
from hare.store import lineage, open_store
from hare.store.manifest import commit_first, record_failure, start_partition
from hare.store.schema import CORPUS_PLAN_SCHEMA, RECORD_SCHEMA, REJECT_SCHEMA, record_id
from hare.store.tables import from_parquet_bytes

STAGE = "generate"  # a corpus partition's first commit is its "generation": what the stages read
CORPUS_PREFIX = "c"


def corpus_sources(cfg: RunConfig) -> list[CorpusSource]:
    return [s for s in cfg.sources if isinstance(s, CorpusSource)]


def plan_corpus_partitions(cfg: RunConfig) -> Iterator[tuple[str, pa.Table]]:
    """Each corpus partition's plan (which ranges of which files), numbered across the corpus
    sources in the order they are listed; deterministic from the files' listing and sizes."""
    n = 0
    for src in corpus_sources(cfg):
        files = list_corpus_files(src.paths, src.split)
        for pieces in cut_partitions(files, int(src.partition_mb * (1 << 20))):
            pid = f"{CORPUS_PREFIX}{n:05d}"
            rows = [{"partition_id": pid, "source": src.name, **p} for p in merge_row_groups(pieces)]
            yield pid, pa.Table.from_pylist(rows, schema=CORPUS_PLAN_SCHEMA)
            n += 1


def is_corpus(partition_id: str) -> bool:
    return partition_id.startswith(CORPUS_PREFIX)


def corpus_records(plan: pa.Table, cfg: RunConfig, run_id: str) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """One corpus partition's documents as records (kept) and rejects (a row with no text),
    and the figures for its manifest (documents, bytes read)."""
    sources = {s.name: s for s in corpus_sources(cfg)}
    now = datetime.now(timezone.utc)
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    chars = 0
    for piece in plan.to_pylist():
        src = sources.get(piece["source"])
        if src is None:
            raise ValueError(f"partition {piece['partition_id']}: its source {piece['source']!r} is not in the config")
        for doc in read_documents(piece, src.text_field, src.license_field, src.license):
            n = len(kept) + len(rejects)
            text = doc.text or ""
            chars += len(text)
            rec = {
                "id": record_id(text) if text.strip() else f"empty-{run_id}-{piece['partition_id']}-{n}",
                "text": text, "kind": "corpus", "topic_path": "", "audience": "", "style": "", "prompt": "",
                "template_id": "", "template_version": 0, "model": "", "model_revision": "", "backend": "corpus",
                "sampling": "{}", "run_id": run_id, "partition_id": piece["partition_id"], "prompt_index": n,
                "created_at": now, "prompt_tokens": 0, "output_tokens": 0, "finish_reason": "corpus",
                "source": src.name, "source_ref": json.dumps({"kind": "corpus", **doc.ref}, sort_keys=True),
            }
            problem = doc.problem or (None if text.strip() else "empty")
            if problem:
                rejects.append({**rec, "reject_stage": STAGE, "reject_reason": problem})
            else:
                kept.append(rec)
    stats = {"documents": len(kept) + len(rejects), "chars": chars}
    return pa.Table.from_pylist(kept, schema=RECORD_SCHEMA), pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), stats


@task(name="read-corpus-partition", retries=1, retry_delay_seconds=2)
def read_corpus_partition(cfg: RunConfig, run_id: str, partition_id: str) -> dict[str, Any]:
    """Read one corpus partition and commit it (skipped when committed from the same plan)."""
    logger = get_run_logger()
    store = open_store(cfg.store.url)
    start = start_partition(store, run_id, partition_id)
    if (skipped := start.skipped(partition_id, logger.info)) is not None:
        return skipped
    started = time.perf_counter()
    try:
        plan = from_parquet_bytes(start.plan_bytes, start.plan_key)
        kept, rejects, figures = corpus_records(plan, cfg, run_id)
        seconds = time.perf_counter() - started
        stats = {**figures, "checked": kept.num_rows + rejects.num_rows, "kept": kept.num_rows,
                 "rejected": rejects.num_rows, "backend": "corpus", "source": plan.column("source")[0].as_py(),
                 "seconds": round(seconds, 3), "read_seconds": round(seconds, 3)}
        manifest = commit_first(store, start, run_id, partition_id, kept, rejects, stats)
    except Exception as exc:
        record_failure(store, run_id, partition_id, STAGE, f"{type(exc).__name__}: {exc}", start.attempts)
        raise
    lineage.emit(store, run_id, f"synthesize.corpus.{partition_id}", "COMPLETE",
                 inputs=[lineage.dataset(u if u.startswith(("s3://", "hub:")) else f"file://{u}")
                         for u in dict.fromkeys(plan.column("uri").to_pylist())],
                 outputs=[lineage.dataset(store.uri(o.key), o.sha256, o.rows) for o in manifest.outputs],
                 facets={"stage": STAGE, "source": stats["source"], "stats": stats})
    logger.info("partition %s: %d documents read, %d rejects", partition_id, kept.num_rows, rejects.num_rows)
    return {"partition_id": partition_id, "status": "succeeded", "stats": stats}
