"""`hare filter`, `hare dedup`, `hare decontam` on plain JSONL/Parquet files, with and without a config."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hare.cli.main import main
from tests.conftest import ROOT, write_run_config
from tests.test_dedup import BASE, EXACT, NEAR, PARAPHRASE
from tests.test_quality import GOOD, MATH_GOOD

GSM8K = ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl"
LEAKED = json.loads(GSM8K.read_text().splitlines()[7])["question"]  # GSM8K test item "7"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_yaml(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hare: error: ") and "Traceback" not in err, err
    return lines[0]


# -- filter ------------------------------------------------------------------------------------

def test_filter_jsonl_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"text": GOOD, "source": "a"},
        {"text": "Plants use light.", "source": "b"},
        {"text": "As an AI language model, I cannot give opinions. " + GOOD, "source": "c"},
        {"text": MATH_GOOD, "kind": "math_word_problem", "source": "d"},
    ])
    assert main(["filter", str(src), "--out", str(tmp_path / "out" / "kept.jsonl")]) == 0
    kept = read_jsonl(tmp_path / "out" / "kept.jsonl")
    rejects = read_jsonl(tmp_path / "out" / "kept.rejects.jsonl")
    assert [r["source"] for r in kept] == ["a", "d"] and all("q_words" in r for r in kept)
    assert [(r["source"], r["reject_reason"]) for r in rejects] == [("b", "too_short"), ("c", "refusal_or_boilerplate")]
    out = capsys.readouterr().out
    assert '"rejected": 2' in out and "kept 2 ->" in out


def test_filter_text_field_keeps_the_file_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--text-field content: 'content' is judged; the file's own 'text' column passes through."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"content": [GOOD, "Plants use light."], "text": ["x", "y"]}), src)
    assert main(["filter", str(src), "--text-field", "content", "--out", str(tmp_path / "kept.parquet"),
                 "--rejects", str(tmp_path / "dropped.jsonl")]) == 0
    kept = pq.read_table(tmp_path / "kept.parquet")
    assert kept.column_names[:2] == ["content", "text"]
    assert kept.column("content").to_pylist() == [GOOD] and kept.column("text").to_pylist() == ["x"]
    (rej,) = read_jsonl(tmp_path / "dropped.jsonl")
    assert (rej["content"], rej["text"], rej["reject_reason"]) == ("Plants use light.", "y", "too_short")


def test_filter_section_only_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_yaml(tmp_path / "q.yaml", {"quality": {"min_words": {"default": 3}}})
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "Plants use light to make sugar."}])
    assert main(["filter", str(src), "--config", str(cfg), "--out", str(tmp_path / "kept.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "kept.jsonl")) == 1


def test_filter_in_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """More rows than one batch: every row judged once, in order, rejects from every batch."""
    from hare.cli import table_tools

    rows = [{"text": GOOD if i % 3 else "Too short.", "i": i} for i in range(table_tools.BATCH_ROWS + 5)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["filter", str(src), "--out", str(tmp_path / "kept.parquet")]) == 0
    kept = pq.read_table(tmp_path / "kept.parquet").column("i").to_pylist()
    rejected = pq.read_table(tmp_path / "kept.rejects.parquet").column("i").to_pylist()
    assert kept == [i for i in range(len(rows)) if i % 3] and rejected == [i for i in range(len(rows)) if not i % 3]


# -- dedup -------------------------------------------------------------------------------------

def test_dedup_jsonl_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All three layers with the defaults (real MiniLM embeddings); the file has its own ids."""
    texts = BASE + [EXACT, NEAR, PARAPHRASE]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t, "id": f"r{i}"} for i, t in enumerate(texts)])
    assert main(["dedup", str(src), "--out", str(tmp_path / "kept.jsonl")]) == 0
    assert [r["text"] for r in read_jsonl(tmp_path / "kept.jsonl")] == BASE
    rejects = read_jsonl(tmp_path / "kept.rejects.jsonl")
    assert [(r["id"], r["reject_reason"], r["duplicate_of"]) for r in rejects] == [
        ("r8", "duplicate:exact", "r0"), ("r9", "duplicate:near", "r1"), ("r10", "duplicate:semantic", "r4")]
    assert '"kept": 8' in capsys.readouterr().out


