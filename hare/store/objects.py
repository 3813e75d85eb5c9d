"""The one object-store module: a local folder or ``s3://bucket/prefix``, same interface.

Every byte the DAG keeps goes through here, so retries, key safety and checksums live in one
place. Keys are relative ``a/b/c.parquet`` paths; a key that could escape its root (``..``,
absolute, empty parts, backslashes) is refused before any I/O.
Credentials are never taken from configuration: boto3 reads the environment (AWS_*,
AWS_ENDPOINT_URL) or the AWS config files, so they cannot leak into manifests or logs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import logging
import os
import random
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, TypeVar

T = TypeVar("T")

log = logging.getLogger("hare.store")

# How long a store call keeps retrying transient errors (an endpoint down, 5xx, throttling)
# before it fails for good; HARE_STORE_RETRY_SECONDS overrides it, read at each call.
DEFAULT_RETRY_SECONDS = 120.0
RETRY_SECONDS_ENV = "HARE_STORE_RETRY_SECONDS"

# S3 objects at or above this size are uploaded as multipart in parts of this size (S3 refuses
# a single PUT over 5 GiB; parts must be >= 5 MiB). S3Store.multipart_bytes overrides it.
MULTIPART_BYTES = 64 * 1024 * 1024


class StoreError(RuntimeError):
    """A store operation failed for good (after retries) or was refused."""


class KeyNotFound(StoreError, KeyError):
    """The key does not exist in the store."""


def check_key(key: str) -> str:
    """Refuse keys that could address anything outside the store root."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise StoreError(f"unsafe store key {key!r}")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"unsafe store key {key!r}")
    return key


def check_key_part(part: str, what: str) -> str:
    """A run or partition id used inside a key must be one safe path segment."""
    if not part or "/" in part or part in (".", "..") or "\\" in part or "\x00" in part:
        raise StoreError(f"unsafe {what} {part!r}: must be one path segment")
    return part


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its size and what changes whenever it is rewritten.

    ``mtime`` is epoch seconds (S3: LastModified, one-second resolution); ``etag`` is S3's
    ETag, or ``<inode>-<mtime ns>`` for a local file (a rewrite is an ``os.replace``, so a new
    inode), so (size, mtime, etag) tells a rewritten object apart even within one second."""

    key: str
    size: int
    mtime: float
    etag: str = ""


_retry_lock = threading.Lock()
_retries = 0


def retry_count() -> int:
    """Transient store errors retried by this process so far (every store, every thread)."""
    return _retries


def _count_retry() -> int:
    global _retries
    with _retry_lock:
        _retries += 1
        return _retries


def retry_budget_s() -> float:
    """Seconds of retrying allowed per store call: HARE_STORE_RETRY_SECONDS, else 120."""
    raw = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise StoreError(f"{RETRY_SECONDS_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise StoreError(f"{RETRY_SECONDS_ENV}={raw!r} must be >= 0")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient store errors with exponential backoff (jittered, capped at
    ``max_delay_s``) until ``max_elapsed_s`` have passed since the first try, so an endpoint
    outage shorter than the budget is ridden out. ``max_elapsed_s`` None: HARE_STORE_RETRY_SECONDS
    or 120 s, read at each call. ``attempts`` optionally caps the tries as well (None: no cap).
    Every retry is counted (``retry_count()``) and logged on ``hare.store``."""

    attempts: int | None = None
    base_delay_s: float = 0.2
    max_delay_s: float = 4.0
    max_elapsed_s: float | None = None
    log_level: int = logging.WARNING  # of the "store: retry" lines (a start-up probe keeps them quiet)

    def call(self, what: str, fn: Callable[[], T], transient: tuple[type[BaseException], ...]) -> T:
        budget = retry_budget_s() if self.max_elapsed_s is None else self.max_elapsed_s
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except transient as exc:  # noqa: PERF203 - retry loop
                elapsed = time.monotonic() - start
                left = budget - elapsed
                if left <= 0 or (self.attempts is not None and attempt >= self.attempts):
                    raise StoreError(
                        f"{what} failed after {attempt} attempts: {exc} (retried for {elapsed:.1f} s of "
                        f"a {budget:g} s budget; {RETRY_SECONDS_ENV} sets it)") from exc
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                n = _count_retry()
                log.log(self.log_level, "store: retry %d of %s after %s: %s (attempt %d, %.1f s of a %g s budget)",
                        n, what, type(exc).__name__, exc, attempt, elapsed, budget)
                time.sleep(min(delay, left))


