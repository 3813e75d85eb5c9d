"""A run's manifests without a GET per partition: the index, what it costs, and what it survives
(both store backends). 300 partitions x 2 stages, as a scale test with counted requests."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from rich.console import Console

from hare.store.layout import generated_key, manifest_index_key, manifest_key, run_json
from hare.store.manifest import OutputRef, PartitionManifest, check_outputs, read_manifest
from hare.store.manifest_index import load_manifests
from hare.run.status import partition_rows, render_status
from hare.store import ObjectStore, open_store

RUN = "r-index"
N = 300


class CountingStore:
    """Forwards everything to a store; counts the calls and remembers the keys read."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()
        self.gets: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == "get_bytes":
                self.gets.append(args[0])
            return attr(*args, **kwargs)

        return counted

    def reset(self) -> None:
        self.calls.clear()
        self.gets.clear()


def _manifest(pid: str, stage: str, attempts: int = 1, status: str = "succeeded") -> PartitionManifest:
    outputs = [OutputRef(generated_key(RUN, pid), f"{int(pid[1:]):064x}", 11, 3)] if stage == "generate" else []
    return PartitionManifest(RUN, pid, stage, status, attempts, None if status == "succeeded" else "boom", outputs,
                             {"records": 3, "output_tokens": 30, "output_tokens_per_s": 10.0, "seconds": 3.0})


def _build_run(store: ObjectStore) -> list[str]:
    """run.json, N partitions with a generate and a quality manifest, an 11-byte output each."""
    pids = [f"p{i:05d}" for i in range(N)]
    store.put_bytes(run_json(RUN), json.dumps({"status": "running", "partitions": pids}).encode())

    def one(pid: str) -> None:
        store.put_bytes(generated_key(RUN, pid), b"hello world")
        for stage in ("generate", "quality"):
            store.put_bytes(manifest_key(RUN, pid, stage), _manifest(pid, stage).to_json())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, pids))
    return pids


@pytest.fixture
def run_store(store_url: str) -> tuple[CountingStore, list[str]]:
    store = open_store(store_url)
    return CountingStore(store), _build_run(store)


def test_index_reads_only_what_changed(run_store: tuple[CountingStore, list[str]]) -> None:
    store, pids = run_store
    first = load_manifests(store, RUN, write_back=True)  # no index yet: every manifest is read, once
    assert len(first) == 2 * N
    assert store.calls["list_info"] == 1 and store.calls["list"] == 0
    assert store.calls["get_bytes"] == 1 + 2 * N  # the (missing) index, then each manifest
    assert store.calls["put_bytes"] == 1 and store.exists(manifest_index_key(RUN))
    for key in (manifest_key(RUN, "p00000"), manifest_key(RUN, "p00299", "quality")):
        m = first[key]
        assert m == read_manifest(store._store, RUN, m.partition_id, m.stage)

    store.reset()
    again = load_manifests(store, RUN, write_back=True)
    assert again == first
    assert dict(store.calls) == {"list_info": 1, "get_bytes": 1}  # one listing, one index GET
    assert store.gets == [manifest_index_key(RUN)]

    # two manifests rewritten, one new stage commit, one deleted: only those three are read
    store._store.put_bytes(manifest_key(RUN, "p00005"), _manifest("p00005", "generate", attempts=2).to_json())
    store._store.put_bytes(manifest_key(RUN, "p00007", "quality"),
                           _manifest("p00007", "quality", attempts=2, status="failed").to_json())
    store._store.put_bytes(manifest_key(RUN, "p00009", "dedup"), _manifest("p00009", "dedup").to_json())
    store._store.delete(manifest_key(RUN, "p00011", "quality"))
    store.reset()
    changed = load_manifests(store, RUN, write_back=True)
    assert store.calls["list_info"] == 1 and store.calls["put_bytes"] == 1
    assert sorted(store.gets) == sorted([manifest_index_key(RUN), manifest_key(RUN, "p00005"),
                                         manifest_key(RUN, "p00007", "quality"), manifest_key(RUN, "p00009", "dedup")])
    assert len(changed) == 2 * N
    assert changed[manifest_key(RUN, "p00005")].attempts == 2
    assert changed[manifest_key(RUN, "p00007", "quality")].status == "failed"
    assert manifest_key(RUN, "p00011", "quality") not in changed

    store.reset()
    assert load_manifests(store, RUN) == changed  # the rewritten index holds the changes
    assert dict(store.calls) == {"list_info": 1, "get_bytes": 1}


