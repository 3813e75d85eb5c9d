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
