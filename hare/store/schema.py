"""Arrow schemas of what the DAG stores: plan rows, generated records, rejects.

One definition here, used by every stage and by the tests, so a column cannot drift between
writer and reader. Column meanings follow ../shared/design.md ("Record").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import pyarrow as pa

PLAN_SCHEMA = pa.schema(
    [
        ("prompt_index", pa.int64()),  # position in the whole plan; stable for a config
        ("partition_id", pa.string()),
        ("topic_path", pa.string()),
        ("topic", pa.string()),
        ("audience", pa.string()),
        ("style", pa.string()),
        ("kind", pa.string()),
        ("template_id", pa.string()),
        ("template_version", pa.int32()),
        ("system", pa.string()),
        ("prompt", pa.string()),
        ("seed", pa.int64()),  # per-prompt sampling seed
    ]
)

# Lineage columns every generated record carries (design.md).
RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("kind", pa.string()),
        ("topic_path", pa.string()),
        ("audience", pa.string()),
        ("style", pa.string()),
        ("prompt", pa.string()),
        ("template_id", pa.string()),
        ("template_version", pa.int32()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("backend", pa.string()),
        ("sampling", pa.string()),  # JSON: temperature, top_p, max_tokens, seed, ...
        ("run_id", pa.string()),
        ("partition_id", pa.string()),
        ("prompt_index", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("finish_reason", pa.string()),
        # which of the run's sources made it (design.md: synthesize, rewrite or corpus, by the
        # source's name) and, for a corpus or rewrite record, the row it came from (JSON: kind,
        # uri, byte offset or row, licence)
        ("source", pa.string()),
        ("source_ref", pa.string()),
    ]
)

# A corpus partition's plan: which bytes of which files it reads (tasks/corpus.py). ``size`` is
# the file's size when planned: a file that changed since is refused, not half-read.
CORPUS_PLAN_SCHEMA = pa.schema(
    [
        ("partition_id", pa.string()),
        ("source", pa.string()),
        ("uri", pa.string()),
        ("format", pa.string()),       # jsonl | text | parquet
        ("start", pa.int64()),         # jsonl/text: first byte; parquet: first row group
        ("end", pa.int64()),           # one past the last byte / row group
        ("size", pa.int64()),
        ("first_row", pa.int64()),     # parquet: the file row of the first row group's first row
    ]
)

# A rewrite partition's plan: prompt specs (PLAN_SCHEMA) plus the dataset row each came from and
# the value its text must keep (hare/priors/rewrite.py).
REWRITE_PLAN_SCHEMA = pa.schema(
    list(PLAN_SCHEMA) + [("source", pa.string()), ("source_ref", pa.string()), ("expect", pa.string())]
)

REJECT_SCHEMA = pa.schema(
    list(RECORD_SCHEMA) + [("reject_stage", pa.string()), ("reject_reason", pa.string())]
)

DECONTAM_REJECT_SCHEMA = pa.schema(
    list(REJECT_SCHEMA)
    + [("benchmark", pa.string()), ("benchmark_item", pa.string()),
       ("match_method", pa.string()), ("match_score", pa.float64())]
)

_WS = re.compile(r"\s+")


def with_source_columns(records: pa.Table, source: str) -> pa.Table:
    """``records`` with the ``source`` / ``source_ref`` columns (records committed before runs
    had sources lack them: they were synthesized, by ``source``)."""
    for name, default in (("source", source), ("source_ref", None)):
        if name not in records.column_names:
            records = records.append_column(name, pa.array([default] * records.num_rows, pa.string()))
    return records


def normalize_text(text: str) -> str:
    """The normal form that record ids (and exact dedup) hash: NFKC, lowercase, one space."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def record_id(text: str) -> str:
    """Record id: the first 16 bytes of sha256 over the normalized text, hex."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:32]
