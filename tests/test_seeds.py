"""Corpus seeding finds planted clusters (real all-MiniLM-L6-v2 embeddings, FAISS k-means)."""

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from hare.cli.main import main
from hare.config import load_config
from hare.priors.seeds import CorpusError, load_corpus
from hare.tasks.plan import build_plan
from hare.priors.taxonomy import load_taxonomy
from tests.conftest import write_run_config

THEMES = {
    "baking": (["The baker", "My grandmother", "The pastry chef", "A home cook"],
               ["kneaded the bread dough", "whisked eggs and sugar for a sponge cake",
                "let the yeast dough rise overnight", "baked croissants with cold butter",
                "dusted the loaf with flour before the oven"]),
    "astronomy": (["The astronomer", "A telescope", "The space probe", "The observatory"],
                  ["measured the orbit of a distant exoplanet", "photographed a spiral galaxy",
                   "tracked a comet around the sun", "observed the rings of Saturn",
                   "recorded light from a supernova"]),
    "football": (["The striker", "The goalkeeper", "The coach", "The midfielder"],
                 ["scored a penalty in the final minute", "saved a header at the near post",
                  "planned a pressing tactic for the match", "passed the ball into the box",
                  "celebrated the league title with fans"]),
}


def planted_corpus(per_theme: int = 30) -> tuple[list[str], list[str]]:
    rng = random.Random(3)
    rows = []
    for theme, (subjects, verbs) in THEMES.items():
        for _ in range(per_theme):
            rows.append((f"{rng.choice(subjects)} {rng.choice(verbs)}, and then {rng.choice(verbs)}.", theme))
    rng.shuffle(rows)
    return [t for t, _ in rows], [th for _, th in rows]


def test_from_corpus_finds_planted_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, themes = planted_corpus()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"body": t}) for t in texts))
    out = tmp_path / "seeds.yaml"
    assert main(["seeds", "from-corpus", str(corpus), "--text-field", "body", "--clusters", "3",
                 "--out", str(out)]) == 0

    leaves = load_taxonomy(out)
    assert len(leaves) == 3
    by_text = dict(zip(texts, themes))
    for leaf in leaves:
        planted = Counter(by_text[s] for s in leaf.snippets)
        assert len(planted) == 1, f"snippets of {leaf.topic!r} mix themes: {planted}"
    # Each cluster is pure: its snippets come from one theme and the three themes are all found.
    found = {Counter(by_text[s] for s in leaf.snippets).most_common(1)[0][0] for leaf in leaves}
    assert found == set(THEMES)
    import yaml

    sizes = [t["size"] for t in yaml.safe_load(out.read_text())["domains"]["Corpus"]["Clusters"]]
    assert sizes == [30, 30, 30], "every planted theme is one whole cluster"
    assert "3 seed topics" in capsys.readouterr().out

    # The plan takes the seed file instead of the taxonomy.
    cfg = load_config(write_run_config(tmp_path, topics={"path": str(out)}))
    assert {p.split(" > ")[0] for p in build_plan(cfg).column("topic_path").to_pylist() if p} == {"Corpus"}


def test_corpus_errors_name_the_field_and_file(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl: line 2 has no field 'text'"):
        load_corpus(str(bad))
    with pytest.raises(CorpusError, match="corpus file not found"):
        load_corpus(str(tmp_path / "absent.parquet"))
    assert main(["seeds", "from-corpus", str(bad), "--out", str(tmp_path / "o.yaml")]) == 2


# --- streaming: a uniform sample of the corpus, memory bounded by the sample -----------------

def write_corpus(path: Path, n: int) -> Path:
    """n JSONL lines of distinct ~60-character texts (so a list of them costs ~100 bytes a line)."""
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"text": f"text number {i:07d} about the weather, the sea and the hills"}) + "\n")
    return path


