"""The three dedup layers in memory on planted duplicates (real MiniLM embeddings), stored features."""

import numpy as np
import pyarrow as pa

from hare.config import DedupConfig
from hare.stages.dedup.layers import find_duplicates, minhash_signatures
from hare.engines.embed import embed
from hare.store.schema import record_id
from hare.store import open_store
from hare.store.tables import from_parquet_bytes

BASE = [
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen inside their leaves.",
    "To add two fractions, rewrite them over a common denominator, add the numerators and keep the "
    "denominator, then simplify the result by dividing the top and the bottom by their greatest common "
    "factor. For example, one half plus one third becomes three sixths plus two sixths, which is five "
    "sixths, and five sixths cannot be simplified any further.",
    "A contract needs an offer, an acceptance and something of value exchanged between the two parties.",
    "The Roman Republic became an empire when Augustus took sole power in 27 BC after years of civil war.",
    "Binary search halves a sorted list at every step, so it finds an item in logarithmic time.",
    "Knead the bread dough for ten minutes, then let it rise in a warm place until it doubles in size.",
    "Earthquakes happen when tectonic plates slip suddenly along a fault and release stored energy as waves.",
    "A budget lists monthly income and spending so that you can see where money goes and plan savings.",
]
EXACT = "  photosynthesis LETS plants turn sunlight, water and carbon dioxide into sugar and oxygen inside their leaves."
NEAR = BASE[1].replace("any further.", "any further at all!")  # a small edit at the end
PARAPHRASE = "Binary search cuts a sorted list in half each step, which lets it locate an item in logarithmic time."


def _run(texts):
    cfg = DedupConfig()
    return find_duplicates([record_id(t) for t in texts], minhash_signatures(texts, cfg), embed(texts), cfg)


def test_layers_catch_planted_duplicates_and_name_the_original() -> None:
    texts = BASE + [EXACT, NEAR, PARAPHRASE]
    dups = _run(texts)
    assert {i: (d.layer, d.of) for i, d in dups.items()} == {8: ("exact", 0), 9: ("near", 1), 10: ("semantic", 4)}


def test_no_false_merges_on_different_texts() -> None:
    assert _run(BASE) == {}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_inverted_lists_above_flat_max_find_planted_pairs() -> None:
    rng = np.random.default_rng(0)
    vecs = _unit(rng.normal(size=(4000, 64)))
    planted = rng.choice(3000, size=50, replace=False)
    allv = np.vstack([vecs, _unit(vecs[planted] + rng.normal(scale=0.01, size=(50, 64)))])
    cfg = DedupConfig(exact=False, near=False, flat_max=1000, nprobe=16, semantic_threshold=0.95)
    dups = find_duplicates([f"{i:032x}" for i in range(len(allv))], None, allv, cfg)
    found = {i: d.of for i, d in dups.items()}
    assert sum(found.get(4000 + k) == int(p) for k, p in enumerate(planted)) >= 48  # recall >= 0.96
    assert all(i >= 4000 for i in found)  # random vectors never merge


def test_a_cluster_larger_than_any_neighbour_count_hides_no_copy() -> None:
    """40 copies of one vector: each later copy is dropped, all as copies of the first."""
    rng = np.random.default_rng(1)
    base = _unit(rng.normal(size=(1, 32)))
    vecs = _unit(np.repeat(base, 40, axis=0) + rng.normal(scale=1e-3, size=(40, 32)))
    dups = find_duplicates([f"{i:032x}" for i in range(40)], None, vecs, DedupConfig(exact=False, near=False))
    assert sorted(dups) == list(range(1, 40)) and {d.of for d in dups.values()} == {0}


def test_near_clusters_keep_the_earliest_record() -> None:
    """B is a near copy of A and C of B: both go, each naming A, the cluster's first record."""
    words = BASE[1].split()
    a = " ".join(words)
    b = " ".join(words[:-2] + ["further", "indeed."])
    c = " ".join(words[:-2] + ["further", "indeed", "today."])
    cfg = DedupConfig(semantic=False)
    texts = [a, BASE[0], b, c]
    dups = find_duplicates([record_id(t) for t in texts], minhash_signatures(texts, cfg), None, cfg)
    assert {i: (d.layer, d.of) for i, d in dups.items()} == {2: ("near", 0), 3: ("near", 0)}


def test_features_are_computed_once_and_stored(tmp_path, monkeypatch) -> None:
    """The streamed features stage commits signatures and embeddings once; a re-run reads the commit."""
    from hare.config import RunConfig
    from hare.stages.base import run_record_stage
    from hare.store.manifest import commit_partition
    from hare.tasks import features as features_mod
    from hare.tasks.features import Features, split_features

    store = open_store(str(tmp_path / "store"))
    cfg = RunConfig(name="t", plan={"partitions": 1, "prompts_per_partition": 3})
    table = pa.table({"id": [record_id(t) for t in BASE[:3]], "text": BASE[:3]})
    # the decontam commit of an earlier run, under the folder it then had (still read: layout.records_keys)
    commit_partition(store, "r", "p00000", "decontam", {"runs/r/decontaminated/p00000.parquet": table}, {}, 1)
    stats = run_record_stage(store, cfg, "r", "p00000", Features(), "decontam")
    assert (stats["checked"], stats["kept"], stats["rejected"]) == (3, 3, 0) and stats["aggregate"] == {"embedded": 3}
    ids, sigs, vecs = split_features(from_parquet_bytes(store.get_bytes("runs/r/features/p00000.parquet")))
    assert ids == table.column("id").to_pylist() and sigs.shape == (3, 128) and vecs.shape == (3, 384)
    assert np.allclose(vecs, embed(BASE[:3]), atol=1e-5)

    def no_embedding(_run_id):
        raise AssertionError("embeddings must be read back, not recomputed")

    monkeypatch.setattr(features_mod, "pool_embed", no_embedding)
    assert run_record_stage(store, cfg, "r", "p00000", Features(), "decontam") == stats


def test_dedup_cli_on_any_parquet(tmp_path, capsys) -> None:
    import pyarrow.parquet as pq

    from hare.cli.main import main

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": BASE + [EXACT, NEAR, PARAPHRASE]}), src)
    assert main(["dedup", str(src), "--out", str(tmp_path / "out.parquet")]) == 0
    assert pq.read_table(tmp_path / "out.parquet").column("text").to_pylist() == BASE
    reasons = pq.read_table(tmp_path / "out.rejects.parquet").column("reject_reason").to_pylist()
    assert reasons == ["duplicate:exact", "duplicate:near", "duplicate:semantic"]
    assert '"kept": 8' in capsys.readouterr().out
