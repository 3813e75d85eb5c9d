"""Model weights through the object store: push a safetensors HF folder with a sha256 manifest,
and fetch it once per node into that node's cache.

Why: on a multi-node cluster nothing is shared but the object store (docs/cluster-models.md), and
a 7B model is ~15 GB that every engine node needs on local disk. So the folder is pushed once
(``hare model push FOLDER s3://bucket/models/NAME/``) and every engine node fetches it itself.

In the store, under the prefix::

    <every file of the folder, at its relative path>
    hare-manifest.json   {"format": 1, "files": [{"path", "size", "sha256"}, ...]}, written last

The manifest is the commit (as a partition's manifest is): a reader trusts nothing without it.
Its own sha256 names the model's content, so the revision every record carries is
``s3:<first 16 hex of the manifest's sha256>``; a re-push of other weights is another revision.

A fetch goes into ``HARE_CACHE_DIR/models/<NAME>-s3-<rev16>/``:

- under an exclusive ``flock`` on ``models/.<folder>.lock``: engines on one node download once,
  the others wait and reuse the folder (as the GGUF conversion in :mod:`hare.engines.models` does);
- each file in parts of ``part_bytes``, fetched by ranged GETs on a thread pool (a big shard is
  read over many connections at once); each part is appended to ``<file>.<i>.part``, and every
  (re)try asks only for the bytes the part file lacks: an interrupted fetch (a killed engine, a
  dropped connection) resumes where it stopped, and a finished file is never fetched again;
- a file's parts are joined and hashed; only a file whose sha256 matches the manifest takes its
  name. A mismatch is refused in one line naming the file (its parts are deleted, so a fixed
  push is fetched cleanly);
- ``.hare-fetched.json`` is written last: the folder is done and later fetches only read the
  manifest (one small GET, to learn whether the prefix still holds the same revision).

S3 requests go through :class:`hare.store.S3Store`'s client and its retry policy (backoff, the
HARE_STORE_RETRY_SECONDS budget); nothing here opens a client or retries on its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from hare.engines.model_source import ModelSourceError, ResolvedModel
from hare.paths import cache_dir
from hare.store import KeyNotFound, S3Store, StoreError, check_key, open_store, sha256_bytes

log = logging.getLogger("hare")

MANIFEST = "hare-manifest.json"
DONE = ".hare-fetched.json"
MANIFEST_FORMAT = 1
# Ranged GETs of this size: big enough that request overhead is small, small enough that a big
# shard is spread over the whole pool and an interrupted part loses little.
PART_BYTES = 64 * 1024 * 1024
WORKERS = 8  # parallel GETs (S3Store's connection pool holds 32)
# Per-node overrides, read where the fetch runs (set them where the node's `ray start` runs): a
# fast network wants more GETs at once, an S3 gateway that reads a whole object per ranged GET
# (moto does) fewer and bigger ones.
WORKERS_ENV = "HARE_MODEL_FETCH_WORKERS"
PART_MB_ENV = "HARE_MODEL_FETCH_PART_MB"
_CHUNK = 1024 * 1024  # bytes read from a response body, and hashed, at a time
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a pushed model folder, as the manifest lists it."""

    path: str  # relative, ``/``-separated (a store key under the prefix)
    size: int
    sha256: str


@dataclass(frozen=True)
class PushResult:
    url: str
    revision: str
    files: int
    bytes: int


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def revision_of(manifest: bytes) -> str:
    """The revision records carry for a pushed folder: its manifest's digest, shortened."""
    return f"s3:{sha256_bytes(manifest)[:16]}"


def folder_files(folder: Path) -> list[str]:
    """The files a push uploads, as sorted relative paths: everything but hidden files and
    folders (hare's own markers, ``.cache/`` of a hub download, ``.git``) and the manifest."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST and not any(part.startswith(".") for part in rel.split("/")):
            out.append(rel)
    return sorted(out)


def build_manifest(folder: Path) -> bytes:
    """``hare-manifest.json`` of ``folder``: every file's relative path, size and sha256, as
    canonical JSON (the same folder always gives the same bytes, hence the same revision)."""
    files = [{"path": rel, "size": (folder / rel).stat().st_size, "sha256": _sha256_file(folder / rel)}
             for rel in folder_files(folder)]
    return json.dumps({"format": MANIFEST_FORMAT, "files": files}, sort_keys=True, indent=1).encode()


def parse_manifest(raw: bytes, where: str) -> list[ManifestFile]:
    """The manifest's files, each path a safe relative key; anything else refused in one line."""
    try:
        doc = json.loads(raw)
        files = [ManifestFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]]
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {MANIFEST_FORMAT}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(f"model.source {where}: {MANIFEST} is not a hare model manifest ({_first_line(exc)})")
    seen: set[str] = set()
    for f in files:
        try:
            check_key(f.path)
        except StoreError:
            raise ModelSourceError(f"model.source {where}: {MANIFEST} lists an unsafe path {f.path!r}") from None
        if f.path in seen or f.path == MANIFEST or f.size < 0 or not _SHA256.match(f.sha256):
            raise ModelSourceError(f"model.source {where}: {MANIFEST} has a bad entry for {f.path!r}")
        seen.add(f.path)
    if "config.json" not in seen:
        raise ModelSourceError(f"model.source {where}: {MANIFEST} lists no config.json (not an HF model folder)")
    return files


