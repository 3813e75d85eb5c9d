"""The object store and the commit protocol: every key (layout.py), the store itself (objects.py:
a local folder or S3, with retries), manifests and their index, the quarantine, leases, run.json
and lineage events.

``hare.store`` is also the object store's public API (``from hare.store import open_store``):
the names below are objects.py's.
"""

from hare.store.objects import (
    DEFAULT_RETRY_SECONDS,
    DEFAULT_STORE_URL,
    MULTIPART_BYTES,
    RETRY_SECONDS_ENV,
    KeyNotFound,
    LocalStore,
    ObjectInfo,
    ObjectStore,
    RetryPolicy,
    S3Store,
    StoreError,
    absolute_store_url,
    check_key,
    check_key_part,
    open_store,
    retry_budget_s,
    retry_count,
    sha256_bytes,
)

__all__ = ["DEFAULT_RETRY_SECONDS", "DEFAULT_STORE_URL", "MULTIPART_BYTES", "RETRY_SECONDS_ENV", "KeyNotFound",
           "LocalStore", "ObjectInfo", "ObjectStore", "RetryPolicy", "S3Store", "StoreError", "absolute_store_url",
           "check_key", "check_key_part", "open_store", "retry_budget_s", "retry_count", "sha256_bytes"]
