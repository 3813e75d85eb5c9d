"""An open corpus (HARE's D1) read in partitions: files listed, cut into byte ranges or row
groups at plan time, each partition read on its own, never the whole corpus in one process.

Formats (by suffix): ``.jsonl`` / ``.json`` (one JSON object per line, the text in a field),
``.txt`` (one document per non-empty line) and ``.parquet``. Files are local (paths, globs) or
objects under an ``s3://bucket/prefix/`` (listed and read with ranged GETs through
hare/store, with its retries).

Why byte ranges: a JSONL file of 100 GB has no index of its lines; the Hadoop rule makes ranges
exact without one: a partition owns every line that *starts* inside its range, so it skips the
partial line it starts in and reads past its end to finish its last line. Parquet partitions are
whole row groups (their sizes come from the footer).
"""

from __future__ import annotations

import glob
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hare.store import KeyNotFound, ObjectStore, open_store

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".parquet": "parquet"}
READ_AHEAD = 1 << 20  # bytes read past a range's end, per step, to finish its last line
HUB = "hub:"  # a corpus path loaded with `datasets.load_dataset` (a hub id, or a local folder of data files)


class CorpusFileError(ValueError):
    """A corpus file that cannot be listed or read; the message names the file (and line)."""


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: where it is and how big it was when listed."""

    uri: str
    size: int             # bytes; a `datasets` corpus: rows
    row_bytes: float = 0  # a `datasets` corpus: its mean bytes per row (to size partitions)

    @property
    def format(self) -> str:
        return "datasets" if self.uri.startswith(HUB) else FORMATS[Path(self.uri).suffix.lower()]


@dataclass(frozen=True)
class Document:
    """One document read from a corpus partition: its text (None when the row has none) and
    where it came from (the record's ``source_ref``)."""

    text: str | None
    ref: dict[str, Any]
    problem: str | None = None   # why the row is not a document (a reject reason)


def _store_and_key(uri: str) -> tuple[ObjectStore, str]:
    """The store that holds ``uri`` and its key there (``s3://b/k`` or a local path)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        return open_store(f"s3://{bucket}"), key
    path = Path(uri)
    return open_store(str(path.parent)), path.name


def load_hub_dataset(uri: str) -> Any:
    """The split a ``hub:NAME@split`` corpus names, with `datasets` (memory-mapped Arrow: rows are
    read where a partition selects them, the dataset is never held in memory)."""
    import datasets

    name, _, split = uri[len(HUB):].rpartition("@")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; one line naming it
        raise CorpusFileError(f"corpus {HUB}{name} (split {split}): cannot be loaded with datasets "
                              f"({_one_line(exc)})") from None


def list_corpus_files(paths: list[str], split: str = "train") -> list[CorpusFile]:
    """Every corpus file the paths name, in a stable order (each path's matches sorted);
    ``hub:NAME``: one `datasets` split (``split``) sized in rows. A path that matches no
    readable file is a :class:`CorpusFileError` naming it."""
    found: list[CorpusFile] = []
    for spec in paths:
        if spec.startswith(HUB):
            uri = f"{spec}@{split}"
            ds = load_hub_dataset(uri)
            found.append(CorpusFile(uri, ds.num_rows, ds.data.nbytes / max(1, ds.num_rows)))
            continue
        if spec.startswith("s3://"):
            bucket, _, prefix = spec[len("s3://"):].partition("/")
            infos = open_store(f"s3://{bucket}").list_info(prefix)
            matches = [CorpusFile(f"s3://{bucket}/{i.key}", i.size) for i in sorted(infos, key=lambda i: i.key)
                       if Path(i.key).suffix.lower() in FORMATS]
        else:
            names = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
            matches = [CorpusFile(str(Path(n).resolve()), Path(n).stat().st_size) for n in names
                       if Path(n).is_file() and Path(n).suffix.lower() in FORMATS]
            if not glob.has_magic(spec) and not Path(spec).is_file():
                raise CorpusFileError(f"corpus file not found: {spec}")
        if not matches:
            raise CorpusFileError(f"corpus path {spec}: no .jsonl, .txt or .parquet file there")
        found += matches
    return found


def parquet_row_groups(file: CorpusFile) -> list[tuple[int, int]]:
    """(rows, bytes) of each row group of a Parquet file, from its footer alone."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(RangeReader(file)).metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
        raise CorpusFileError(f"corpus file {file.uri}: not a readable Parquet file ({_one_line(exc)})") from None
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


def cut_partitions(files: list[CorpusFile], partition_bytes: int) -> Iterator[list[dict[str, Any]]]:
    """The corpus cut into partitions of about ``partition_bytes``: each a list of ranges
    (uri, format, start, end, size, first_row), small files packed together, big ones split
    (Parquet only between row groups)."""
    current: list[dict[str, Any]] = []
    filled = 0

    def add(piece: dict[str, Any], nbytes: int) -> Iterator[list[dict[str, Any]]]:
        nonlocal current, filled
        if current and filled + nbytes > partition_bytes:
            yield current
            current, filled = [], 0
        current.append(piece)
        filled += nbytes

    for f in files:
        base = {"uri": f.uri, "format": f.format, "size": f.size}
        if f.format == "datasets":
            rows = max(1, int(partition_bytes // max(1.0, f.row_bytes)))
            for start in range(0, f.size, rows):
                yield from add({**base, "start": start, "end": min(start + rows, f.size), "first_row": start},
                               int((min(start + rows, f.size) - start) * f.row_bytes))
            continue
        if f.format == "parquet":
            row = 0
            for i, (rows, nbytes) in enumerate(parquet_row_groups(f)):
                yield from add({**base, "start": i, "end": i + 1, "first_row": row}, nbytes)
                row += rows
            continue
        for start in range(0, max(f.size, 1), partition_bytes):
            yield from add({**base, "start": start, "end": min(start + partition_bytes, f.size), "first_row": 0},
                           min(partition_bytes, f.size - start))
    if current:
        yield current


def merge_row_groups(pieces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive row groups of one Parquet file in a partition as one range."""
    out: list[dict[str, Any]] = []
    for p in pieces:
        last = out[-1] if out else None
        if last and last["format"] == "parquet" and last["uri"] == p["uri"] and last["end"] == p["start"]:
            last["end"] = p["end"]
        else:
            out.append(dict(p))
    return out


class RangeReader(io.RawIOBase):
    """A seekable read-only file over one corpus file (local or S3) with ranged reads, so
    pyarrow reads a Parquet footer and the row groups it needs, not the whole object."""

    def __init__(self, file: CorpusFile) -> None:
        self.file, self.pos = file, 0
        self.store, self.key = _store_and_key(file.uri)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.file.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        end = self.file.size if size is None or size < 0 else min(self.file.size, self.pos + size)
        data = self.store.get_range(self.key, self.pos, end) if end > self.pos else b""
        self.pos += len(data)
        return data


def check_unchanged(file: CorpusFile) -> None:
    """Refuse a file whose size differs from when the run was planned (its ranges would cut
    other lines): one line naming it."""
    store, key = _store_and_key(file.uri)
    try:
        size = store.head(key)
    except KeyNotFound:
        size = None
    if size is None:
        raise CorpusFileError(f"corpus file {file.uri}: gone since the run was planned")
    if size != file.size:
        raise CorpusFileError(f"corpus file {file.uri}: {size} bytes now, {file.size} when the run was planned; "
                              "start a new run to read the changed corpus")


def _line_range(file: CorpusFile, start: int, end: int) -> tuple[bytes, int]:
    """The bytes of the lines that start in [start, end), and the offset of the first."""
    store, key = _store_and_key(file.uri)
    lo = max(0, start - 1)
    data = store.get_range(key, lo, min(end, file.size))
    if start > 0:  # the line we start inside belongs to the partition before (unless we start on its first byte)
        cut = data.find(b"\n")
        if cut < 0:  # one line spans the whole range: it started before, so it is not ours
            return b"", lo
        data, lo = data[cut + 1:], lo + cut + 1
        if not data:
            return b"", lo
    pos = min(end, file.size)
    while pos < file.size and not data.endswith(b"\n"):  # finish the last line past the range's end
        more = store.get_range(key, pos, min(pos + READ_AHEAD, file.size))
        cut = more.find(b"\n")
        data += more if cut < 0 else more[:cut + 1]
        pos += len(more) if cut < 0 else cut + 1
        if cut >= 0:
            break
    return data, lo


def read_documents(piece: dict[str, Any], text_field: str, license_field: str | None,
                   license: str | None) -> Iterator[Document]:
    """The documents of one range of a corpus partition, each with its lineage (uri, byte
    offset or row, licence). A line that is not JSON or a file that is not Parquet is a
    :class:`CorpusFileError` naming the file and line: the partition fails, nothing committed is
    touched, and the run names it."""
    file = CorpusFile(piece["uri"], piece["size"])
    if piece["format"] == "datasets":
        yield from _hub_documents(file, piece, text_field, license_field, license)
        return
    check_unchanged(file)
    uri = file.uri if file.uri.startswith("s3://") else f"file://{file.uri}"
    base = {"uri": uri, **({"license": license} if license else {})}
    if piece["format"] == "parquet":
        yield from _parquet_documents(file, piece, text_field, license_field, base)
        return
    data, offset = _line_range(file, piece["start"], piece["end"])
    for raw in data.splitlines(keepends=True):
        at, offset = offset, offset + len(raw)
        line = raw.strip()
        if not line:
            continue
        ref = {**base, "offset": at}
        if piece["format"] == "text":
            yield Document(line.decode("utf-8", "replace"), ref)
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorpusFileError(f"corpus file {file.uri}: byte {at}: not a JSON line ({_one_line(exc)})") from None
        if not isinstance(obj, dict):
            raise CorpusFileError(f"corpus file {file.uri}: byte {at}: a JSON {type(obj).__name__}, not an object")
        yield _document(obj, text_field, license_field, ref)


def _parquet_documents(file: CorpusFile, piece: dict[str, Any], text_field: str, license_field: str | None,
                       base: dict[str, Any]) -> Iterator[Document]:
    import pyarrow.parquet as pq

    columns = [text_field, *([license_field] if license_field else [])]
    try:
        pf = pq.ParquetFile(RangeReader(file))
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise CorpusFileError(f"corpus file {file.uri}: no field {missing[0]!r} (fields: {pf.schema_arrow.names})")
        row = piece["first_row"]
        for group in range(piece["start"], piece["end"]):
            table = pf.read_row_group(group, columns=columns)
            for values in table.to_pylist():
                yield _document(values, text_field, license_field, {**base, "row": row})
                row += 1
    except CorpusFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line naming it
        raise CorpusFileError(f"corpus file {file.uri}: not a readable Parquet file ({_one_line(exc)})") from None


def _hub_documents(file: CorpusFile, piece: dict[str, Any], text_field: str, license_field: str | None,
                   license: str | None) -> Iterator[Document]:
    """The rows [start, end) of a `datasets` split (refused when its row count changed)."""
    ds = load_hub_dataset(file.uri)
    if ds.num_rows != file.size:
        raise CorpusFileError(f"corpus {file.uri}: {ds.num_rows} rows now, {file.size} when the run was planned; "
                              "start a new run to read the changed dataset")
    missing = [c for c in (text_field, license_field) if c and c not in ds.column_names]
    if missing:
        raise CorpusFileError(f"corpus {file.uri}: no field {missing[0]!r} (fields: {ds.column_names})")
    base = {"uri": file.uri, **({"license": license} if license else {})}
    part = ds.select(range(piece["start"], piece["end"]))
    for n, row in enumerate(part):
        yield _document(row, text_field, license_field, {**base, "row": piece["start"] + n})


def _document(obj: dict[str, Any], text_field: str, license_field: str | None, ref: dict[str, Any]) -> Document:
    if license_field and obj.get(license_field) is not None:
        ref = {**ref, "license": str(obj[license_field])}
    text = obj.get(text_field)
    if not isinstance(text, str):
        return Document(None, ref, "no_text" if text is None else "text_not_a_string")
    return Document(text, ref)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