def test_status_makes_no_per_partition_get(run_store: tuple[CountingStore, list[str]]) -> None:
    store, pids = run_store
    load_manifests(store, RUN, write_back=True)  # what the driver does as partitions commit
    store.reset()
    console = Console(record=True, width=200)
    rows = render_status(store, RUN, console)
    assert [r["status"] for r in rows] == ["committed"] * N
    assert {r["stages"] for r in rows} == {"quality"}
    assert f"{N}/{N} committed" in console.export_text()
    assert set(store.gets) == {run_json(RUN), manifest_index_key(RUN)}  # no manifest, no output read
    assert store.calls["list_info"] == 1 and store.calls["list"] == 0
    assert store.calls["head"] == N  # one HEAD per generated output: the shallow check
    assert store.calls["put_bytes"] == 0  # status never writes


def test_status_flags_a_missing_or_resized_output(run_store: tuple[CountingStore, list[str]]) -> None:
    store, pids = run_store
    store._store.delete(generated_key(RUN, "p00001"))
    store._store.put_bytes(generated_key(RUN, "p00002"), b"hello")
    rows = {r["partition"]: r for r in partition_rows(store, RUN)}
    assert rows["p00001"]["status"] == "corrupt" and "missing object" in rows["p00001"]["error"]
    assert rows["p00002"]["status"] == "corrupt" and "size mismatch" in rows["p00002"]["error"]
    assert rows["p00003"]["status"] == "committed"


def test_corrupt_index_is_rebuilt_never_fatal(run_store: tuple[CountingStore, list[str]]) -> None:
    store, _ = run_store
    truth = load_manifests(store, RUN)
    for garbage in (b"not parquet at all", open_store_bytes_of_other_parquet()):
        store._store.put_bytes(manifest_index_key(RUN), garbage)
        store.reset()
        assert load_manifests(store, RUN, write_back=True) == truth
        assert store.calls["get_bytes"] == 1 + 2 * N and store.calls["put_bytes"] == 1
    store.reset()
    assert load_manifests(store, RUN) == truth and store.calls["get_bytes"] == 1  # rebuilt


def open_store_bytes_of_other_parquet() -> bytes:
    """A readable Parquet file that is not an index (no index metadata)."""
    import pyarrow as pa

    from hare.store.tables import to_parquet_bytes

    return to_parquet_bytes(pa.table({"key": ["x"], "size": [1]}))


def test_unreadable_manifest_is_failed_as_read_manifest_says(store_url: str) -> None:
    store = open_store(store_url)
    store.put_bytes(manifest_key(RUN, "p00000"), b"{not json")
    store.put_bytes(manifest_key(RUN, "p00001", "quality"), b"[]")
    got = load_manifests(store, RUN, write_back=True)
    m, direct = got[manifest_key(RUN, "p00000")], read_manifest(store, RUN, "p00000")
    assert (m.partition_id, m.stage, m.status, m.attempts, m.error) == \
        (direct.partition_id, direct.stage, "failed", 0, direct.error)
    assert m.error.startswith("unreadable manifest: ")
    q = got[manifest_key(RUN, "p00001", "quality")]
    assert (q.partition_id, q.stage, q.status) == ("p00001", "quality", "failed")
    assert load_manifests(store, RUN) == got  # served from the index the same way


def test_check_outputs_shallow_and_deep(tmp_path) -> None:  # noqa: ANN001
    from hare.store.manifest import commit_partition
    import pyarrow as pa

    store = open_store(f"file://{tmp_path}")
    ms = {(f"p{i}", "generate"): commit_partition(store, RUN, f"p{i}", "generate",
                                                  {generated_key(RUN, f"p{i}"): pa.table({"x": [i]})}, {}, 1)
          for i in range(3)}
    assert check_outputs(store, ms) == {k: None for k in ms}
    key = generated_key(RUN, "p1")
    data = bytearray(store.get_bytes(key))
    data[-10] ^= 0xFF  # same size, other bytes: only a re-hash sees it
    store.put_bytes(key, bytes(data))
    store.delete(generated_key(RUN, "p2"))
    shallow = check_outputs(store, ms)
    assert shallow[("p1", "generate")] is None and shallow[("p2", "generate")].startswith("missing object")
    deep = check_outputs(store, ms, deep=True, workers=2)
    assert deep[("p1", "generate")] == f"sha256 mismatch for {key}"
    assert deep[("p0", "generate")] is None