def test_dedup_section_only_config_and_text_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dedup: {semantic: false}`: exact and near only, no embedding model; --text-field body."""
    cfg = write_yaml(tmp_path / "d.yaml", {"dedup": {"semantic": False}})
    texts = BASE + [EXACT, NEAR, PARAPHRASE]
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": t, "n": i} for i, t in enumerate(texts)])
    assert main(["dedup", str(src), "--config", str(cfg), "--text-field", "body",
                 "--out", str(tmp_path / "kept.parquet")]) == 0
    kept = pq.read_table(tmp_path / "kept.parquet")
    assert "text" not in kept.column_names and kept.column("n").to_pylist() == list(range(8)) + [10]
    rejects = pq.read_table(tmp_path / "kept.rejects.parquet").to_pylist()
    assert [(r["n"], r["reject_reason"]) for r in rejects] == [(8, "duplicate:exact"), (9, "duplicate:near")]


def test_dedup_with_a_whole_run_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_run_config(tmp_path, dedup={"enabled": True, "semantic": False, "near": False})
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in BASE + [EXACT, NEAR]])
    assert main(["dedup", str(src), "--config", str(cfg), "--out", str(tmp_path / "kept.jsonl")]) == 0
    assert len(read_jsonl(tmp_path / "kept.jsonl")) == 9  # near is off: only the exact copy goes


# -- decontam ----------------------------------------------------------------------------------

def test_decontam_with_benchmark_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"text": GOOD}, {"text": f"Here is a practice problem. {LEAKED}"}, {"text": MATH_GOOD}])
    assert main(["decontam", str(src), "--benchmark", f"gsm8k={GSM8K}", "--out", str(tmp_path / "clean.jsonl")]) == 0
    assert [r["text"] for r in read_jsonl(tmp_path / "clean.jsonl")] == [GOOD, MATH_GOOD]
    (rej,) = read_jsonl(tmp_path / "clean.rejects.jsonl")
    assert (rej["benchmark"], rej["benchmark_item"], rej["match_method"]) == ("gsm8k", "7", "ngram")
    assert '"rejected": 1' in capsys.readouterr().out


def test_decontam_section_only_config_relative_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config with only `decontamination:`; its benchmark path is relative to the config file."""
    (tmp_path / "conf" / "bench").mkdir(parents=True)
    (tmp_path / "conf" / "bench" / "gsm8k.jsonl").write_text(GSM8K.read_text())
    cfg = write_yaml(tmp_path / "conf" / "decon.yaml", {"decontamination": {
        "benchmarks": [{"name": "gsm8k", "source": "bench/gsm8k.jsonl", "fields": ["question"]}],
        "paraphrase": False}})
    src = write_jsonl(tmp_path / "in.jsonl", [{"content": LEAKED, "k": 1}, {"content": GOOD, "k": 2}])
    assert main(["decontam", str(src), "--config", str(cfg), "--text-field", "content",
                 "--out", str(tmp_path / "clean.parquet")]) == 0
    assert pq.read_table(tmp_path / "clean.parquet").column("k").to_pylist() == [2]
    rej = pq.read_table(tmp_path / "clean.rejects.parquet")
    assert rej.column("content").to_pylist() == [LEAKED] and rej.column("benchmark_item").to_pylist() == ["7"]


# -- errors: one line on stderr, exit 2 ----------------------------------------------------------

def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["filter", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "absent.jsonl" in one_error_line(capsys)


def test_missing_text_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"body": GOOD}])
    for cmd in (["filter"], ["dedup"], ["decontam", "--benchmark", f"gsm8k={GSM8K}"]):
        assert main([*cmd, str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
        line = one_error_line(capsys)
        assert "in.jsonl" in line and "'text'" in line and "body" in line
    assert main(["filter", str(src), "--text-field", "content", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "'content'" in one_error_line(capsys)
    assert not (tmp_path / "o.jsonl").exists()


def test_decontam_without_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    assert main(["decontam", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--benchmark" in one_error_line(capsys)
    cfg = write_yaml(tmp_path / "q.yaml", {"quality": {"min_words": {"default": 3}}})
    assert main(["decontam", str(src), "--config", str(cfg), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "--benchmark" in one_error_line(capsys)


def test_unreadable_input_and_output_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    assert main(["filter", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.jsonl: line 2" in one_error_line(capsys)
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert main(["dedup", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "bad.parquet" in one_error_line(capsys)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    assert main(["filter", str(src), "--out", str(tmp_path / "o.csv")]) == 2
    assert "o.csv" in one_error_line(capsys)
    assert main(["decontam", str(src), "--benchmark", "gsm8k", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "NAME=PATH" in one_error_line(capsys)


def test_section_config_errors_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": GOOD}])
    cfg = write_yaml(tmp_path / "q.yaml", {"quality": {"min_wordz": 3}})
    assert main(["filter", str(src), "--config", str(cfg), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "quality.min_wordz: unknown field" in capsys.readouterr().err
    cfg = write_yaml(tmp_path / "d.yaml", {"dedupe": {"semantic": False}})
    assert main(["dedup", str(src), "--config", str(cfg), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "dedupe: unknown field" in capsys.readouterr().err
