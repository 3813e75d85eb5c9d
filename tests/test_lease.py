"""Leases on the store's conditional writes, on a local folder and a real HTTP S3 endpoint (moto).

put_if_absent creates once; replace_if is a compare-and-swap; a lease is held by one owner at
a time, refused to a second with the owner's name, taken over once it expires, renewed while
held, and of many takers racing for a free or expired lease exactly one wins.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from hare.store.lease import Lease, LeaseHeld, LeaseLost, acquire, held, hold_run, run_lease_key
from hare.store import open_store


def test_put_if_absent_creates_once(store_url: str) -> None:
    store = open_store(store_url)
    assert store.put_if_absent("a/lock.json", b"first")
    assert not store.put_if_absent("a/lock.json", b"second")
    assert store.get_bytes("a/lock.json") == b"first"
    assert store.list("a/") == ["a/lock.json"], "no temp file is left behind"


def test_replace_if_is_compare_and_swap(store_url: str) -> None:
    store = open_store(store_url)
    store.put_bytes("k.json", b"v1")
    data, v1 = store.get_versioned("k.json")
    assert data == b"v1"
    assert store.replace_if("k.json", b"v2", v1)
    assert not store.replace_if("k.json", b"v3", v1), "a stale version does not overwrite"
    assert store.get_bytes("k.json") == b"v2"
    assert not store.replace_if("missing.json", b"x", v1)
    assert not store.exists("missing.json")


def test_only_one_of_many_racers_creates(store_url: str) -> None:
    store = open_store(store_url)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: store.put_if_absent("race.json", str(i).encode()), range(16)))
    assert won.count(True) == 1


def test_lease_refused_while_held_taken_over_when_expired(store_url: str) -> None:
    store = open_store(store_url)
    first = acquire(store, "locks/x.json", "x", owner="worker-1 pid 11", ttl_s=1.5)
    with pytest.raises(LeaseHeld, match=r"x is held by worker-1 pid 11 \(lease expires .*\)") as info:
        acquire(store, "locks/x.json", "x", owner="worker-2", ttl_s=1.5)
    assert info.value.holder.owner == "worker-1 pid 11"
    time.sleep(1.7)  # the first holder "crashed": no renewal
    second = acquire(store, "locks/x.json", "x", owner="worker-2", ttl_s=30)
    assert second.owner == "worker-2"
    with pytest.raises(LeaseLost, match="taken over by worker-2"):
        first.renew(store)
    first.release(store)  # not ours any more: leaves the new holder's lease alone
    with pytest.raises(LeaseHeld, match="held by worker-2"):
        acquire(store, "locks/x.json", "x", owner="worker-3")
    second.release(store)
    assert acquire(store, "locks/x.json", "x", owner="worker-3").owner == "worker-3", "a released lease is free"


def test_a_held_lease_is_renewed(store_url: str) -> None:
    store = open_store(store_url)
    with held(store, "locks/r.json", "r", owner="long-runner", ttl_s=1.2) as lease:
        first_expiry = lease.expires_at
        time.sleep(2.0)  # longer than the ttl: only the renewals keep it
        with pytest.raises(LeaseHeld, match="long-runner"):
            acquire(store, "locks/r.json", "r", owner="other", ttl_s=1.2)
        assert lease.expires_at > first_expiry
    assert acquire(store, "locks/r.json", "r", owner="other").owner == "other", "released at the end"


def test_racing_for_an_expired_lease_one_wins(store_url: str) -> None:
    store = open_store(store_url)
    acquire(store, "locks/e.json", "e", owner="crashed", ttl_s=0.5)
    time.sleep(0.7)
    barrier = threading.Barrier(6)

    def take(i: int) -> str | None:
        barrier.wait()
        try:
            return acquire(store, "locks/e.json", "e", owner=f"taker-{i}", ttl_s=30).owner
        except LeaseHeld:
            return None

    with ThreadPoolExecutor(6) as pool:
        winners = [w for w in pool.map(take, range(6)) if w]
    assert len(winners) == 1
    assert Lease.parse(store.get_bytes("locks/e.json"), "", "").owner == winners[0]


def test_run_lease_names_the_run(tmp_path) -> None:  # noqa: ANN001
    store = open_store(str(tmp_path / "store"))
    with hold_run(store, "r1", ttl_s=30):
        with pytest.raises(LeaseHeld, match=r"^run r1 is held by .* pid \d+"):
            with hold_run(store, "r1", ttl_s=30):
                pass
    assert store.exists(run_lease_key("r1"))
    with hold_run(store, "r1", ttl_s=30):  # released: the next start takes it
        pass