def s3_store(url: str) -> S3Store:
    """The store holding a pushed model: an ``s3://bucket/prefix`` (the prefix is the model's)."""
    store = open_store(url.rstrip("/"))
    if not isinstance(store, S3Store) or not store.prefix:
        raise ModelSourceError(f"model.source {url}: a pushed model lives under an s3://bucket/prefix/")
    return store


# --- S3 requests, through S3Store's client and retry policy -----------------------------------


def _open_range(store: S3Store, key: str, start: int, end: int) -> Iterable[bytes]:
    """The body of one ranged GET of ``key`` (bytes ``start``..``end``, inclusive), in chunks.
    One request per call: the tests count and cut them here."""
    resp = store._client.get_object(Bucket=store.bucket, Key=store._key(key), Range=f"bytes={start}-{end}")
    return resp["Body"].iter_chunks(_CHUNK)


def _upload_file(store: S3Store, key: str, path: Path) -> None:
    """Stream a local file to ``key`` (multipart at S3Store's threshold), never whole in memory."""
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=store.multipart_bytes, multipart_chunksize=store.multipart_bytes,
                            max_concurrency=4)

    def upload() -> None:
        try:
            store._client.upload_file(str(path), store.bucket, store._key(key), Config=config)
        except S3UploadFailedError as exc:  # boto3 wraps S3's refusal (a missing bucket, access denied)
            raise StoreError(f"upload {store.uri(key)}: {_first_line(exc)}") from None

    store._call(store.uri(key), upload, "upload")  # connection errors: retried with the store's backoff


# --- push --------------------------------------------------------------------------------------


def push_folder(folder: Path, url: str, workers: int = WORKERS) -> PushResult:
    """Upload a safetensors HF folder under ``url`` with its manifest (written last: until it
    lands, engines see no model there, or the previous one)."""
    folder = folder.expanduser()
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{folder}: no config.json (not an HF model folder)")
    if not any(rel.endswith(".safetensors") for rel in folder_files(folder)):
        raise ModelSourceError(f"{folder}: no .safetensors weights (engines load safetensors only, never pickles)")
    store = s3_store(url)
    manifest = build_manifest(folder)
    files = parse_manifest(manifest, str(folder))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for fut in [pool.submit(_upload_file, store, f.path, folder / f.path) for f in files]:
            fut.result()
    store.put_bytes(MANIFEST, manifest)
    return PushResult(store.url, revision_of(manifest), len(files), sum(f.size for f in files))


# --- fetch -------------------------------------------------------------------------------------


def _parts(f: ManifestFile, part_bytes: int) -> list[tuple[int, int]]:
    """(start, length) of each ranged GET of ``f``; none for an empty file."""
    return [(s, min(part_bytes, f.size - s)) for s in range(0, f.size, part_bytes)]


def _part_path(out: Path, f: ManifestFile, index: int) -> Path:
    return out / f"{f.path}.{index}.part"


def _fetch_part(store: S3Store, f: ManifestFile, start: int, length: int, path: Path) -> int:
    """Bring ``path`` to the ``length`` bytes of ``f`` from ``start``; returns bytes received.
    Each try (the store's retry policy rides out a dropped connection) asks only for what the
    part file lacks, so nothing already on disk is fetched twice."""
    received = 0

    def attempt() -> None:
        nonlocal received
        have = path.stat().st_size if path.exists() else 0
        if have < length:
            with open(path, "ab") as fh:
                for chunk in _open_range(store, f.path, start + have, start + length - 1):
                    fh.write(chunk)
                    received += len(chunk)
        got = path.stat().st_size
        if got != length:
            path.unlink()
            raise ModelSourceError(f"model.source {store.url}: {f.path} in the store is not the {f.size} bytes "
                                   f"{MANIFEST} says (bytes {start}-{start + length - 1} gave {got - have}); "
                                   f"push the folder again")

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        store._call(store.uri(f.path), attempt, "get range")
    except KeyNotFound:
        raise ModelSourceError(f"model.source {store.url}: {f.path} is in {MANIFEST} but not in the store; "
                               f"push the folder again") from None
    except StoreError as exc:
        raise ModelSourceError(f"model.source {store.url}: {f.path}: {_first_line(exc)}") from None
    return received


