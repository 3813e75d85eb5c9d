"""The run's sources (HARE's D1 corpus, D2 synthesize, D3 rewrite) and their mixture: fast parts.

Corpus partitions read every document exactly once at any partition size (byte ranges of
JSONL/text, row groups of Parquet, locally and over a real HTTP S3 endpoint); a damaged or
changed file is one line naming it; rewrite plans and checks; the mixture's seeded
down-sampling meets the target shares. The flows that run them end to end are in
tests/test_sources_flow.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hare.config import ConfigError, load_config
from hare.priors.corpus import CorpusFileError, cut_partitions, list_corpus_files, merge_row_groups, read_documents
from hare.priors.rewrite import rewrite_template
from hare.stages.mixture import KEEP_ALL, WordLedger, down_sample, words
from hare.tasks.plan import in_source_order, partition_sources
from hare.tasks.rewrite import rewrite_reject_reason
from tests.conftest import ROOT


def _read_all(paths: list[str], partition_bytes: int) -> list[tuple[str, dict]]:
    out = []
    for part in cut_partitions(list_corpus_files(paths), partition_bytes):
        for piece in merge_row_groups(part):
            out += [(d.text, d.ref) for d in read_documents(piece, "text", "license", None)]
    return out


def _corpus(folder: Path) -> list[str]:
    texts = [f"document {i} " + "word " * (i % 29) + ("é" if i % 7 == 0 else "") for i in range(300)]
    lines = [json.dumps({"text": t, "license": "cc0"}, ensure_ascii=False) for t in texts]
    (folder / "a.jsonl").write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    (folder / "b.jsonl").write_text("\n".join(lines[200:]), encoding="utf-8")  # no final newline
    return texts


@pytest.mark.parametrize("partition_bytes", [1, 13, 200, 4096, 1 << 30])
def test_byte_ranges_read_every_line_once(tmp_path: Path, partition_bytes: int) -> None:
    texts = _corpus(tmp_path)
    got = _read_all([str(tmp_path / "*.jsonl")], partition_bytes)
    assert [t for t, _ in got] == texts
    assert all(ref["license"] == "cc0" and "offset" in ref for _, ref in got)
    first_b = next(ref for t, ref in got if t == texts[200])
    assert first_b["offset"] == 0 and first_b["uri"].endswith("b.jsonl")


def test_text_files_are_one_document_per_line(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("first paragraph\n\nsecond one\n\n\nthird\n")
    assert [t for t, _ in _read_all([str(tmp_path / "p.txt")], 7)] == ["first paragraph", "second one", "third"]


def test_parquet_row_groups_with_rows_in_lineage(tmp_path: Path) -> None:
    texts = [f"parquet document {i}" for i in range(100)]
    pq.write_table(pa.table({"text": texts, "license": ["pd"] * 100}), tmp_path / "c.parquet", row_group_size=7)
    got = _read_all([str(tmp_path / "c.parquet")], 1)  # one row group a partition
    assert [t for t, _ in got] == texts
    assert [ref["row"] for _, ref in got] == list(range(100))


def test_s3_prefix_read_with_ranged_gets(moto_endpoint: str, tmp_path: Path) -> None:
    import boto3

    from tests.conftest import new_bucket

    texts = _corpus(tmp_path)
    bucket = new_bucket()
    for name in ("a.jsonl", "b.jsonl"):
        boto3.client("s3").upload_file(str(tmp_path / name), bucket, f"corpus/{name}")
    assert [t for t, _ in _read_all([f"s3://{bucket}/corpus/"], 333)] == texts


def test_a_datasets_corpus_is_read_in_row_ranges(tmp_path: Path) -> None:
    """``hub:NAME`` loads with `datasets` (here a local folder of JSONL files: no hub is reachable)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    texts = _corpus(folder)
    got = _read_all([f"hub:{folder}"], 700)
    assert [t for t, _ in got] == texts
    assert [ref["row"] for _, ref in got] == list(range(len(texts)))
    assert got[0][1]["uri"] == f"hub:{folder}@train" and got[0][1]["license"] == "cc0"
    assert len(list(cut_partitions(list_corpus_files([f"hub:{folder}"]), 700))) > 10


