"""The store's sharded dedup index: cross-run duplicates through bucket groups and inverted
lists, the earliest record kept whatever order the group tasks finish in, stable verdicts,
and index shards of another MinHash scheme refused (local folder and moto S3)."""

import json
import random

import numpy as np
import pytest

from hare.stages.dedup import index as dedup_index
from hare.config import DedupConfig
from hare.stages.dedup.layers import minhash_signatures
from hare.stages.dedup.index import (SchemeMismatch, band_objects, decide, features_table, load_quantizer, minhash_params,
                              publish_run)
from hare.store.layout import features_key, minhash_params_key, run_bands_key
from hare.store.schema import record_id
from hare.store import open_store
from hare.store.tables import to_parquet_bytes
from tests.test_dedup import BASE, EXACT, NEAR

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _stage(store, cfg: DedupConfig, run: str, parts: list[list[tuple[str, np.ndarray]]]) -> list[str]:
    """What a run's streamed features stage commits: features and band keys per partition."""
    params = minhash_params(store, cfg)
    pids = [f"p{i:05d}" for i in range(len(parts))]
    for pid, rows in zip(pids, parts):
        texts = [t for t, _ in rows]
        ids = [record_id(t) for t in texts]
        sigs = minhash_signatures(texts, cfg)
        vecs = np.stack([v for _, v in rows]) if rows else np.zeros((0, DIM), np.float32)
        objects = {features_key(run, pid): features_table(ids, sigs, vecs),
                   **band_objects(params, ids, sigs, lambda g: run_bands_key(run, g, pid))}
        for key, table in objects.items():
            store.put_bytes(key, to_parquet_bytes(table))
    return pids


def _publish(store, cfg: DedupConfig, run: str, pids: list[str], parts, verdicts) -> None:
    kept = {pid: {record_id(t) for row, (t, _) in enumerate(rows) if row not in verdicts[pid]}
            for pid, rows in zip(pids, parts)}
    publish_run(store, cfg, run, pids, lambda pid: kept[pid])


def _filler(rng: np.random.Generator, n: int) -> list[tuple[str, np.ndarray]]:
    """Unrelated records: distinct texts, random unit vectors."""
    return [(f"filler record {i} " + " ".join(f"w{rng.integers(1_000_000)}" for _ in range(12)),
             _unit(rng.normal(size=DIM))) for i in range(n)]


@pytest.fixture
def cfg() -> DedupConfig:
    return DedupConfig(flat_max=50, nprobe=4, semantic_threshold=0.95, index_groups=8)


def test_cross_run_duplicates_across_bucket_groups_and_inverted_lists(store_url: str, cfg: DedupConfig) -> None:
    store = open_store(store_url)
    rng = np.random.default_rng(0)
    old = _filler(rng, 1500) + [(BASE[0], _unit(rng.normal(size=DIM))), (BASE[1], _unit(rng.normal(size=DIM)))]
    old_parts = [old[i:i + 300] for i in range(0, len(old), 300)]
    pids = _stage(store, cfg, "old-run", old_parts)
    first = decide(store, cfg, "old-run", pids)
    assert sum(len(v) for v in first.verdicts.values()) == 0
    _publish(store, cfg, "old-run", pids, old_parts, first.verdicts)
    q = load_quantizer(store)
    assert q is not None and q.centroids.shape[0] > 8  # trained on the first run, many lists

    # A semantic copy whose home list is not its original's (it is found by probing).
    from hare.stages.dedup.layers import assign_lists

    vecs = np.stack([v for _, v in old[:1500]])
    home, _ = assign_lists(q.centroids, vecs, 1)
    copy = None
    for i in range(1500):
        second = assign_lists(q.centroids, vecs[i:i + 1], 2)[1][0, 1]
        for t in np.linspace(0.02, 0.3, 15):
            c = _unit(vecs[i] + t * (q.centroids[second] - q.centroids[home[i]]))
            if assign_lists(q.centroids, c[None], 1)[0][0] != home[i]:
                if float(c @ vecs[i]) >= 0.96:
                    copy = (i, c)
                break
        if copy:
            break
    assert copy is not None
    orig, cvec = copy

    # A near copy that shares only some of its bands with the original.
    params = minhash_params(store, cfg)
    a, b = minhash_signatures([BASE[1], NEAR], cfg)
    from hare.stages.dedup.minhash import band_keys

    shared = int((band_keys(a[None], params.bands, params.rows) == band_keys(b[None], params.bands, params.rows)).sum())
    assert 0 < shared < params.bands

    new = _filler(rng, 40) + [(EXACT, _unit(rng.normal(size=DIM))), (NEAR, _unit(rng.normal(size=DIM))),
                              ("a semantic copy in words of its own " + "x" * 5, cvec)]
    new_parts = [new[:20], new[20:]]
    new_pids = _stage(store, cfg, "new-run", new_parts)
    decision = decide(store, cfg, "new-run", new_pids)
    found = {(d.layer, of_id, of_run) for v in decision.verdicts.values() for d, of_id, of_run in v.values()}
    assert found == {("exact", record_id(BASE[0]), "old-run"), ("near", record_id(BASE[1]), "old-run"),
                     ("semantic", record_id(old[orig][0]), "old-run")}
    assert decision.prior_records == len(old)