def _assemble(store_url: str, out: Path, f: ManifestFile, parts: int) -> None:
    """Join ``f``'s parts, hashing as it goes, and give it its name only if the sha256 matches."""
    dest = out / f.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    paths = [_part_path(out, f, i) for i in range(parts)]
    h = hashlib.sha256()
    if len(paths) == 1:  # one part: hash it where it lies, then rename (no copy)
        tmp = paths[0]
        with open(tmp, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
    else:
        tmp = dest.with_name(dest.name + ".joining")
        with open(tmp, "wb") as w:
            for p in paths:
                with open(p, "rb") as r:
                    for chunk in iter(lambda: r.read(_CHUNK), b""):
                        h.update(chunk)
                        w.write(chunk)
    if h.hexdigest() != f.sha256:
        for p in {tmp, *paths}:
            p.unlink(missing_ok=True)
        raise ModelSourceError(f"model.source {store_url}: {f.path} does not match its sha256 in {MANIFEST} "
                               f"(got {h.hexdigest()[:16]}, expected {f.sha256[:16]}): the copy in the store is "
                               f"corrupt or changed after the push; push the folder again")
    os.replace(tmp, dest)
    for p in paths:
        p.unlink(missing_ok=True)


def _finished(out: Path, f: ManifestFile) -> bool:
    """A file at its own name was checked against the manifest before it got that name."""
    dest = out / f.path
    return dest.is_file() and dest.stat().st_size == f.size


def _download(store: S3Store, files: list[ManifestFile], out: Path, workers: int, part_bytes: int) -> int:
    """Every file of ``files`` not yet in ``out``, verified; returns bytes received."""
    todo = [f for f in files if not _finished(out, f)]
    received = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(_fetch_part, store, f, start, length, _part_path(out, f, i))
                   for f in todo for i, (start, length) in enumerate(_parts(f, part_bytes))]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((fut for fut in done if fut.exception() is not None), None)
        if failed is not None:  # stop queued GETs; the parts written so far stay for the next fetch
            pool.shutdown(wait=True, cancel_futures=True)
            raise failed.exception()  # type: ignore[misc]
        received = sum(fut.result() for fut in futures)
        for fut in [pool.submit(_assemble, store.url, out, f, len(_parts(f, part_bytes))) for f in todo]:
            fut.result()
    return received


def cache_folder(store: S3Store, manifest: bytes) -> Path:
    """This node's folder for the pushed model: the prefix's last segment and the revision."""
    name = re.sub(r"[^\w.-]", "_", store.prefix.rsplit("/", 1)[-1]) or "model"
    return cache_dir() / "models" / f"{name}-s3-{sha256_bytes(manifest)[:16]}"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ModelSourceError(f"{name}={raw!r} must be a whole number >= 1")
    return int(raw)


def fetch_model(url: str, workers: int | None = None, part_bytes: int | None = None) -> ResolvedModel:
    """``model.source: s3://bucket/prefix/`` -> this node's verified copy, fetched at most once.
    ``workers`` / ``part_bytes``: GETs at once and their size (default: HARE_MODEL_FETCH_WORKERS,
    HARE_MODEL_FETCH_PART_MB, else 8 and 64 MiB)."""
    from hare.progress import status

    workers = workers or _env_int(WORKERS_ENV, WORKERS)
    part_bytes = part_bytes or _env_int(PART_MB_ENV, PART_BYTES // (1024 * 1024)) * 1024 * 1024
    store = s3_store(url)
    try:
        manifest = store.get_bytes(MANIFEST)
    except KeyNotFound:
        raise ModelSourceError(f"model.source {url}: no {MANIFEST} there; upload the folder with "
                               f"`hare model push FOLDER {url}`") from None
    except StoreError as exc:
        raise ModelSourceError(f"model.source {url}: {_first_line(exc)}") from None
    files = parse_manifest(manifest, url)
    revision = revision_of(manifest)
    out = cache_folder(store, manifest)
    out.mkdir(parents=True, exist_ok=True)
    with status(f"model {url}") as step, open(out.parent / f".{out.name}.lock", "w") as lock:
        step("waiting for another fetch on this node")
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / DONE).is_file():
            total = sum(f.size for f in files)
            step(f"fetching {len(files)} files, {total / 1e6:.0f} MB")
            started = time.monotonic()
            received = _download(store, files, out, workers, part_bytes)
            (out / MANIFEST).write_bytes(manifest)
            (out / DONE).write_text(json.dumps({"source": store.url, "revision": revision}))
            log.info("model: fetched %s (%d files, %.0f MB received of %.0f MB) into %s in %.1f s", url, len(files),
                     received / 1e6, total / 1e6, out, time.monotonic() - started)
    return ResolvedModel(str(out), revision)
