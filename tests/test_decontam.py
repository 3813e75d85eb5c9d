"""Decontamination against the real GSM8K test split (shipped in data/benchmarks)."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from hare.benchmarks import BenchmarkError, load_benchmark
from hare.config import BenchmarkConfig, ConfigError, DecontamConfig, load_config
from hare.decontam import Decontaminator, NgramIndex, tokens
from hare.embed import embed
from hare.schema import RECORD_SCHEMA
from hare.tasks.decontam import contamination_report, decontaminate_table
from tests.conftest import ROOT, write_run_config

GSM8K = ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl"
CLEAN = [
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen. "
    "The green pigment chlorophyll captures the light inside the chloroplasts.",
    "To add two fractions, rewrite them over a common denominator, add the numerators and "
    "simplify the result if you can.",
    "A budget lists monthly income and spending. Maria earns 2,400 dollars a month and spends "
    "900 on rent; she wants to save a fifth of the rest. How much does she save? Final answer: 300",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\nThis function adds the numbers and divides by how many there are.",
]


@pytest.fixture(scope="module")
def items():
    return load_benchmark(BenchmarkConfig(name="gsm8k", source=str(GSM8K)))


@pytest.fixture(scope="module")
def dec(items):
    return Decontaminator(DecontamConfig(), items, embed)


def small_edit(text: str, rng: random.Random) -> str:
    """A few word-level edits: a dropped word, a swapped word, changed punctuation."""
    words = text.split()
    i = rng.randrange(len(words))
    words[i] = {"a": "one", "the": "this"}.get(words[i].lower(), words[i] + "s")
    del words[rng.randrange(len(words))]
    return " ".join(words).replace(".", ";", 1)


def test_benchmark_loads(items) -> None:
    assert len(items) == 1319
    assert items[0].question.startswith("Janet") and "#### 18" in items[0].texts[1]


def test_verbatim_and_edited_plants_are_caught(dec, items) -> None:
    rng = random.Random(0)
    picked = rng.sample(items, 20)
    verbatim = [f"Here is a practice problem. {it.question}\n{it.texts[1]}" for it in picked]
    edited = [f"Try this one: {small_edit(it.question, rng)}" for it in picked]
    for texts, kind in ((verbatim, "textbook"), (edited, "math_word_problem")):
        matches = dec.check(texts, [kind] * len(texts))
        assert [m.item_id if m else None for m in matches] == [it.item_id for it in picked]
    # Verbatim plants are caught by n-grams alone.
    assert all(dec.check_ngrams(t, "textbook") for t in verbatim)


def test_reworded_plant_is_caught_by_paraphrase(dec) -> None:
    reworded = ("Janet has ducks that produce 16 eggs daily. Each morning she eats 3 of them and uses 4 "
                "more baking muffins for friends. The rest she sells at the market at $2 apiece. "
                "How many dollars does she earn per day?")
    (m,) = dec.check([reworded], ["math_word_problem"])
    assert m is not None and m.item_id == "0" and m.method == "paraphrase"


def test_clean_text_passes(dec) -> None:
    assert dec.check(CLEAN, ["explanation", "explanation", "math_word_problem", "code"]) == [None] * len(CLEAN)


def test_question_alone_counts_as_the_item() -> None:
    from hare.benchmarks import BenchmarkItem

    item = BenchmarkItem("b", "7", ("one two three four five six seven eight nine ten", "a b c d e f g h i j k l"))
    index = NgramIndex([item], 8)
    assert index.best(tokens("intro one two three four five six seven eight nine ten outro")) == (0, 1.0)


def test_table_stage_and_report(dec, items) -> None:
    base = {f: "" for f in RECORD_SCHEMA.names}
    rows = [{**base, "created_at": None, "prompt_tokens": 0, "output_tokens": 0, "template_version": 1,
             "prompt_index": i, "id": str(i), "text": t, "kind": "math_word_problem"}
            for i, t in enumerate([CLEAN[0], items[5].question, CLEAN[1]])]
    kept, rejects = decontaminate_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), dec)
    assert kept.column("id").to_pylist() == ["0", "2"]
    (r,) = rejects.to_pylist()
    assert (r["benchmark"], r["benchmark_item"], r["match_method"], r["reject_stage"]) == ("gsm8k", "5", "ngram", "decontam")
    report = contamination_report([rejects], 3)
    assert report["records_dropped"] == 1 and report["benchmarks"]["gsm8k"]["items"] == ["5"]


def test_benchmark_errors_name_it(tmp_path: Path) -> None:
    wrong = tmp_path / "b.jsonl"
    wrong.write_text(json.dumps({"prompt": "x", "target": "y"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"benchmark 'mine' .*none of the fields \['question', 'answer'\] found \(fields: \['prompt', 'target'\]\)"):
        load_benchmark(BenchmarkConfig(name="mine", source=str(wrong)))
    with pytest.raises(BenchmarkError, match=r"benchmark 'gone' .*file not found"):
        load_benchmark(BenchmarkConfig(name="gone", source=str(tmp_path / "nope.jsonl")))


def test_benchmark_from_s3(moto_endpoint: str) -> None:
    import boto3

    from tests.conftest import new_bucket

    bucket = new_bucket()
    boto3.client("s3").put_object(Bucket=bucket, Key="bench/gsm8k.jsonl", Body="".join(GSM8K.read_text().splitlines(True)[:5]))
    got = load_benchmark(BenchmarkConfig(name="g", source=f"s3://{bucket}/bench/gsm8k.jsonl"))
    assert got[0].question.startswith("Janet")


def test_config_resolves_and_validates_benchmarks(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path, decontamination={
        "benchmarks": [{"name": "g", "source": str(GSM8K)}], "ngram_short": 6}))
    from hare.tasks.stages import records_source, stage_names

    assert records_source(cfg, "publish") == "decontam" and cfg.decontamination.ngram_short == 6
    assert stage_names(cfg) == ["generate", "decontam"]  # quality and dedup are off in the test config
    with pytest.raises(ConfigError, match=r"decontamination\.overlap_threshold"):
        load_config(write_run_config(tmp_path, decontamination={"overlap_threshold": 2}))


def test_a_partition_that_quality_emptied_passes_through(dec) -> None:
    """Zero records in: zero kept, zero rejects, no error (a type-less empty mask once failed)."""
    kept, rejects = decontaminate_table(RECORD_SCHEMA.empty_table(), dec)
    assert kept.num_rows == 0 and rejects.num_rows == 0