def test_earliest_record_kept_whatever_order_tasks_finish(store_url: str, cfg: DedupConfig, monkeypatch) -> None:
    store = open_store(store_url)
    rng = np.random.default_rng(1)
    vec = _unit(rng.normal(size=DIM))
    parts = [_filler(rng, 5) + [(BASE[2], vec)] for _ in range(4)]  # one text in every partition
    pids = _stage(store, cfg, "run", parts)
    in_order = decide(store, cfg, "run", pids)

    def shuffled_map(fn, items, num_cpus=1):
        order = list(range(len(items)))
        random.Random(7).shuffle(order)
        return [fn(items[i]) for i in order]  # run, and hand back, in another order

    monkeypatch.setattr(dedup_index, "parallel_map", shuffled_map)
    shuffled = decide(store, cfg, "run", pids)
    assert shuffled.verdicts == in_order.verdicts
    assert in_order.verdicts["p00000"] == {}
    for pid in pids[1:]:
        ((row, (d, of_id, of_run)),) = in_order.verdicts[pid].items()
        assert (row, d.layer, of_id, of_run) == (5, "exact", record_id(BASE[2]), "run")


def test_dedup_again_gives_the_same_verdicts(store_url: str, cfg: DedupConfig) -> None:
    store = open_store(store_url)
    rng = np.random.default_rng(2)
    parts = [_filler(rng, 10) + [(BASE[1], _unit(rng.normal(size=DIM)))], [(NEAR, _unit(rng.normal(size=DIM)))]]
    pids = _stage(store, cfg, "run", parts)
    once, again = decide(store, cfg, "run", pids), decide(store, cfg, "run", pids)
    assert once.verdicts == again.verdicts and once.verdicts["p00001"][0][0].layer == "near"


def test_index_of_another_minhash_scheme_is_refused(tmp_path, cfg: DedupConfig) -> None:
    store = open_store(str(tmp_path / "store"))
    store.put_bytes(minhash_params_key(), json.dumps({
        "scheme": "rensa0.4.0-a1/splitmix64-v1", "num_perm": 128, "shingle_words": 5, "bands": 18, "rows": 7,
        "groups": 8}).encode())
    with pytest.raises(SchemeMismatch, match=r"rensa0\.4\.0-a1/splitmix64-v1.*this hare uses rensa"):
        minhash_params(store, cfg)


def test_index_written_before_schemes_were_versioned_is_refused(tmp_path, cfg: DedupConfig) -> None:
    import pyarrow as pa

    store = open_store(str(tmp_path / "store"))
    store.put_bytes("index/runs/old/p00000.parquet", to_parquet_bytes(pa.table({"id": ["a" * 32]})))
    pids = _stage(store, cfg, "new", [[(BASE[0], np.ones(DIM, np.float32) / DIM ** 0.5)]])
    with pytest.raises(SchemeMismatch, match=r"index/runs/old/ was written by MinHash scheme unknown"):
        decide(store, cfg, "new", pids)