def test_bad_json_line_names_file_and_byte(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(CorpusFileError, match=r"bad\.jsonl: byte 17: not a JSON line"):
        _read_all([str(tmp_path / "bad.jsonl")], 1 << 20)


def test_damaged_parquet_names_the_file(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a b c"] * 50}), tmp_path / "d.parquet")
    data = (tmp_path / "d.parquet").read_bytes()
    (tmp_path / "d.parquet").write_bytes(data[:40] + data[-200:])  # footer kept, pages gone
    with pytest.raises(CorpusFileError, match=r"d\.parquet: not a readable Parquet file"):
        _read_all([str(tmp_path / "d.parquet")], 1 << 20)


def test_file_changed_since_planned_is_refused(tmp_path: Path) -> None:
    _corpus(tmp_path)
    parts = list(cut_partitions(list_corpus_files([str(tmp_path / "a.jsonl")]), 1 << 20))
    with open(tmp_path / "a.jsonl", "a") as fh:
        fh.write('{"text": "appended later"}\n')
    with pytest.raises(CorpusFileError, match=r"a\.jsonl: \d+ bytes now, \d+ when the run was planned"):
        list(read_documents(parts[0][0], "text", None, None))


def _config(tmp_path: Path, sources: list[dict]) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["sources"] = sources
    raw["plan"].pop("allocate", None)  # uniform unless a test asks for coverage
    for key in ("topics", "axes"):
        raw[key]["path"] = str((ROOT / "configs" / raw[key]["path"]).resolve())
    for b in raw["decontam"]["benchmarks"]:
        b["source"] = str((ROOT / "configs" / b["source"]).resolve())
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shares_must_add_up_to_one(tmp_path: Path) -> None:
    path = _config(tmp_path, [{"kind": "synthesize", "share": 0.5},
                              {"kind": "corpus", "paths": ["x.txt"], "share": 0.3}])
    with pytest.raises(ConfigError, match=r"sources: the shares add up to 0\.800 \(synthesize 0\.5, corpus 0\.3\)"):
        load_config(path)


def test_unknown_rewrite_template_is_named(tmp_path: Path) -> None:
    path = _config(tmp_path, [{"kind": "rewrite", "path": "t.jsonl", "template": "nope"}])
    with pytest.raises(ConfigError, match=r"sources\.0\.rewrite\.template: unknown rewrite template 'nope'"):
        load_config(path)


def test_rewrite_checks_keep_the_label_or_answer() -> None:
    nli = rewrite_template("nli_explanation")
    assert nli.check("The premise says so. Label: entailment", "entailment") is None
    assert nli.check("It does not follow. Label: neutral", "entailment") == "label_not_kept"
    assert nli.check("entailment? no: contradiction", "entailment") == "label_contradicted"
    qa = rewrite_template("qa_explanation")
    assert qa.check("...so the answer is the Pacific Ocean.", "the Pacific Ocean") is None
    assert qa.check("...so the answer is the Atlantic.", "the Pacific Ocean") == "answer_not_kept"
    row = {"template_id": "qa_explanation", "expect": "1969"}
    assert rewrite_reject_reason(row, "They landed in 1969.") is None
    assert rewrite_reject_reason(row, "They landed in 1970.") == "answer_not_kept"
    assert rewrite_reject_reason({"template_id": "explanation"}, "any text") is None  # synthesized: no check


def test_rewrite_row_missing_a_column_names_file_row_and_column(tmp_path: Path) -> None:
    from hare.priors.rewrite import RewriteError
    from hare.tasks.rewrite import rewrite_rows

    (tmp_path / "t.jsonl").write_text('{"question": "q?", "answer": "a", "context": "c"}\n{"question": "q2?"}\n')
    cfg = load_config(_config(tmp_path, [{"kind": "rewrite", "path": str(tmp_path / "t.jsonl"),
                                          "template": "qa_explanation"}]))
    with pytest.raises(RewriteError, match=r"sources\.rewrite: .*t\.jsonl row 1: column 'answer' is missing or empty"):
        list(rewrite_rows(cfg, 0))


def test_mixture_meets_the_shares_with_a_seeded_rule() -> None:
    import random

    rng = random.Random(3)
    texts = {s: [" ".join(["w"] * rng.randint(20, 400)) for _ in range(n)]
             for s, n in (("corpus", 400), ("synth", 300), ("rw", 40))}
    ids = {s: [f"{s}{i}" for i in range(len(t))] for s, t in texts.items()}
    shares = {"corpus": 0.5, "synth": 0.3, "rw": 0.2}
    ledger = WordLedger(seed=7)
    for s in texts:  # two "partitions" per source
        half = len(texts[s]) // 2
        ledger.add(s, ids[s][:half], texts[s][:half])
        ledger.add(s, ids[s][half:], texts[s][half:])
    thresholds = ledger.thresholds(shares)
    assert thresholds["rw"] == KEEP_ALL  # the scarcest source keeps everything
    table = pa.table({"id": [i for s in texts for i in ids[s]], "text": [t for s in texts for t in texts[s]],
                      "source": [s for s in texts for _ in texts[s]]})
    kept, dropped = down_sample(table, thresholds, seed=7)
    again, _ = down_sample(table, thresholds, seed=7)
    assert kept.column("id").to_pylist() == again.column("id").to_pylist()  # same seed, same records
    published = {s: words(kept.filter(pa.compute.equal(kept.column("source"), s)).column("text").to_pylist())
                 for s in texts}
    total = sum(published.values())
    for s, share in shares.items():  # within one record (at most 400 words) of the target
        assert abs(published[s] - share * ledger.available()["rw"] / 0.2) <= 400, s
        assert published[s] / total == pytest.approx(share, abs=0.03)
    assert kept.num_rows + dropped.num_rows == table.num_rows
    ledger8 = WordLedger(seed=8)
    for s in texts:
        ledger8.add(s, ids[s], texts[s])
    other, _ = down_sample(table, ledger8.thresholds(shares), seed=8)
    assert other.column("id").to_pylist() != kept.column("id").to_pylist()  # another seed, other records


def test_the_source_listed_first_comes_first(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, [
        {"kind": "corpus", "paths": ["x.txt"], "share": 0.5},
        {"kind": "synthesize", "share": 0.3},
        {"kind": "rewrite", "path": "t.jsonl", "template": "qa_explanation", "share": 0.2}]))
    report = {"sources": [{"name": "corpus", "first_partition": "c00000", "last_partition": "c00001"},
                          {"name": "rewrite", "first_partition": "r00000", "last_partition": "r00000"}]}
    ids = ["p00000", "p00001", "r00000", "c00000", "c00001", "p00002"]
    assert partition_sources(cfg, report, ids)["r00000"] == "rewrite"
    assert in_source_order(cfg, report, ids) == ["c00000", "c00001", "p00000", "p00001", "p00002", "r00000"]


@pytest.mark.slow
def test_coverage_plans_synthesis_where_the_corpus_is_thin(tmp_path: Path) -> None:
    """Newton's Opticks as the corpus: its sample lands on optics, so synthesis goes elsewhere."""
    from hare.tasks.coverage import measure_coverage
    from hare.tasks.plan import build_plan

    path = _config(tmp_path, [{"kind": "corpus", "paths": [str(ROOT / "data" / "corpus" / "pd-prose" / "opticks.txt")],
                               "partition_mb": 0.05, "share": 0.5}, {"kind": "synthesize", "share": 0.5}])
    raw = yaml.safe_load(path.read_text())
    raw["plan"].update(allocate="coverage", coverage_sample=60)
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    coverage = measure_coverage(cfg)
    optics = "Physics > Waves and optics > Reflection and refraction of light"
    assert coverage["sampled"] == 60 and coverage["covered"][optics] == max(coverage["covered"].values()) > 10
    assert coverage["allocation"][optics] == 0 and sum(coverage["allocation"].values()) == 48
    planned = build_plan(cfg).column("topic_path").to_pylist()
    assert optics not in planned and len(planned) - planned.count("") == 48  # baseline rows have no topic
    domains = {p.split(" > ")[0] for p in planned if p}
    assert len(domains) >= 10  # ties between uncovered leaves go in a seeded order, across the taxonomy
    uniform = build_plan(load_config(_config(tmp_path, [{"kind": "synthesize", "share": 1.0}])))
    assert set(planned[:48]) != set(uniform.column("topic_path").to_pylist()[:48])


def test_hare_run_prints_the_mixture_target_beside_actual(tmp_path: Path) -> None:
    from hare.cli.main import mixture_line
    from hare.stages.mixture import mixture_report
    from hare.store import open_store

    store = open_store(str(tmp_path / "store"))
    report = mixture_report({"books": 0.6, "synthesize": 0.4}, {"books": 900, "synthesize": 400},
                            {"books": 600, "synthesize": 400}, {"books": 6, "synthesize": 4}, {"books": 3}, seed=1)
    store.put_bytes("runs/r1/mixture.json", json.dumps(report).encode())
    assert mixture_line(store, "r1") == ("books 0.60 -> 0.60, synthesize 0.40 -> 0.40 "
                                         "(target -> actual share of the words; 3 records down-sampled)")
    assert mixture_line(store, "r2") == ""  # a run without sources prints no mixture line
