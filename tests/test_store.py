"""The same suite against a local folder and a real HTTP S3 endpoint (moto server)."""

import pytest

from hare.store import KeyNotFound, RetryPolicy, StoreError, absolute_store_url, open_store, sha256_bytes


def test_round_trip(store_url: str) -> None:
    store = open_store(store_url)
    sha = store.put_bytes("runs/r1/a/b.bin", b"hello")
    assert sha == sha256_bytes(b"hello")
    assert store.get_bytes("runs/r1/a/b.bin") == b"hello"
    assert store.exists("runs/r1/a/b.bin")
    assert not store.exists("runs/r1/a/c.bin")
    store.put_bytes("runs/r1/a/b.bin", b"replaced")
    assert store.get_bytes("runs/r1/a/b.bin") == b"replaced"


def test_list_by_prefix(store_url: str) -> None:
    store = open_store(store_url)
    for key in ["runs/r1/x.json", "runs/r1/sub/y.json", "runs/r2/z.json"]:
        store.put_bytes(key, b"{}")
    assert store.list("runs/r1/") == ["runs/r1/sub/y.json", "runs/r1/x.json"]
    assert store.list("runs/") == ["runs/r1/sub/y.json", "runs/r1/x.json", "runs/r2/z.json"]
    assert store.list("nothing/") == []


def test_missing_key_and_delete(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(KeyNotFound, match="k.bin"):
        store.get_bytes("k.bin")
    store.put_bytes("k.bin", b"1")
    store.delete("k.bin")
    assert not store.exists("k.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs/path", "a/../b", "a//b", "", "a\\b", "./a"])
def test_unsafe_keys_refused(store_url: str, key: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError, match="unsafe store key"):
        store.put_bytes(key, b"x")


def test_retry_recovers_from_transient_errors() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("endpoint down")
        return "ok"

    assert RetryPolicy(attempts=5, base_delay_s=0.001).call("op", flaky, (ConnectionError,)) == "ok"
    assert len(calls) == 3


def test_retry_gives_up_with_clear_error() -> None:
    def down() -> None:
        raise ConnectionError("endpoint down")

    with pytest.raises(StoreError, match="put s3://b/k failed after 2 attempts: endpoint down"):
        RetryPolicy(attempts=2, base_delay_s=0.001).call("put s3://b/k", down, (ConnectionError,))


def test_s3_unreachable_endpoint_fails_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = open_store("s3://bucket/p")
    store.retry = RetryPolicy(attempts=2, base_delay_s=0.001)
    with pytest.raises(StoreError, match=r"s3://bucket/p/k failed after 2 attempts"):
        store.put_bytes("k", b"x")


def test_store_urls() -> None:
    assert absolute_store_url("s3://b/p") == "s3://b/p"
    assert absolute_store_url("rel/dir").startswith("file:///")
    with pytest.raises(StoreError, match="unsupported store URL"):
        open_store("gs://bucket")


def test_head_and_list_info(store_url: str) -> None:
    store = open_store(store_url)
    store.put_bytes("runs/r1/a.bin", b"12345")
    store.put_bytes("runs/r1/sub/b.bin", b"")
    store.put_bytes("runs/r2/c.bin", b"x")
    assert store.head("runs/r1/a.bin") == 5
    assert store.head("runs/r1/sub/b.bin") == 0
    assert store.head("runs/r1/nope.bin") is None
    assert store.head("runs/r1/sub") is None  # a "folder" is no object
    infos = store.list_info("runs/r1/")
    assert [(i.key, i.size) for i in infos] == [("runs/r1/a.bin", 5), ("runs/r1/sub/b.bin", 0)]
    assert [i.key for i in infos] == store.list("runs/r1/")
    assert all(i.mtime > 1e9 and i.etag for i in infos)
    before = infos[0]
    store.put_bytes("runs/r1/a.bin", b"54321")  # same size, rewritten: the stamp tells
    after = store.list_info("runs/r1/")[0]
    assert after.size == 5 and (after.mtime, after.etag) != (before.mtime, before.etag)
    assert store.list_info("nothing/") == []


def test_large_put_is_multipart(moto_endpoint: str) -> None:
    """At or above the threshold boto3's managed transfer uploads parts: S3's ETag of a
    multipart object ends in -<parts>; the bytes read back identical."""
    import os

    from tests.conftest import new_bucket

    store = open_store(f"s3://{new_bucket()}/mp")
    store.multipart_bytes = 5 * 1024 * 1024  # S3's (and moto's) smallest part
    data = os.urandom(12 * 1024 * 1024)
    assert store.put_bytes("big.bin", data) == sha256_bytes(data)
    (info,) = store.list_info("big.bin")
    assert info.size == len(data) and info.etag.endswith("-3"), info.etag
    assert store.get_bytes("big.bin") == data
    store.put_bytes("small.bin", b"x" * 1024)
    assert "-" not in store.list_info("small.bin")[0].etag  # below the threshold: one PUT


def test_retry_is_time_budgeted_and_counted(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import time

    from hare.store import retry_count

    monkeypatch.setenv("HARE_STORE_RETRY_SECONDS", "0.5")
    before = retry_count()

    def down() -> None:
        raise ConnectionError("endpoint down")

    start = time.monotonic()
    with caplog.at_level("WARNING", logger="hare.store"):
        with pytest.raises(StoreError, match=r"get s3://b/k failed after \d+ attempts: endpoint down \(retried for 0\.\d s of a 0\.5 s budget"):
            RetryPolicy(base_delay_s=0.01, max_delay_s=0.05).call("get s3://b/k", down, (ConnectionError,))
    took = time.monotonic() - start
    assert 0.45 <= took < 2.0
    assert retry_count() - before >= 5
    assert "store: retry" in caplog.text and "of get s3://b/k after ConnectionError: endpoint down" in caplog.text


def test_bad_retry_budget_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARE_STORE_RETRY_SECONDS", "soon")
    with pytest.raises(StoreError, match="HARE_STORE_RETRY_SECONDS='soon' is not a number"):
        RetryPolicy().call("op", lambda: 1, (ConnectionError,))


def test_permanent_errors_are_not_retried(store_url: str) -> None:
    """A missing key, a missing bucket, a file where a folder should be: no retry, at once."""
    from hare.store import retry_count

    store = open_store(store_url)
    before = retry_count()
    with pytest.raises(KeyNotFound):
        store.get_bytes("no/such.bin")
    assert store.head("no/such.bin") is None
    if store_url.startswith("s3://"):
        with pytest.raises(StoreError, match="NoSuchBucket"):
            open_store("s3://no-such-bucket-hare/p").put_bytes("k", b"x")
    else:
        store.put_bytes("file", b"x")
        with pytest.raises(StoreError, match="File exists"):
            store.put_bytes("file/below", b"x")
    assert retry_count() == before


def test_a_folder_prefix_has_a_uri_on_every_store(store_url: str) -> None:
    """``index/runs/<run>/`` names a folder: S3 refused its empty last part and failed every
    second run's dedup on S3 (found by tests/test_concurrent_runs.py)."""
    store = open_store(store_url)
    assert store.uri("index/runs/r1/").endswith("index/runs/r1/")
    assert store.uri("runs/r1/run.json").endswith("runs/r1/run.json")
