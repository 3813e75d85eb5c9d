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
