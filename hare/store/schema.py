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
    ]
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


def normalize_text(text: str) -> str:
    """The normal form that record ids (and exact dedup) hash: NFKC, lowercase, one space."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def record_id(text: str) -> str:
    """Record id: the first 16 bytes of sha256 over the normalized text, hex."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:32]
