"""`hare verify RUN`: re-hashes every committed object and dataset shard (both store backends)."""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pytest

from hare.store.layout import dataset_manifest_key, dataset_shard_key, generated_key, rejects_key, run_json
from hare.store.manifest import OutputRef, commit_partition, record_failure
from hare.run.status import partition_rows
from hare.store import ObjectStore, open_store
from hare.store.tables import to_parquet_bytes
from hare.run.verify import register

RUN = "r-verify"


def _verify(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hare")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["verify", *argv])
    return args.fn(args)


def _run(store: ObjectStore) -> None:
    """A published run: 3 partitions (one with a rejects object), one failed stage, 2 shards."""
    pids = ["p00000", "p00001", "p00002"]
    store.put_bytes(run_json(RUN), json.dumps({"status": "succeeded", "partitions": pids}).encode())
    for i, pid in enumerate(pids):
        tables = {generated_key(RUN, pid): pa.table({"id": [f"{pid}-{j}" for j in range(5)]})}
        if i == 0:
            tables[rejects_key(RUN, "generate", pid)] = pa.table({"id": ["x"]})
        commit_partition(store, RUN, pid, "generate", tables, {"records": 5}, 1)
    record_failure(store, RUN, "p00002", "quality", "boom", 1)
    shards = []
    for s in range(2):
        data = to_parquet_bytes(pa.table({"id": [f"s{s}-{j}" for j in range(4)]}))
        key = dataset_shard_key(RUN, s)
        shards.append(OutputRef(key, store.put_bytes(key, data), len(data), 4).__dict__)
    store.put_bytes(dataset_manifest_key(RUN), json.dumps({"run_id": RUN, "shards": shards}).encode())


def _flip_a_byte(store: ObjectStore, key: str) -> None:
    data = bytearray(store.get_bytes(key))
    data[len(data) // 2] ^= 0x01  # same size: invisible to status's HEAD check
    store.put_bytes(key, bytes(data))


def test_verify_passes_a_clean_run(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(store_url)
    _run(store)
    assert _verify(RUN, "--store", store_url) == 0
    out = capsys.readouterr().out
    assert "6 objects" in out and "3 committed manifests, 2 dataset shards, 1 uncommitted" in out
    assert "all objects match their sha256" in out


def test_verify_finds_an_altered_object_and_shard(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(store_url)
    _run(store)
    _flip_a_byte(store, generated_key(RUN, "p00001"))
    _flip_a_byte(store, dataset_shard_key(RUN, 1))
    assert all(r["status"] == "committed" for r in partition_rows(store, RUN))  # status cannot see it
    assert _verify(RUN, "--store", store_url, "--workers", "4") == 3
    out = capsys.readouterr().out
    assert "2 problem(s):" in out
    assert f"  sha256 mismatch for {generated_key(RUN, 'p00001')}\n" in out
    assert f"  sha256 mismatch for {dataset_shard_key(RUN, 1)}\n" in out
    assert f"hare rerun {RUN}" in out


def test_verify_finds_missing_objects_and_unreadable_manifests(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    url = f"file://{tmp_path}"
    store = open_store(url)
    _run(store)
    store.delete(rejects_key(RUN, "generate", "p00000"))
    store.put_bytes(f"runs/{RUN}/partitions/p00002.json", b"{oops")
    store.delete(dataset_manifest_key(RUN))
    assert _verify(RUN, "--store", url) == 3
    out = capsys.readouterr().out
    assert "missing object" in out and "unreadable manifest" in out
    assert "run.json says succeeded but no dataset manifest" in out


def test_verify_of_an_unknown_run_is_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    from hare.store.runs import RunError

    with pytest.raises(RunError, match="no run 'nope'"):
        _verify("nope", "--store", str(tmp_path))