def test_sample_is_seeded_exact_in_size_and_uniform(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", 1000)
    a = load_corpus(str(corpus), sample=100, seed=7)
    assert len(a.texts) == 100 and a.seen == 1000
    assert len(set(a.texts)) == 100, "no text drawn twice"
    assert load_corpus(str(corpus), sample=100, seed=7) == a, "same corpus and seed, same sample"
    assert load_corpus(str(corpus), sample=100, seed=8).texts != a.texts, "the seed draws the sample"
    numbers = [int(t.split()[2]) for t in a.texts]
    assert numbers == sorted(numbers), "the sample keeps corpus order"
    assert max(numbers) > 900 and min(numbers) < 100, "drawn from the whole corpus, not its head"

    # Uniform: over many seeds, each tenth of the corpus gets a tenth of the draws.
    from hare.priors.seeds import reservoir_sample

    tenths = Counter(x // 100 for seed in range(200) for x in reservoir_sample(range(1000), 50, seed)[0])
    assert all(abs(n - 1000) < 150 for n in tenths.values()), tenths


def test_small_corpus_is_taken_whole_and_limit_reads_the_head(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "one"}\n\n{"text": "  "}\n{"text": "two"}\n{"text": null}\n{"text": "three"}\n')
    got = load_corpus(str(corpus), sample=100)
    assert got.texts == ["one", "two", "three"] and got.seen == 3, "blank and non-string texts are skipped"
    assert load_corpus(str(corpus), limit=2, sample=100).texts == ["one", "two"]


def test_parquet_is_read_by_batch_and_sampled(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": [f"row {i}" for i in range(5000)], "n": list(range(5000))}), path,
                   row_group_size=500)
    got = load_corpus(str(path), text_field="body", sample=300, seed=1)
    assert len(got.texts) == 300 and got.seen == 5000 and len(set(got.texts)) == 300
    assert got == load_corpus(str(path), text_field="body", sample=300, seed=1)
    with pytest.raises(CorpusError, match=r"c\.parquet: no field 'text' \(fields: \['body', 'n'\]\)"):
        load_corpus(str(path))


def test_cli_sample_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, _ = planted_corpus(per_theme=40)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    out = tmp_path / "seeds.yaml"
    assert main(["seeds", "from-corpus", str(corpus), "--clusters", "3", "--sample", "60", "--out", str(out)]) == 0
    assert "60 texts (a sample of the 120 read) -> 3 seed topics" in capsys.readouterr().out
    import yaml

    assert sum(t["size"] for t in yaml.safe_load(out.read_text())["domains"]["Corpus"]["Clusters"]) == 60


def _peak_bytes_sampling(corpus: Path, sample: int) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        got = load_corpus(str(corpus), sample=sample)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got.texts) == sample
    return peak


def test_large_jsonl_corpus_is_never_held_in_memory(tmp_path: Path) -> None:
    """Sampling 1000 texts from 200k lines peaks like sampling them from 2k lines: the reader
    streams. Reading the corpus into a list (the code before streaming) holds ~200k x ~110 bytes
    (~20 MiB) at once and fails this."""
    small = _peak_bytes_sampling(write_corpus(tmp_path / "small.jsonl", 2_000), 1000)
    large = _peak_bytes_sampling(write_corpus(tmp_path / "large.jsonl", 200_000), 1000)
    assert large < 2 * small + (1 << 20), f"peak {large} bytes on 200k lines vs {small} on 2k"


def test_datasets_folder_is_streamed_and_sampled(tmp_path: Path) -> None:
    """A ``datasets`` name (here a local folder of JSONL) is read in streaming mode, sampled the same way."""
    folder = tmp_path / "ds"
    folder.mkdir()
    write_corpus(folder / "train.jsonl", 500)
    got = load_corpus(str(folder), sample=50, seed=3)
    assert len(got.texts) == 50 and got.seen == 500
    assert got.texts == load_corpus(str(write_corpus(tmp_path / "same.jsonl", 500)), sample=50, seed=3).texts
    with pytest.raises(CorpusError, match=r"dataset .*ds: no field 'body' \(fields: \['text'\]\)"):
        load_corpus(str(folder), text_field="body")
