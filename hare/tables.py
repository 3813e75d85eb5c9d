"""Arrow tables <-> Parquet bytes, the one serialization every stored table goes through."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq


def to_parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet_bytes(data: bytes, source: str = "<bytes>") -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{source} is not a readable Parquet file: {exc}") from exc
