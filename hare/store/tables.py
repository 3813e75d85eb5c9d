"""Arrow tables <-> Parquet bytes, the one serialization every stored table goes through."""

from __future__ import annotations

import io
import os
from typing import Any, Iterator

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


def iter_jsonl_rows(path: "os.PathLike[str] | str") -> "Iterator[tuple[int, dict[str, Any]]]":
    """(line number, object) of every non-blank line of a JSON-lines file, read one line at a
    time. A line that is not a JSON object is a ValueError naming the file and the line."""
    import json
    from pathlib import Path

    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n} is not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {n} is not a JSON object")
            yield n, row


def iter_table_rows(path: "os.PathLike[str] | str", batch_rows: int = 4096) -> "Iterator[dict[str, Any]]":
    """The rows of a .jsonl or .parquet file as dicts, streamed (Parquet a batch at a time)."""
    from pathlib import Path

    if Path(path).suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()
        return
    yield from (row for _, row in iter_jsonl_rows(path))


def iter_jsonl_field(path: "os.PathLike[str] | str", field: str) -> Iterator[object]:
    """The values of ``field`` on every non-blank line of a JSON-lines file, in order, streamed.

    One reader for every "texts of a JSONL file" input (corpus seeds, the replay backend), so a
    bad line gets the same message everywhere: ValueError naming the file, the line and the field.
    """
    for n, row in iter_jsonl_rows(path):
        if field not in row:
            raise ValueError(f"{path}: line {n} has no field {field!r}")
        yield row[field]


def jsonl_field(path: "os.PathLike[str] | str", field: str) -> list[object]:
    """:func:`iter_jsonl_field` as a list (a small file: benchmarks, the replay corpus)."""
    return list(iter_jsonl_field(path, field))
