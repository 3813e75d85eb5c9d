"""A 60 s S3 outage is ridden out by the store's retry budget (120 s by default): calls in flight
or started during the outage succeed once the endpoint is back, and the retries are counted.

No Ray or Prefect: a plain loop of store calls through a TCP forwarder that is cut for 60 s
(connections refused, open ones reset), in front of moto, which keeps its data meanwhile.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from hare.store import StoreError, open_store, retry_count, sha256_bytes
from tests.conftest import new_bucket
from tests.procs import TcpOutage

pytestmark = pytest.mark.slow

OUTAGE_S = 60.0


def test_store_rides_out_a_60s_outage(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    bucket = new_bucket()  # straight to moto
    direct = open_store(f"s3://{bucket}/outage")
    outage = TcpOutage(int(moto_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", outage.url)
    monkeypatch.delenv("HARE_STORE_RETRY_SECONDS", raising=False)  # the default budget
    store = open_store(f"s3://{bucket}/outage")  # through the forwarder
    store.multipart_bytes = 5 * 1024 * 1024  # type: ignore[attr-defined]

    stop = threading.Event()
    done: list[tuple[str, float, float]] = []  # (key, started, seconds)
    errors: list[BaseException] = []

    def loop() -> None:
        """put, get back, head, list: one round after another until told to stop."""
        i = 0
        while not stop.is_set():
            key = f"loop/{i:05d}.bin"
            data = os.urandom(1000 + i)
            started = time.monotonic()
            try:
                assert store.put_bytes(key, data) == sha256_bytes(data)
                assert store.get_bytes(key) == data
                assert store.head(key) == len(data)
                assert key in [o.key for o in store.list_info("loop/")]
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)
                return
            done.append((key, started, time.monotonic() - started))
            i += 1
            time.sleep(0.2)

    big = os.urandom(12 * 1024 * 1024)
    big_result: dict[str, object] = {}

    def multipart_during_outage() -> None:
        try:
            big_result["sha"] = store.put_bytes("big.bin", big)
        except BaseException as exc:  # noqa: BLE001
            big_result["error"] = exc

    with caplog.at_level("WARNING", logger="hare.store"):
        worker = threading.Thread(target=loop, daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        while len(done) < 3 and not errors and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(done) >= 3 and not errors, errors
        retries_before = retry_count()

        outage.down()
        down_at = time.monotonic()
        uploader = threading.Thread(target=multipart_during_outage, daemon=True)
        uploader.start()  # a multipart upload that starts while the endpoint is gone
        time.sleep(OUTAGE_S)
        outage.up()
        up_at = time.monotonic()

        uploader.join(timeout=120)
        deadline = time.monotonic() + 60
        while not [d for d in done if d[1] > up_at] and not errors and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        worker.join(timeout=120)

    assert not errors, f"a store call failed during the outage: {errors[0]!r}"
    assert isinstance(big_result.get("sha"), str), big_result.get("error")
    assert big_result["sha"] == sha256_bytes(big)
    assert direct.get_bytes("big.bin") == big
    spanning = [d for d in done if d[1] < up_at and d[1] + d[2] > up_at]
    assert spanning, "one loop round was in flight across the outage and completed"
    assert max(d[2] for d in done) >= OUTAGE_S - 10
    assert [d for d in done if d[1] > up_at], "the loop went on after the outage"
    for key, _, _ in done:
        assert direct.exists(key)
    assert retry_count() > retries_before, "retries were counted"
    assert "store: retry" in caplog.text and "after EndpointConnectionError" in caplog.text
    assert up_at - down_at >= OUTAGE_S


def test_outage_longer_than_the_budget_fails_clearly(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past HARE_STORE_RETRY_SECONDS a call fails with what, how long, and the knob."""
    bucket = new_bucket()
    outage = TcpOutage(int(moto_endpoint.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", outage.url)
    monkeypatch.setenv("HARE_STORE_RETRY_SECONDS", "3")
    store = open_store(f"s3://{bucket}/outage")
    outage.down()
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"put s3://.*/k failed after \d+ attempts: .*3 s budget; "
                                             r"HARE_STORE_RETRY_SECONDS sets it"):
            store.put_bytes("k", b"x")
        assert 3 <= time.monotonic() - start < 30
    finally:
        outage.up()
