"""The one object-store module: a local folder or ``s3://bucket/prefix``, same interface.

Every byte the DAG keeps goes through here, so retries, key safety and checksums live in one
place. Keys are relative ``a/b/c.parquet`` paths; a key that could escape its root (``..``,
absolute, empty parts, backslashes) is refused before any I/O.
Credentials are never taken from configuration: boto3 reads the environment (AWS_*,
AWS_ENDPOINT_URL) or the AWS config files, so they cannot leak into manifests or logs.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")


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
class RetryPolicy:
    """Exponential backoff with jitter for transient store errors."""

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def call(self, what: str, fn: Callable[[], T], transient: tuple[type[BaseException], ...]) -> T:
        last: BaseException | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except transient as exc:  # noqa: PERF203 - retry loop
                last = exc
                if attempt == self.attempts:
                    break
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
        raise StoreError(f"{what} failed after {self.attempts} attempts: {last}") from last


class ObjectStore(Protocol):
    """What the DAG needs from storage. ``url`` names the root, for messages and lineage."""

    url: str

    def put_bytes(self, key: str, data: bytes) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def folders(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def uri(self, key: str) -> str: ...


class LocalStore:
    """A folder. Writes go to a temp file then ``os.replace`` so a reader never sees half."""

    def __init__(self, root: str | os.PathLike[str], retry: RetryPolicy = RetryPolicy()) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"
        self.retry = retry

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{random.getrandbits(32):08x}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

        self.retry.call(f"put {self.uri(key)}", write, (OSError,))
        return sha256_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise KeyNotFound(f"no object {self.uri(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        start = base if base.is_dir() else base.parent
        if not start.is_dir():
            return []
        out = []
        for p in start.rglob("*"):
            if p.is_file() and not p.name.endswith(".tmp"):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def folders(self, prefix: str) -> list[str]:
        """Names of the folders right under ``prefix`` (ends with ``/``): one directory read."""
        base = self.root / check_key(prefix.rstrip("/"))
        return sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"


class S3Store:
    """``s3://bucket/prefix`` through boto3; endpoint and credentials from the environment."""

    def __init__(self, bucket: str, prefix: str = "", retry: RetryPolicy = RetryPolicy()) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.retry = retry
        # boto3 honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself; botocore's own retries are
        # kept short so our backoff (which also covers connection refusals) decides.
        self._client = boto3.client(
            "s3", config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5)
        )
        from botocore.exceptions import BotoCoreError, ClientError

        self._transient: tuple[type[BaseException], ...] = (BotoCoreError, ConnectionError)
        self._client_error = ClientError

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn: Callable[[], T]) -> T:
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

        return self.retry.call(what, guarded, self._transient)

    def put_bytes(self, key: str, data: bytes) -> str:
        k = self._key(key)
        self._call(self.uri(key), lambda: self._client.put_object(Bucket=self.bucket, Key=k, Body=data))
        return sha256_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        k = self._key(key)
        return self._call(
            self.uri(key), lambda: self._client.get_object(Bucket=self.bucket, Key=k)["Body"].read()
        )

    def exists(self, key: str) -> bool:
        k = self._key(key)
        try:
            self._call(self.uri(key), lambda: self._client.head_object(Bucket=self.bucket, Key=k))
            return True
        except KeyNotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def pages() -> list[str]:
            keys: list[str] = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call(f"list {self.url}/{prefix}", pages))

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
        self._call(self.uri(key), lambda: self._client.delete_object(Bucket=self.bucket, Key=k))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


# The store `hare status`/`hare rerun` and the served deployments use when none is named.
DEFAULT_STORE_URL = os.environ.get("HARE_STORE", "file://.hare/store")


def absolute_store_url(url: str) -> str:
    """Pin a local store URL (plain path or ``file://``) to an absolute ``file://`` URL."""
    if url.startswith("s3://"):
        return url
    path = url.removeprefix("file://")
    return f"file://{Path(os.path.expanduser(path)).resolve()}"


def open_store(url: str) -> ObjectStore:
    """Open the store a URL names: ``s3://bucket[/prefix]``, ``file://path`` or a plain path."""
    if url.startswith("s3://"):
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreError(f"store URL {url!r} has no bucket")
        return S3Store(bucket, prefix)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"unsupported store URL {url!r}: use a folder, file:// or s3://")
    return LocalStore(url.removeprefix("file://"))

