"""The manifest is the commit: nothing without a valid one is trusted (both store backends)."""

from pathlib import Path

import pyarrow as pa
import pytest

from hare.config import load_config
from hare.store.layout import generated_key, manifest_key
from hare.store.manifest import commit_partition, committed_manifest, record_failure
from hare.store.runs import RunError, start_run
from hare.run.status import partition_rows
from hare.store import open_store
from hare.store.tables import to_parquet_bytes
from hare.tasks.publish import PublishError, publish_records
from tests.conftest import write_run_config

RUN = "run-1"


def _table(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def test_committed_partition_is_trusted(store_url: str) -> None:
    store = open_store(store_url)
    m = commit_partition(store, RUN, "p00000", "generate", {generated_key(RUN, "p00000"): _table(3)},
                         {"records": 3}, attempts=1)
    assert m.outputs[0].rows == 3
    assert committed_manifest(store, RUN, "p00000") == m


def test_data_without_manifest_is_not_trusted(store_url: str) -> None:
    store = open_store(store_url)
    store.put_bytes(generated_key(RUN, "p00000"), to_parquet_bytes(_table(3)))
    assert committed_manifest(store, RUN, "p00000") is None


def test_corrupted_or_missing_object_is_not_trusted(store_url: str) -> None:
    store = open_store(store_url)
    key = generated_key(RUN, "p00000")
    commit_partition(store, RUN, "p00000", "generate", {key: _table(3)}, {}, attempts=1)
    store.put_bytes(key, to_parquet_bytes(_table(4)))
    assert committed_manifest(store, RUN, "p00000") is None
    store.delete(key)
    assert committed_manifest(store, RUN, "p00000") is None


def test_failed_or_unreadable_manifest_is_not_a_commit(store_url: str) -> None:
    store = open_store(store_url)
    record_failure(store, RUN, "p00000", "generate", "boom", attempts=2)
    assert committed_manifest(store, RUN, "p00000") is None
    store.put_bytes(manifest_key(RUN, "p00001"), b"{not json")
    assert committed_manifest(store, RUN, "p00001") is None


def test_status_and_publish_refuse_uncommitted(tmp_path: Path, store_url: str) -> None:
    cfg = load_config(write_run_config(tmp_path), {"store": {"url": store_url}})
    store = open_store(store_url)
    start_run(store, cfg, RUN, ["p00000", "p00001"])
    commit_partition(store, RUN, "p00000", "generate", {generated_key(RUN, "p00000"): _table(1)},
                     {"records": 1}, attempts=1)
    store.put_bytes(generated_key(RUN, "p00001"), to_parquet_bytes(_table(1)))  # no manifest
    rows = {r["partition"]: r["status"] for r in partition_rows(store, RUN)}
    assert rows == {"p00000": "committed", "p00001": "pending"}
    with pytest.raises(PublishError, match="1 partition\\(s\\) not committed: p00001"):
        publish_records(store, cfg, RUN, ["p00000", "p00001"])
    assert not store.exists(f"runs/{RUN}/dataset/_manifest.json")


def test_resume_with_other_config_is_refused(tmp_path: Path) -> None:
    a = load_config(write_run_config(tmp_path))
    b = load_config(write_run_config(tmp_path, seed=99))
    store = open_store(a.store.url)
    start_run(store, a, RUN, ["p00000"])
    start_run(store, a, RUN, ["p00000"])  # same config: a resume
    with pytest.raises(RunError, match="different|config hash"):
        start_run(store, b, RUN, ["p00000"])


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ""])
def test_ids_cannot_escape_the_run_prefix(bad: str) -> None:
    from hare.store import StoreError

    with pytest.raises(StoreError, match="unsafe"):
        generated_key(bad, "p00000")
    with pytest.raises(StoreError, match="unsafe"):
        manifest_key(RUN, bad)


def test_status_watch_follows_the_run_until_it_ends(tmp_path: Path) -> None:
    import threading

    from hare.store.runs import finish_run
    from hare.run.status import watch_status

    cfg = load_config(write_run_config(tmp_path))
    store = open_store(cfg.store.url)
    start_run(store, cfg, RUN, ["p00000"])
    timer = threading.Timer(0.5, finish_run, args=(store, RUN, "succeeded", {}))
    timer.start()
    assert watch_status(store, RUN, interval=0.1, max_seconds=10) == "succeeded"
    timer.join()
