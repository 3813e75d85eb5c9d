"""Arrow tables <-> Parquet bytes, the one serialization every stored table goes through."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq


def to_parquet_bytes(table: pa.Table, compression: str = "zstd") -> bytes:
    """``compression="none"`` for tables of hashes and vectors, which do not compress."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression)
    return buf.getvalue()


def from_parquet_bytes(data: bytes, source: str = "<bytes>") -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{source} is not a readable Parquet file: {exc}") from exc


def jsonl_field(path: "os.PathLike[str] | str", field: str) -> list[object]:
    """The values of ``field`` on every non-blank line of a JSON-lines file, in order.

    One reader for every "texts of a JSONL file" input (corpus seeds, the replay backend), so a
    bad line gets the same message everywhere: ValueError naming the file, the line and the field.
    """
    import json
    from pathlib import Path

    out: list[object] = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n} is not JSON: {exc}") from None
            if not isinstance(row, dict) or field not in row:
                raise ValueError(f"{path}: line {n} has no field {field!r}")
            out.append(row[field])
    return out