def test_two_runs_started_together_never_publish_the_same_text_twice(moto_endpoint: str, cfg: DedupConfig) -> None:
    """Two runs with overlapping texts decide and publish at the same moment into one S3
    store: the index lease makes the second decide against what the first published."""
    import threading
    import time

    from hare.stages.dedup.index import hold_index, published_partitions, split_features
    from hare.store.layout import published_index_key
    from tests.conftest import new_bucket

    store = open_store(f"s3://{new_bucket()}/shared")
    rng = np.random.default_rng(3)
    shared = [(t, _unit(rng.normal(size=DIM))) for t in BASE]
    runs = {"run-a": [shared[:5] + _filler(rng, 5), shared[5:]], "run-b": [shared[3:] + _filler(rng, 4)]}
    staged = {run: _stage(store, cfg, run, parts) for run, parts in runs.items()}
    inside = []

    def tail(run: str) -> None:
        with hold_index(store, run, poll_s=0.2):
            inside.append((run, "in", time.monotonic()))
            decision = decide(store, cfg, run, staged[run])
            time.sleep(1.0)  # a slow diversity/publish: the other run would decide meanwhile
            _publish(store, cfg, run, staged[run], runs[run], decision.verdicts)
            inside.append((run, "out", time.monotonic()))

    threads = [threading.Thread(target=tail, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published = [i for run in runs for pid in published_partitions(store, run)
                 for i in split_features(from_parquet(store, published_index_key(run, pid)))[0]]
    assert len(published) == len(set(published)) == len(BASE) + 9
    assert [step for _, step, _ in inside] == ["in", "out", "in", "out"], "one run at a time holds the index"


def from_parquet(store, key):
    from hare.store.tables import from_parquet_bytes

    return from_parquet_bytes(store.get_bytes(key), key)


def test_retrain_moves_every_published_vector_to_a_new_version(tmp_path, cfg: DedupConfig, capsys) -> None:
    from hare.cli.main import main
    from hare.store.layout import ivf_lineage_key

    store = open_store(str(tmp_path / "store"))
    rng = np.random.default_rng(4)
    parts = [_filler(rng, 400), _filler(rng, 400)]
    pids = _stage(store, cfg, "old", parts)
    _publish(store, cfg, "old", pids, parts, decide(store, cfg, "old", pids).verdicts)
    assert load_quantizer(store).version == "v1"

    assert main(["index", "retrain", "--store", str(tmp_path / "store"), "--nlist", "12"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["version"], summary["nlist"], summary["replaces"], summary["reassigned"]) == ("v2", 12, "v1", 800)
    q = load_quantizer(store)
    assert q.version == "v2" and q.centroids.shape[0] == 12
    assert sum(1 for k in store.list("index/ivf/v2/") if k.endswith(".parquet")) >= 2
    event = json.loads(store.get_bytes(ivf_lineage_key("v2")))
    assert event["job"]["name"] == "index.retrain" and event["eventType"] == "COMPLETE"

    copy_of = parts[1][7][1]
    new = [("a semantic copy, worded anew", _unit(copy_of + rng.normal(scale=0.01, size=DIM)))]
    new_pids = _stage(store, cfg, "new", [new])
    ((_, (d, of_id, of_run)),) = decide(store, cfg, "new", new_pids).verdicts["p00000"].items()
    assert (d.layer, of_id, of_run) == ("semantic", record_id(parts[1][7][0]), "old")


def test_a_corrupt_index_shard_is_quarantined_and_dedup_goes_on(store_url: str, cfg: DedupConfig) -> None:
    from hare.store.layout import index_bands_prefix, published_index_key
    from hare.store.quarantine import list_quarantined

    store = open_store(store_url)
    rng = np.random.default_rng(6)
    parts = [[(BASE[0], _unit(rng.normal(size=DIM)))] + _filler(rng, 5), [(BASE[1], _unit(rng.normal(size=DIM)))]]
    pids = _stage(store, cfg, "old", parts)
    _publish(store, cfg, "old", pids, parts, decide(store, cfg, "old", pids).verdicts)
    bad_bands = next(k for g in range(cfg.index_groups) for k in store.list(index_bands_prefix(g)) if k.endswith("p00001.parquet"))
    store.put_bytes(bad_bands, b"not parquet at all")
    store.put_bytes(published_index_key("old", "p00000"), b"PAR1 torn")

    new_pids = _stage(store, cfg, "new", [[(EXACT, _unit(rng.normal(size=DIM))), (NEAR, _unit(rng.normal(size=DIM)))]])
    decision = decide(store, cfg, "new", new_pids)  # goes on: what the corrupt shards held is left out
    # the exact copy's original lived in the corrupt features shard: not matched; the near copy's
    # original still shares keys in the other bucket groups
    ((row, (d, of_id, of_run)),) = decision.verdicts["p00000"].items()
    assert (row, d.layer, of_id, of_run) == (1, "near", record_id(BASE[1]), "old")
    moved = {q["key"] for q in list_quarantined(store)}
    assert {bad_bands, published_index_key("old", "p00000")} <= moved
    assert not store.exists(bad_bands)


def test_a_corrupt_index_shard_is_rebuilt_from_its_run(tmp_path, cfg: DedupConfig) -> None:
    import pyarrow as pa

    from hare.store.layout import published_index_key, records_key
    from hare.store.quarantine import list_quarantined

    store = open_store(str(tmp_path / "store"))
    rng = np.random.default_rng(7)
    parts = [[(BASE[0], _unit(rng.normal(size=DIM)))] + _filler(rng, 5)]
    pids = _stage(store, cfg, "old", parts)
    _publish(store, cfg, "old", pids, parts, decide(store, cfg, "old", pids).verdicts)
    kept = pa.table({"id": [record_id(t) for t, _ in parts[0]], "text": [t for t, _ in parts[0]]})
    store.put_bytes(records_key("old", "p00000", "dedup"), to_parquet_bytes(kept))  # what its dedup stage kept
    store.put_bytes(published_index_key("old", "p00000"), b"torn")

    new_pids = _stage(store, cfg, "new", [[(EXACT, _unit(rng.normal(size=DIM)))]])
    ((_, (d, of_id, of_run)),) = decide(store, cfg, "new", new_pids).verdicts["p00000"].items()
    assert (d.layer, of_id, of_run) == ("exact", record_id(BASE[0]), "old")  # matched through the rebuilt shard
    assert published_index_key("old", "p00000") in {q["key"] for q in list_quarantined(store)}
    assert len(from_parquet(store, published_index_key("old", "p00000"))) == 6