class ObjectStore(Protocol):
    """What the DAG needs from storage. ``url`` names the root, for messages and lineage."""

    url: str

    def put_bytes(self, key: str, data: bytes) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_range(self, key: str, start: int, end: int) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def head(self, key: str) -> int | None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def list_info(self, prefix: str = "") -> list[ObjectInfo]: ...
    def folders(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...
    # conditional writes (hare/store/lease.py builds its leases on them)
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def get_versioned(self, key: str) -> tuple[bytes, str]: ...
    def replace_if(self, key: str, data: bytes, version: str) -> bool: ...


def _synced_temp(path: Path, data: bytes) -> Path:
    """``data`` in a new temp file beside ``path``, flushed to disk: the one way a local write
    starts, so a reader never sees half an object (it is then renamed or linked into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
    with open(tmp, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return tmp


class LocalStore:
    """A folder. Writes go to a temp file then ``os.replace`` so a reader never sees half."""

    def __init__(self, root: str | os.PathLike[str], retry: RetryPolicy | None = None) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self.retry = retry or RetryPolicy()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(_synced_temp(path, data), path)

        self.retry.call(f"put {self.uri(key)}", lambda: _local_io(f"put {self.uri(key)}", write), (OSError,))
        return sha256_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(f"no object {self.uri(key)}") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive; fewer at the end of the object): a corpus
        partition reads its byte range, never the whole file."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                fh.seek(start)
                return fh.read(max(0, end - start))
        except FileNotFoundError:
            raise KeyNotFound(f"no object {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def head(self, key: str) -> int | None:
        """The object's size in bytes, None when it does not exist."""
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _walk(self, prefix: str) -> list[tuple[str, Path]]:
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.is_dir():
            return []
        out = []
        for p in start.rglob("*"):
            if p.is_file() and not p.name.endswith(".tmp"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append((key, p))
        return sorted(out)

    def list(self, prefix: str = "") -> list[str]:
        return [key for key, _ in self._walk(prefix)]

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Keys under ``prefix`` with size and mtime, sorted by key (one walk, one stat each)."""
        out = []
        for key, p in self._walk(prefix):
            try:
                st = p.stat()
            except FileNotFoundError:  # deleted since the walk
                continue
            out.append(ObjectInfo(key, st.st_size, st.st_mtime_ns / 1e9, f"{st.st_ino:x}-{st.st_mtime_ns:x}"))
        return out

    def folders(self, prefix: str) -> list[str]:
        """Names of the folders right under ``prefix`` (ends with ``/``): one directory read."""
        base = self.root / check_key(prefix.rstrip("/"))
        return sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    @contextlib.contextmanager
    def _folder_lock(self, path: Path) -> Iterator[None]:
        """An exclusive ``flock`` on the object's folder: conditional writes in one folder are
        serialised between processes (and threads: each call opens its own descriptor)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` only if it does not exist: True if this call created it.
        Create-exclusive: the bytes go to a temp file that is then hard-linked to the key
        (``link`` fails with EEXIST when the key exists), so a reader sees all of it or nothing."""
        path = self._path(key)

        def create() -> bool:
            with self._folder_lock(path):
                tmp = _synced_temp(path, data)
                try:
                    os.link(tmp, path)
                    return True
                except FileExistsError:
                    return False
                finally:
                    tmp.unlink(missing_ok=True)

        return self.retry.call(f"put-if-absent {self.uri(key)}", lambda: _local_io(
            f"put-if-absent {self.uri(key)}", create), (OSError,))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its version tag (here its sha256), for :meth:`replace_if`."""
        data = self.get_bytes(key)
        return data, sha256_bytes(data)

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite ``key`` only if it still holds the version :meth:`get_versioned` gave:
        True if replaced, False if it changed or vanished meanwhile (compare-and-swap)."""
        path = self._path(key)

        def swap() -> bool:
            with self._folder_lock(path):
                try:
                    current = path.read_bytes()
                except FileNotFoundError:
                    return False
                if sha256_bytes(current) != version:
                    return False
                os.replace(_synced_temp(path, data), path)
                return True

        return self.retry.call(f"replace-if {self.uri(key)}", lambda: _local_io(
            f"replace-if {self.uri(key)}", swap), (OSError,))


# S3's answers to a conditional write whose condition did not hold (412), or that raced another
# conditional write of the same key (409): the write did not happen.
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3Store:
    """``s3://bucket/prefix`` through boto3; endpoint and credentials from the environment."""

    def __init__(self, bucket: str, prefix: str = "", retry: RetryPolicy | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.retry = retry or RetryPolicy()
        self.multipart_bytes = MULTIPART_BYTES
        # boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself; botocore's own retries are
        # kept short so our backoff (which also covers connection refusals) decides. The pool
        # fits the parallel HEADs/GETs of status and verify (16 threads by default).
        self._client = boto3.client(
            "s3", config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5,
                                max_pool_connections=32)
        )
        from botocore.exceptions import BotoCoreError, ClientError

        self._transient: tuple[type[BaseException], ...] = (BotoCoreError, ConnectionError)
        self._client_error = ClientError

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable[[], T], verb: str = "") -> T:
        """``fn`` with S3's errors sorted: missing key, transient (retried), or final. ``what``
        names the object or listing; ``verb`` (put, get, ...) is added to retry messages."""
        def guarded() -> T:
            try:
                return fn()
            except self._client_error as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise KeyNotFound(f"no object {what}") from None
                if status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
                    raise ConnectionError(f"{code or status}: {exc}") from exc
                raise StoreError(f"{what}: {code or status}: {exc}") from exc

        return self.retry.call(f"{verb} {what}" if verb else what, guarded, self._transient)

    def put_bytes(self, key: str, data: bytes) -> str:
        """One PUT below ``multipart_bytes``; at or above it boto3's managed transfer uploads
        parts of ``multipart_bytes`` (so no single request carries a huge body). A retry redoes
        the whole upload; s3transfer aborts a failed one, but an abort can fail too while the
        endpoint is down, so buckets want an AbortIncompleteMultipartUpload lifecycle rule."""
        k = self._key(key)
        if len(data) < self.multipart_bytes:
            self._call(self.uri(key), lambda: self._client.put_object(Bucket=self.bucket, Key=k, Body=data), "put")
        else:
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(multipart_threshold=self.multipart_bytes,
                                    multipart_chunksize=self.multipart_bytes, max_concurrency=4)
            self._call(self.uri(key), lambda: self._client.upload_fileobj(
                io.BytesIO(data), self.bucket, k, Config=config), "multipart put")
        return sha256_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        k = self._key(key)
        return self._call(
            self.uri(key), lambda: self._client.get_object(Bucket=self.bucket, Key=k)["Body"].read(), "get"
        )

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) in one ranged GET (fewer at the object's end)."""
        if end <= start:
            return b""
        k = self._key(key)
        return self._call(self.uri(key), lambda: self._client.get_object(
            Bucket=self.bucket, Key=k, Range=f"bytes={start}-{end - 1}")["Body"].read(), "ranged get")

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> int | None:
        """The object's size in bytes (one HEAD request), None when it does not exist."""
        k = self._key(key)
        try:
            return int(self._call(self.uri(key), lambda: self._client.head_object(Bucket=self.bucket, Key=k),
                                  "head")["ContentLength"])
        except KeyNotFound:
            return None

    def _list_objects(self, prefix: str) -> list[dict]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix

        def pages() -> list[dict]:
            objs: list[dict] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                objs.extend(page.get("Contents", []))
            return objs

        return self._call(f"list {self.url}/{prefix}", pages)

    def list(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(obj["Key"][strip:] for obj in self._list_objects(prefix))

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Keys under ``prefix`` with size, LastModified and ETag: the same LIST requests as
        ``list`` (1,000 keys a page), no request per object."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted((ObjectInfo(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"].timestamp(),
                                  str(obj.get("ETag", "")).strip('"'))
                       for obj in self._list_objects(prefix)), key=lambda o: o.key)

    def folders(self, prefix: str) -> list[str]:
        """Names of the "folders" right under ``prefix`` (a delimiter listing: no object of
        theirs is listed, so this stays cheap on a store of many runs)."""
        full = self._key(prefix.rstrip("/")) + "/"

        def pages() -> list[str]:
            out: list[str] = []
            for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=full, Delimiter="/"):
                out.extend(p["Prefix"][len(full):].rstrip("/") for p in page.get("CommonPrefixes", []))
            return out

        return sorted(self._call(f"list {self.url}/{prefix}", pages))

    def delete(self, key: str) -> None:
        k = self._key(key)
        self._call(self.uri(key), lambda: self._client.delete_object(Bucket=self.bucket, Key=k), "delete")

    def uri(self, key: str) -> str:
        """``s3://`` of a key, or of a prefix ending in ``/`` (a folder, as LocalStore's ``uri``
        allows: ``index/runs/<run>/``), whose empty last part the key check would refuse."""
        folder = key.endswith("/")
        return f"s3://{self.bucket}/{self._key(key.rstrip('/'))}" + ("/" if folder else "")

    def _conditional_put(self, key: str, verb: str, **condition: str) -> Callable[[bytes], bool]:
        k = self._key(key)

        def put(data: bytes) -> bool:
            def attempt() -> bool:
                try:
                    self._client.put_object(Bucket=self.bucket, Key=k, Body=data, **condition)
                    return True
                except self._client_error as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                    if code in _CONDITION_FAILED or status in ("412", "409") or code in ("NoSuchKey", "404"):
                        return False
                    raise

            return self._call(self.uri(key), attempt, verb)

        return put

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if it does not exist (``If-None-Match: *``, S3's conditional
        write): True if this call created it. A retried request whose first try did land
        answers False; a caller that must know (a lease) reads the object back."""
        return self._conditional_put(key, "put-if-absent", IfNoneMatch="*")(data)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object and its ETag, for :meth:`replace_if`."""
        k = self._key(key)

        def get() -> tuple[bytes, str]:
            resp = self._client.get_object(Bucket=self.bucket, Key=k)
            return resp["Body"].read(), str(resp.get("ETag", ""))

        return self._call(self.uri(key), get, "get")

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        """Overwrite ``key`` only if its ETag is still ``version`` (``If-Match``): True if
        replaced, False if it changed or vanished meanwhile."""
        return self._conditional_put(key, "replace-if", IfMatch=version)(data)


# Local I/O errors that retrying cannot fix: fail at once rather than after the retry budget.
_LOCAL_PERMANENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG,
                    errno.EISDIR, errno.ENOTDIR, errno.EEXIST}


def _local_io(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except OSError as exc:
        if exc.errno in _LOCAL_PERMANENT:
            raise StoreError(f"{what}: {exc}") from exc
        raise


# The store `hare status`/`hare rerun` and the served deployments use when none is named.
DEFAULT_STORE_URL = os.environ.get("HARE_STORE", "file://.hare/store")


def absolute_store_url(url: str) -> str:
    """Pin a local store URL (plain path or ``file://``) to an absolute ``file://`` URL."""
    if url.startswith("s3://"):
        return url
    path = url.removeprefix("file://")
    return f"file://{Path(os.path.expanduser(path)).resolve()}"


def open_store(url: str, retry: RetryPolicy | None = None) -> ObjectStore:
    """Open the store a URL names: ``s3://bucket[/prefix]``, ``file://path`` or a plain path.
    ``retry``: the retry policy of its calls (default: the time budget, HARE_STORE_RETRY_SECONDS)."""
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"store URL {url!r} has no bucket")
        return S3Store(bucket, prefix, retry)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"unsupported store URL {url!r}: use a folder, file:// or s3://")
    return LocalStore(url.removeprefix("file://"), retry)

