"""Decontamination against the real GSM8K test split (shipped in data/benchmarks)."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest

from hare.stages.decontam.benchmarks import BenchmarkError, load_benchmark
from hare.config import BenchmarkConfig, ConfigError, DecontamConfig, load_config
from hare.stages.decontam.ngram import Decontaminator, NgramIndex, tokens
from hare.engines.embed import embed
from hare.store.schema import RECORD_SCHEMA
from hare.tasks.decontam import decontam_report, decontaminate_table
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
    from hare.stages.decontam.benchmarks import BenchmarkItem

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
    report = decontam_report(kept, rejects)
    assert (report["checked"], report["kept"], report["rejected"]) == (3, 2, 1)
    assert report["reject_reasons"] == {"contaminated:ngram:gsm8k": 1} and report["benchmarks"]["gsm8k"]["items"] == ["5"]


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

    assert records_source(cfg, "publish") == "decontam" and cfg.decontam.ngram_short == 6
    assert stage_names(cfg) == ["generate", "decontam"]  # quality and dedup are off in the test config
    with pytest.raises(ConfigError, match=r"decontamination\.overlap_threshold"):
        load_config(write_run_config(tmp_path, decontamination={"overlap_threshold": 2}))


def test_a_partition_that_quality_emptied_passes_through(dec) -> None:
    """Zero records in: zero kept, zero rejects, no error (a type-less empty mask once failed)."""
    kept, rejects = decontaminate_table(RECORD_SCHEMA.empty_table(), dec)
    assert kept.num_rows == 0 and rejects.num_rows == 0


# --- issue 16: N per benchmark, short items, the candidate filter, the stage on a partition ---

TRUTHFULQA = ROOT / "data" / "benchmarks" / "truthfulqa_bigbench.jsonl"
TQ_SPEC = BenchmarkConfig(name="truthfulqa", source=str(TRUTHFULQA), fields=["question", "best_answer"])
GSM_SPEC = BenchmarkConfig(name="gsm8k", source=str(GSM8K))
HOST = ("The river valley was settled slowly over many centuries, first by herders who moved with the "
        "seasons and later by farmers who built terraces on the lower slopes. Each village kept a granary "
        "and a small market, and the roads between them followed the line of the water. Traders carried "
        "salt, cloth and iron tools up from the coast, and brought back wool and cheese. In the long winters "
        "families repaired their tools, told stories by the fire and prepared the seed for spring. The "
        "records of the old monastery describe floods, good harvests and bad ones, and the slow growth of "
        "the towns along the river until the railway arrived and changed the valley for good.")


class CountingEmbed:
    """The real embedder, counting calls and texts (the candidate filter is judged by them)."""

    def __init__(self) -> None:
        self.calls, self.texts = 0, 0

    def __call__(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return embed(texts)


@pytest.fixture(scope="module")
def both_items(items):
    return items + load_benchmark(TQ_SPEC)


def middle(host: str, leak: str) -> str:
    words = host.split()
    return " ".join(words[:len(words) // 2]) + "\n\n" + leak + "\n\n" + " ".join(words[len(words) // 2:])


def test_n_follows_each_benchmarks_items(both_items) -> None:
    from hare.stages.decontam.benchmarks import BenchmarkItem
    from hare.stages.decontam.ngram import percentile_n

    dec = Decontaminator(DecontamConfig(paraphrase=False), both_items, None)
    assert dec.n_by_benchmark == {"gsm8k": 13, "truthfulqa": 11}  # GPT-3's rule, 5th percentile
    cfg = DecontamConfig()
    assert percentile_n([3] * 10, cfg) == 8 and percentile_n([40] * 10, cfg) == 13  # clamped 8..13
    assert percentile_n(list(range(1, 101)), cfg) == 8 and percentile_n(list(range(10, 110)), cfg) == 13
    assert percentile_n([9] * 5 + [30] * 95, cfg) == 9
    # The per-kind settings still override it: 12-word items give N 12, so 10 words of one are no
    # 12-gram; with N 8 for a kind, the same 10 words hold 3 of its 5 8-grams.
    twelve = [BenchmarkItem("s", str(i), (" ".join(f"w{i}x{k}" for k in range(12)),)) for i in range(20)]
    leak = "intro " + " ".join(f"w3x{k}" for k in range(1, 11)) + " outro"
    over = Decontaminator(DecontamConfig(paraphrase=False, n_by_kind={"code": 8}), twelve, None)
    assert over.n_by_benchmark == {"s": 12} and over.n_for("code") == 8 and over.n_for("textbook") is None
    assert over.check_ngrams(leak, "textbook") is None
    m = over.check_ngrams(leak, "code")
    assert m is not None and m.item_id == "3" and m.score == 0.6
    old_style = Decontaminator(DecontamConfig(paraphrase=False, ngram_long=13, ngram_short=8), twelve, None)
    assert old_style.n_for("textbook") == 13 and old_style.n_for("math_word_problem") == 8


def test_short_items_are_caught_inside_long_records(both_items) -> None:
    """An 11-to-20-word QA item planted verbatim in a 150-word record: the n-grams alone catch it,
    whole or question only (N 13 for long-text kinds missed these, issue 16)."""
    dec = Decontaminator(DecontamConfig(paraphrase=False), both_items, None)
    tq = [it for it in both_items if it.benchmark == "truthfulqa"]
    picked = random.Random(3).sample(tq, 40)
    for it in picked:
        m = dec.check_ngrams(middle(HOST, "\n".join(it.texts)), "textbook")
        assert m is not None and (m.benchmark, m.item_id) == ("truthfulqa", it.item_id), it
    long_questions = [it for it in picked if len(tokens(it.question)) >= 8]
    assert len(long_questions) > 20
    for it in long_questions:
        m = dec.check_ngrams(middle(HOST, it.question), "explanation")
        assert m is not None and m.item_id == it.item_id, it
    assert dec.check_ngrams(HOST, "textbook") is None


def test_one_word_changed_in_the_middle_of_a_short_item_is_caught_near_verbatim(both_items) -> None:
    """A short QA item with its middle word replaced, dropped or doubled keeps none of its 11-grams
    (every gram covers the middle); the near-verbatim match finds it, and a sequence with two
    words changed, or a clean text, is not taken for it."""
    dec = Decontaminator(DecontamConfig(paraphrase=False), both_items, None)
    off = Decontaminator(DecontamConfig(paraphrase=False, near_verbatim=False), both_items, None)
    tq = [it for it in both_items if it.benchmark == "truthfulqa" and len(tokens("\n".join(it.texts))) >= 16]
    caught = 0
    for it in random.Random(5).sample(tq, 30):
        words = "\n".join(it.texts).split()
        mid = len(words) // 2
        for edited in (words[:mid] + ["zorbled"] + words[mid + 1:], words[:mid] + words[mid + 1:],
                       words[:mid] + ["very", words[mid]] + words[mid + 1:]):
            toks = tokens(middle(HOST, " ".join(edited)))
            m = dec.check_near_verbatim(toks)
            assert m is not None and (m.benchmark, m.item_id, m.method) == ("truthfulqa", it.item_id, "near_verbatim")
            assert 0.9 <= m.score <= 1
            caught += off.check_ngrams(" ".join(toks), "textbook") is None
        every_fourth = [w if k % 4 != 2 else "zorbled" for k, w in enumerate(words)]  # 2+ edits in any 10 words
        assert dec.check_near_verbatim(tokens(middle(HOST, " ".join(every_fourth)))) is None
    assert caught >= 10, "edits the n-grams miss (the other field too short to count alone): found near-verbatim"
    assert dec.check_near_verbatim(tokens(HOST)) is None
    assert off.check_near_verbatim(tokens(middle(HOST, "\n".join(tq[0].texts)))) is None


def test_tokens_fast_path_matches_the_regular_expression() -> None:
    import re
    import unicodedata

    def reference(text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        text = re.sub(r"(?<=\d),(?=\d{3})", "", re.sub(r"<<[^>]*>>", " ", text))
        return re.findall(r"[a-z0-9]+", text)

    samples = ["Ｆｕｌｌ，width １，０００ and ﬁne café naïve — “quoted” 1,000,000 <<3*4=12>>12 Straße",
               "He paid $1,250.50 (x,123; 3,14) for it!", HOST, CLEAN[2], CLEAN[3], ""]
    for s in samples:
        assert tokens(s) == reference(s), s


def test_no_rare_shared_word_no_embedding(both_items) -> None:
    """The candidate filter: clean records are never embedded; a reworded leak is, with only its
    candidate windows, and is found."""
    from hare.stages.decontam.paraphrase import ParaphraseSearch

    counter = CountingEmbed()
    search = ParaphraseSearch(DecontamConfig(), both_items, counter)
    search._item_vectors()  # benchmark embeddings (cached per machine) are not the records'
    counter.calls = counter.texts = 0
    clean = [HOST, *CLEAN, "What time is it? Time to go home, said the man, and he walked out into the night."]
    assert search.search(clean) == [None] * len(clean)
    assert counter.calls == 0 and search.windows_embedded == 0
    reworded = ("If you swallow the seeds of a watermelon, what happens to you? "
                "They simply travel through the digestive system.")
    text = middle(HOST, reworded)
    (found,) = search.search([text])
    assert found is not None and search.items[found[0]].item_id == "0" and search.items[found[0]].benchmark == "truthfulqa"
    assert counter.calls >= 1 and 0 < counter.texts <= 4 < len(text.split()) // 10


def test_stage_on_a_partition_drops_leaks_of_both_benchmarks(items) -> None:
    """The decontam stage as the flow runs it on one partition (no Ray actors: embeds in-process)."""
    from hare.config import RunConfig, load_config
    from hare.tasks.decontam import Decontam

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert [b.name for b in cfg.decontam.benchmarks] == ["gsm8k", "truthfulqa"]
    tq = load_benchmark(TQ_SPEC)
    texts = {
        "clean": HOST,
        "tq-verbatim": middle(HOST, "\n".join(tq[7].texts)),
        "gsm-reworded": ("Janet has ducks that produce 16 eggs daily. Each morning she eats 3 of them and uses 4 "
                         "more baking muffins for friends. The rest she sells at the market at $2 apiece. "
                         "How many dollars does she earn per day?"),
        "tq-reworded": middle(HOST, "Which part of a chili pepper is the hottest? The placenta is the hottest part."),
    }
    base = {f: "" for f in RECORD_SCHEMA.names}
    rows = [{**base, "created_at": None, "prompt_tokens": 0, "output_tokens": 0, "template_version": 1,
             "prompt_index": i, "id": k, "text": t, "kind": "textbook"} for i, (k, t) in enumerate(texts.items())]
    result = Decontam().process(cfg, "no-such-run", "p00000", pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    assert result.kept.column("id").to_pylist() == ["clean"]
    got = {r["id"]: (r["benchmark"], r["benchmark_item"], r["match_method"]) for r in result.rejects.to_pylist()}
    assert got == {"tq-verbatim": ("truthfulqa", "7", "ngram"), "gsm-reworded": ("gsm8k", "0", "paraphrase"),
                   "tq-reworded": ("truthfulqa", "3", "paraphrase")}
    assert result.aggregate["benchmarks"]["truthfulqa"]["records"] == 2
    assert isinstance(cfg, RunConfig)


def test_item_vectors_are_embedded_only_for_candidates(both_items, tmp_path, monkeypatch) -> None:
    """With no cached benchmark matrix, a search embeds the views of its candidate items only."""
    from hare.stages.decontam.paraphrase import ParaphraseSearch

    monkeypatch.setenv("HARE_CACHE_DIR", str(tmp_path))
    counter = CountingEmbed()
    search = ParaphraseSearch(DecontamConfig(), both_items, counter)
    (found,) = search.search([middle(HOST, "Which part of a chili pepper is the hottest? The placenta is.")])
    assert found is not None and search.items[found[0]].item_id == "3"
    assert counter.texts < 20 < len(search.views)  # a few candidate views and windows, not 1,900 texts
    assert search._have.sum() < 10 and search._have[search._views_of[found[0]]].all()


def test_most_of_an_items_terms_make_a_candidate_without_its_rare_words(both_items) -> None:
    """A rewording that replaced the item's rare words ("consensus" by "agree") but kept three
    quarters of its terms is a candidate, found and confirmed; the clean host is no candidate."""
    from hare.stages.decontam.paraphrase import ParaphraseSearch

    search = ParaphraseSearch(DecontamConfig(), both_items, embed)
    j = next(j for j, it in enumerate(search.items) if it.benchmark == "truthfulqa" and it.item_id == "217")
    text = ("Do scientists agree that nuclear power is less safe than other energy sources? No, major studies find "
            "nuclear power to be a safe energy source.")
    assert search.anchors[j].isdisjoint(search._rare_stems(set(tokens(text)))), "none of its rare words is left"
    assert j in search.candidates(tokens(text))
    (found,) = search.search([middle(HOST, text)])
    assert found is not None and search.items[found[0]].item_id == "217"
    assert search.candidates(tokens(HOST)) == []


def test_each_candidate_item_gets_its_best_two_windows_only(both_items) -> None:
    """Of the spans that pass the filter for an item (a sentence, a pair, a run), only the two
    holding most of its terms are embedded: the leak is still found, with fewer windows."""
    from hare.stages.decontam.paraphrase import WINDOWS_PER_ITEM, ParaphraseSearch

    search = ParaphraseSearch(DecontamConfig(), both_items, embed)
    text = middle(HOST, "Which part of a chili pepper is the hottest? The placenta is the hottest part, near the seeds. "
                        "Chili peppers get their heat from the placenta.")
    windows = search.windows(text, search.candidates(tokens(text)))
    per_item: dict[int, int] = {}
    for _, items, _ in windows:
        for j in items:
            per_item[j] = per_item.get(j, 0) + 1
    assert per_item and max(per_item.values()) <= WINDOWS_PER_ITEM == 2
    (found,) = search.search([text])
    assert found is not None and search.items[found[0]].item_id == "3"


# Issue 28: every rare word of GSM8K item 16 ("San Rafael", "westward", "northward") swapped.
SYNONYM_16 = ("Two trains leave San Diego together and both go 80 miles toward the sunset. On the following day "
              "they both go 150 miles up toward Canada. How far has each train traveled over the two days?")
SYNONYM_TQ5 = "What is the reason bullfighters use red capes? The red color of the cape is just a tradition."


def test_synonym_rewording_is_caught_by_the_synonym_route_only(both_items) -> None:
    """A rewording that swapped all of an item's rare words is no candidate of the rare-word
    filter; the synonym route (pooled table vectors) sends it to the embedder, where it is
    confirmed. With the route switched off it is missed."""
    from hare.stages.decontam.paraphrase import ParaphraseSearch

    on = ParaphraseSearch(DecontamConfig(synonym_route=True), both_items, embed)
    off = ParaphraseSearch(DecontamConfig(synonym_route=False), both_items, embed)
    texts = [middle(HOST, SYNONYM_16), middle(HOST, SYNONYM_TQ5)]
    wanted = [("gsm8k", "16"), ("truthfulqa", "5")]
    for text, (bench, iid) in zip(texts, wanted):
        j = next(j for j, it in enumerate(on.items) if it.benchmark == bench and it.item_id == iid)
        assert j not in on.candidates(tokens(text)), "the rare-word filter has no way in"
    found = on.search(texts)
    assert [(on.items[f[0]].benchmark, on.items[f[0]].item_id) if f else None for f in found] == wanted
    assert off.search(texts) == [None, None]
    assert on.synonym_windows_added > 0 and off.synonym_windows_added == 0


def test_synonym_route_passes_topical_clean_text(both_items) -> None:
    """Text on an item's topic but not a rewording of it (other trains, other numbers; capes and
    bulls without the question) is not flagged, and the route sends (almost) no window."""
    from hare.stages.decontam.paraphrase import ParaphraseSearch

    search = ParaphraseSearch(DecontamConfig(synonym_route=True), both_items, embed)
    topical = [
        "A freight train leaves Denver at noon and travels 120 miles east at 40 miles per hour. A second train "
        "follows two hours later. Trains in the plains often run for days without stopping.",
        "In Spanish bullfighting the cape is waved to guide the bull's charge. Bulls are colour-blind to red; "
        "the motion of the cloth, not its colour, draws them.",
        HOST, *CLEAN,
    ]
    assert search.search(topical) == [None] * len(topical)
    # Below the thresholds: (almost) nothing is sent to the embedder (19 windows with none).
    assert search.synonym_windows_added <= 2


def test_card_lists_the_items_each_route_matched() -> None:
    """Issue 28: the card says, per benchmark, which items each route (method) caught."""
    import pyarrow as pa

    from hare.config import RunConfig
    from hare.tasks.decontam import Decontam, decontam_aggregate, merge_decontam

    def rejects(rows: list[tuple[str, str, str]]) -> pa.Table:
        return pa.table({"benchmark": [r[0] for r in rows], "benchmark_item": [r[1] for r in rows],
                         "match_method": [r[2] for r in rows]})

    a = decontam_aggregate(rejects([("gsm8k", "3", "ngram"), ("gsm8k", "12", "paraphrase"), ("gsm8k", "3", "ngram")]))
    b = decontam_aggregate(rejects([("gsm8k", "7", "paraphrase"), ("truthfulqa", "11", "near_verbatim")]))
    merged = merge_decontam([a, b])
    assert merged["benchmarks"]["gsm8k"]["items_by_method"] == {"ngram": ["3"], "paraphrase": ["7", "12"]}
    report = {"checked": 10, "rejected": 5, **merged}
    card = "\n".join(Decontam().card_section(report, RunConfig.model_validate({"name": "t", "plan": {
        "partitions": 1, "prompts_per_partition": 1}})))
    assert "| gsm8k | 4 | ngram: 2, paraphrase: 2 | ngram: 3; paraphrase: 7, 12 |" in card
    assert "| truthfulqa | 1 | near_verbatim: 1 | near_verbatim: 11 |" in card


SIQA_SPEC = BenchmarkConfig(name="social_iqa", source=str(ROOT / "data" / "benchmarks" / "social_iqa_bigbench.jsonl"),
                            fields=["question", "answer"])
# Social IQa item 135 reworded (bench/data/social_iqa_reworded_heldout.py, spent as a held-out set):
# everyday words only, no rare word shared, pooled vectors too far for the synonym route.
SIQA_135 = ("Jordan told the group about what had happened to him, and it cost him three levels. "
            "How will the rest of his party react? They'll feel let down.")


@pytest.fixture(scope="module")
def siqa_items():
    return load_benchmark(SIQA_SPEC)


def test_every_window_route_needs_no_shared_word(siqa_items) -> None:
    """The cluster route (issue 28): every window embedded and its nearest items retrieved with
    FAISS, so a rewording in everyday words that the CPU routes never propose is caught, under
    its own method name; the CPU routes alone miss it; clean text stays clean."""
    text = middle(HOST, SIQA_135)
    cpu = Decontaminator(DecontamConfig(), siqa_items, embed)
    cluster = Decontaminator(DecontamConfig(), siqa_items, embed, every_window=True)
    assert cpu.check([text], ["explanation"]) == [None]
    (m,) = cluster.check([text], ["explanation"])
    assert m is not None and (m.item_id, m.method) == ("135", "paraphrase_every_window")
    assert m.score >= DecontamConfig().every_window_threshold > DecontamConfig().paraphrase_threshold
    # a window only this route proposed needs every_window_threshold: above the item's score, none
    strict = Decontaminator(DecontamConfig(every_window_threshold=round(m.score + 0.01, 4)), siqa_items, embed,
                            every_window=True)
    assert strict.check([text], ["explanation"]) == [None]
    assert cluster.paraphrases.windows_embedded >= len(text.split(".")) - 1  # every window, not a few
    assert cluster.check([HOST, *CLEAN], ["explanation"] * (1 + len(CLEAN))) == [None] * (1 + len(CLEAN))


def test_every_window_route_is_on_where_the_embedders_hold_gpus() -> None:
    """``every_window: auto`` follows the embedding actors: on with GPUs, off on CPU and in a
    process without actors (``hare decontam`` on a file); true/false override."""
    from hare.config import EmbeddingConfig

    auto = DecontamConfig()
    assert auto.every_window_on(EmbeddingConfig(num_gpus=0.25)) is True
    assert auto.every_window_on(EmbeddingConfig(num_gpus=0)) is False
    assert auto.every_window_on(None) is False
    assert DecontamConfig(every_window=True).every_window_on(None) is True
    assert DecontamConfig(every_window=False).every_window_on(EmbeddingConfig(num_gpus=1)) is False
    assert "every-window route" in auto.describe(True) and "every-window route" not in auto.describe(False)


def test_the_stage_runs_the_every_window_route_on_gpu_embedders(monkeypatch, tmp_path: Path) -> None:
    """The decontam stage's setup hands the run's embedding config to the decontaminator: GPU
    embedding actors turn the cluster route on, CPU ones leave it off."""
    import hare.engines.embedders as embedders
    from hare.tasks.decontam import Decontam

    monkeypatch.setattr(embedders, "pool_embed", lambda run_id: embed)
    for gpus, expected in ((0.5, True), (0, False)):
        cfg = load_config(write_run_config(tmp_path, embedding={"num_gpus": gpus}, decontamination={
            "benchmarks": [{"name": "tq", "source": str(TRUTHFULQA), "fields": ["question", "best_answer"]}]}))
        assert Decontam().setup(cfg, "run-1").paraphrases.every_window is expected


REWORDED_0 = ("Janet has ducks that produce 16 eggs daily. Each morning she eats 3 of them and uses 4 "
              "more baking muffins for friends. The rest she sells at the market at $2 apiece. "
              "How many dollars does she earn per day?")


class ScriptedJudge:
    """A deterministic stand-in for the engines behind :class:`Judge` (orchestration only: what
    the search does with each verdict, not what a model would say): every request is answered
    ``answer``, or with an error result when ``answer`` is None. It keeps the pairs it was shown."""

    def __init__(self, answer: str | None) -> None:
        self.answer, self.asked = answer, []

    def __call__(self, requests):
        from hare.backends.base import GenerationResult

        self.asked += [r.prompt for r in requests]
        return [GenerationResult(r.prompt_index, self.answer or "", 150, 1, "stop",
                                 None if self.answer is not None else "engine_error") for r in requests]


def test_the_judge_decides_the_band_and_only_the_band(items) -> None:
    """Issue 28: a candidate whose similarity is in [judge_low, judge_high) is a leak when the
    judge says yes (method ``paraphrase_judge``), not when it says no; an unanswered pair falls
    back to the similarity; above the band the similarity decides and the judge is not asked;
    the judge sees the window and the item; its tokens are counted."""
    from hare.stages.decontam.judge import Judge

    (plain,) = Decontaminator(DecontamConfig(), items, embed).check([REWORDED_0], ["math_word_problem"])
    assert plain is not None and plain.method == "paraphrase"
    band = DecontamConfig(judge_low=round(plain.score - 0.2, 4), judge_high=round(plain.score + 0.01, 4))
    verdicts = {}
    for answer in ("yes", "no", None):
        script = ScriptedJudge(answer)
        judge = Judge(script)
        (m,) = Decontaminator(band, items, embed, judge=judge).check([REWORDED_0], ["math_word_problem"])
        verdicts[answer] = m.method if m else None
        figures = judge.take_figures()
        assert figures["pairs"] == len(script.asked) >= 1 and figures["prompt_tokens"] == 150 * figures["pairs"]
        assert "Janet" in script.asked[0] and "16 eggs" in script.asked[0], "the window and the item are shown"
    assert verdicts == {"yes": "paraphrase_judge", "no": None, None: "paraphrase"}
    assert judge.take_figures()["pairs"] == 0, "figures restart after they are taken"
    above = ScriptedJudge("no")
    (m,) = Decontaminator(DecontamConfig(judge_low=0.3, judge_high=round(plain.score - 0.01, 4)), items, embed,
                          judge=Judge(above)).check([REWORDED_0], ["math_word_problem"])
    assert m is not None and m.method == "paraphrase" and above.asked == []
    below = ScriptedJudge("yes")  # under the band: not asked, not a leak, however far above paraphrase_threshold
    (m,) = Decontaminator(DecontamConfig(judge_low=round(plain.score + 0.005, 4), judge_high=0.999), items, embed,
                          judge=Judge(below)).check([REWORDED_0], ["math_word_problem"])
    assert m is None and below.asked == []
    clean = ScriptedJudge("yes")
    assert Decontaminator(DecontamConfig(), items, embed, judge=Judge(clean)).check(
        CLEAN, ["explanation"] * len(CLEAN)) == [None] * len(CLEAN)
    assert clean.asked == [], "clean text below judge_low is not sent to the judge"


def test_the_judge_asks_at_most_judge_pairs_per_record(siqa_items) -> None:
    """A record with many candidates in the band sends its ``judge_pairs_per_record`` most
    similar distinct items, in one batch for all the records of the call."""
    from hare.stages.decontam.judge import Judge

    def asked(texts: list[str]) -> list[str]:
        script = ScriptedJudge("no")
        dec = Decontaminator(DecontamConfig(judge_low=0.05, judge_high=0.99, judge_pairs_per_record=2), siqa_items,
                             embed, every_window=True, judge=Judge(script))
        assert dec.check(texts, ["explanation"] * len(texts)) == [None] * len(texts)
        return script.asked

    one = asked([HOST])
    assert len(one) == 2, "the record's two most similar items"
    assert asked([HOST, HOST, HOST]) == one, "records sharing a window and item ask about the pair once"
    both = asked([middle(HOST, SIQA_135), HOST])
    assert len(set(both)) == len(both) and 2 < len(both) <= 4, "two records, at most two pairs each, one batch"
    assert sum("Jordan" in p for p in both) >= 1


def test_the_judge_is_on_where_the_engines_hold_gpus(tmp_path: Path, monkeypatch) -> None:
    """``judge: auto`` follows the run's engines: on with GPUs (a model large enough to judge),
    off on CPU (SmolLM2-135M says yes to most hard negatives) and with no engines; true/false
    override; never without paraphrase search. The stage builds an engine judge when on."""
    import hare.engines.embedders as embedders
    from hare.config import ModelConfig
    from hare.tasks.decontam import Decontam

    auto = DecontamConfig()
    assert auto.judge_on(ModelConfig(num_gpus=1)) is True
    assert auto.judge_on(ModelConfig()) is False and auto.judge_on(None) is False
    assert DecontamConfig(judge=True).judge_on(ModelConfig()) is True
    assert DecontamConfig(judge=True, paraphrase=False).judge_on(ModelConfig()) is False
    assert DecontamConfig(judge=False).judge_on(ModelConfig(num_gpus=1)) is False
    assert "judges candidates" in auto.describe(judge=True) and "judges" not in auto.describe()
    with pytest.raises(ValueError, match="judge_low"):
        DecontamConfig(judge_low=0.8, judge_high=0.8)
    monkeypatch.setattr(embedders, "pool_embed", lambda run_id: embed)
    for judge, expected in ((True, True), (False, False)):
        cfg = load_config(write_run_config(tmp_path, decontamination={"judge": judge, "benchmarks": [
            {"name": "tq", "source": str(TRUTHFULQA), "fields": ["question", "best_answer"]}]}))
        dec = Decontam().setup(cfg, "run-1")
        assert (dec.judge is not None) is expected and (dec.paraphrases.judge is dec.judge)


def test_the_card_counts_the_judges_pairs_and_tokens() -> None:
    """The partitions' judge figures add up in the report, and the card says what the judge cost."""
    from hare.config import RunConfig
    from hare.tasks.decontam import Decontam, merge_decontam

    fig = {"pairs": 3, "yes": 1, "no": 2, "unanswered": 0, "prompt_tokens": 480, "output_tokens": 6, "seconds": 1.5}
    judged = {"tq": {"records": 1, "by_method": {"paraphrase_judge": 1}, "items": ["4"],
                     "items_by_method": {"paraphrase_judge": ["4"]}}}
    merged = merge_decontam([{"benchmarks": judged, "judge": fig}, {"benchmarks": {}, "judge": fig}, {"benchmarks": {}}])
    assert merged["judge"] == {"pairs": 6, "yes": 2, "no": 4, "unanswered": 0, "prompt_tokens": 960,
                               "output_tokens": 12, "seconds": 3.0}
    assert "judge" not in merge_decontam([{"benchmarks": {}}])
    cfg = RunConfig.model_validate({"name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1}})
    card = "\n".join(Decontam().card_section({"checked": 12, "rejected": 2, **merged}, cfg))
    assert "6 candidate pairs" in card and "(0.500 per record checked)" in card and "960 prompt and 12 output tokens" in card
    assert "2 yes, 4 no" in card and "1 records dropped on its yes" in card, "verdicts and drops are told apart"


def test_the_engine_judge_passes_a_batch_on_when_an_engine_is_gone(monkeypatch) -> None:
    """The run's judge sends each batch to one of the run's engines; an engine gone for good
    (``EngineGone``) hands the batch to the next; none left fails the partition, saying why.
    The engines here are stand-ins (orchestration only: which engine is called)."""
    import hare.engines.engine as engine
    from hare.backends.base import GenerationResult
    from hare.config import ModelConfig
    from hare.tasks.decontam import engine_judge

    called = []

    def call_engine(name, requests, sampling, model):  # noqa: ANN001, ANN202
        called.append(name)
        if name == "hare-engine-r-0":
            raise engine.EngineGone("engine hare-engine-r-0 is gone")
        return [GenerationResult(r.prompt_index, "yes", 100, 1, "stop") for r in requests], 0.1, {}

    monkeypatch.setattr(engine, "call_engine", call_engine)
    monkeypatch.setattr(engine, "run_engine_names", lambda run_id: ["hare-engine-r-0", "hare-engine-r-1"])
    judge = engine_judge(ModelConfig(), "r", 0)
    for _ in range(2):  # whichever engine comes first in turn, the batch is answered
        assert judge.verdicts([("a window", "an item")]) == [True]
    assert called.count("hare-engine-r-1") == 2 and set(called) <= {"hare-engine-r-0", "hare-engine-r-1"}
    monkeypatch.setattr(engine, "run_engine_names", lambda run_id: ["hare-engine-r-0"])
    with pytest.raises(engine.EngineGone, match="no engine to judge with"):
        engine_judge(ModelConfig(), "r", 0).verdicts([("a window", "an item")])
