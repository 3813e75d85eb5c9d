"""Benchmark loading for decontamination: local JSONL/Parquet/CSV, ``s3://`` or a datasets name.

Each benchmark is named in the run config with a field mapping (which columns hold text: the
question, the answer, the choices). A benchmark that cannot be found, or has none of the
named fields, is an error that names the benchmark, the source and the fields it does have.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hare.config import BenchmarkConfig


class BenchmarkError(ValueError):
    """A benchmark cannot be loaded as configured; the message names it."""


@dataclass(frozen=True)
class BenchmarkItem:
    benchmark: str
    item_id: str
    texts: tuple[str, ...]  # the named fields' text, in config order (choices joined)

    @property
    def question(self) -> str:
        return self.texts[0] if self.texts else ""


def _rows_from_bytes(data: bytes, suffix: str, where: str) -> list[dict[str, Any]]:
    if suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkError(f"{where}: line {n} is not JSON: {exc}") from None
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    if suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(io.BytesIO(data)).to_pylist()
    raise BenchmarkError(f"{where}: unsupported file type {suffix!r} (use .jsonl, .parquet or .csv)")


def _read_rows(spec: BenchmarkConfig) -> list[dict[str, Any]]:
    where = f"benchmark {spec.name!r} ({spec.source})"
    if spec.source.startswith("hub:"):
        import datasets

        try:
            return list(datasets.load_dataset(spec.source[4:], split=spec.split))
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
            raise BenchmarkError(f"{where}: cannot load with datasets: {exc}") from exc
    if spec.source.startswith("s3://"):
        from hare.store import KeyNotFound, StoreError, open_store

        root, _, name = spec.source.rpartition("/")
        try:
            data = open_store(root).get_bytes(name)
        except (KeyNotFound, StoreError) as exc:
            raise BenchmarkError(f"{where}: {exc}") from None
        return _rows_from_bytes(data, Path(name).suffix, where)
    path = Path(spec.source)
    if not path.is_file():
        raise BenchmarkError(f"{where}: file not found: {path}")
    return _rows_from_bytes(path.read_bytes(), path.suffix, where)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "\n".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "\n".join(_text(v) for v in value.values())
    return str(value)


def load_benchmark(spec: BenchmarkConfig) -> list[BenchmarkItem]:
    rows = _read_rows(spec)
    where = f"benchmark {spec.name!r} ({spec.source})"
    if not rows:
        raise BenchmarkError(f"{where}: no rows")
    present = set().union(*(r.keys() for r in rows[:100]))
    missing = [f for f in spec.fields if f not in present]
    if len(missing) == len(spec.fields):
        raise BenchmarkError(f"{where}: none of the fields {spec.fields} found (fields: {sorted(present)})")
    if spec.id_field and spec.id_field not in present:
        raise BenchmarkError(f"{where}: id field {spec.id_field!r} not found (fields: {sorted(present)})")
    items = []
    for i, row in enumerate(rows):
        item_id = str(row[spec.id_field]) if spec.id_field else str(i)
        items.append(BenchmarkItem(spec.name, item_id, tuple(_text(row.get(f)) for f in spec.fields)))
    return items
