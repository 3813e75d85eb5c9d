"""bench/scale.py reads a run's counts from its partition manifests as the stages write them.

The manifests here are committed by the store's own commit protocol with the stats the stage
base writes (``partition_stats``: checked / kept / rejected / reject_reasons), so a renamed
count breaks this test rather than silently showing 0 in the bench's "dropped" column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from bench.scale import markdown, read_run, stage_figures
from hare.clock import utc_now
from hare.stages.base import StageResult, partition_stats
from hare.store.layout import run_json
from hare.store.manifest import commit_partition
from hare.store.objects import ObjectStore, open_store

RUN = "scale-test-run"


def _records(n: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(n)], "text": ["some text"] * n})


def _rejects(reasons: list[str]) -> pa.Table:
    return pa.table({"id": [f"x{i}" for i in range(len(reasons))], "reject_reason": reasons})


def _commit_stage(store: ObjectStore, pid: str, stage: str, rows_in: int, reasons: list[str],
                  aggregate: dict[str, Any]) -> None:
    """One record stage's commit of one partition, its stats as run_record_stage writes them."""
    result = StageResult(_records(rows_in - len(reasons)), _rejects(reasons), aggregate)
    stats = {**partition_stats(result, rows_in), "seconds": 0.5}
    commit_partition(store, RUN, pid, stage, {f"runs/{RUN}/{stage}/{pid}.parquet": result.kept}, stats, 1)


def make_store(root: Path) -> Path:
    """A run of two partitions of 50 prompts: generation, quality, decontam, dedup."""
    store = open_store(str(root / "store"))
    store.put_bytes(run_json(RUN), json.dumps({
        "run_id": RUN, "started_at": utc_now(), "finished_at": utc_now(), "status": "succeeded",
        "partitions": ["p00000", "p00001"], "summary": {"records": 93, "rejects": 7}}).encode())
    for pid, quality, decontam, dedup in (
        ("p00000", ["duplicate_5grams"], [], ["duplicate:exact", "duplicate:near"]),
        ("p00001", ["too_short", "duplicate_5grams"], ["benchmark_ngram"], ["duplicate:exact"]),
    ):
        # generation writes its own stats (tasks/generate.py), with the same base counts
        gen = {"requests": 50, "prompts": 50, "checked": 50, "kept": 50, "rejected": 0, "seconds": 2.0}
        commit_partition(store, RUN, pid, "generate", {f"runs/{RUN}/generated/{pid}.parquet": _records(50)}, gen, 1)
        _commit_stage(store, pid, "quality", 50, quality, {})
        after_quality = 50 - len(quality)
        _commit_stage(store, pid, "decontam", after_quality, decontam, {})
        _commit_stage(store, pid, "dedup", after_quality - len(decontam), dedup,
                      {"dropped_as_already_published": 0, "against_published_records": 0})
    return root / "store"


def test_stage_figures_read_the_base_counts(tmp_path: Path) -> None:
    run_dir, info = read_run(make_store(tmp_path))
    stages = stage_figures(run_dir, info)["stages"]

    assert (stages["generate"]["records_in"], stages["generate"]["records_out"], stages["generate"]["rejects"]) \
        == (100, 100, 0)
    assert stages["quality"]["records_in"] == 100 and stages["quality"]["records_out"] == 97
    assert stages["quality"]["rejects"] == 3
    assert stages["quality"]["reject_reasons"] == {"duplicate_5grams": 2, "too_short": 1}
    assert stages["decontam"]["rejects"] == 1 and stages["decontam"]["records_out"] == 96
    assert stages["dedup"]["rejects"] == 3 and stages["dedup"]["records_out"] == 93
    assert stages["dedup"]["dropped_by_layer"] == {"exact": 2, "near": 1}
    assert all(s["partitions"] == 2 and s["busy_s"] > 0 for s in stages.values())


def test_markdown_dropped_column_shows_the_rejects(tmp_path: Path) -> None:
    run_dir, info = read_run(make_store(tmp_path))
    result = {"records": 100, "partitions": 2, "published_records": 93, "run_wall_s": 10.0,
              **stage_figures(run_dir, info),
              "memory": {"roles": {}, "total_simultaneous_rss_mib": 1.0}}
    table = markdown([result], [])
    assert "| 3 / 1 / 3 (exact 2, near 1) |" in table, table


def test_write_corpus_writes_n_documents_with_the_planted_copies(tmp_path: Path) -> None:
    """--corpus's corpus: N JSONL documents across the files, real prose, the replay's planted
    exact copies (identical texts) and near copies (a few words changed) of earlier anchors."""
    from bench.scale import write_corpus
    from hare.backends.replay import parse_source

    n = 3000
    corpus = write_corpus(tmp_path / "corpus", n, files=3, seed=0, max_words=307, per_partition=500)
    lines = [json.loads(line) for f in sorted((tmp_path / "corpus").glob("part-*.jsonl"))
             for line in f.read_text().splitlines()]
    assert len(corpus["files"]) == 3 and corpus["documents"] == n and len(lines) == n
    assert [d["id"] for d in lines] == [f"doc-{i:08d}" for i in range(n)]
    assert corpus["bytes"] == sum(Path(f).stat().st_size for f in corpus["files"])
    assert sum(corpus["planted"].values()) == n
    _, options = parse_source("corpus:pd-prose")
    for role, share in (("exact", options.exact), ("near", options.near)):  # ~2% each, as the replay plants
        assert 0.5 * share * n <= corpus["planted"][role] <= 1.5 * share * n, corpus["planted"]
    texts = [d["text"] for d in lines]
    assert all(40 <= len(t.split()) <= 307 for t in texts)
    # every exact copy repeats an earlier text; nothing else is an exact duplicate
    assert len(texts) - len(set(texts)) == corpus["planted"]["exact"]
    # about prompts_per_partition documents' bytes a partition
    assert abs(corpus["partition_mb"] * (1 << 20) - corpus["bytes"] / n * 500) < 0.001 * (1 << 20)
    assert corpus["glob"].endswith("part-*.jsonl")


def test_corpus_reads_are_their_own_stage(tmp_path: Path) -> None:
    """A corpus partition's read commits a ``generate`` manifest (tasks/corpus.py); the bench
    shows it as stage ``read``, apart from the engine's generation (the diversity baseline)."""
    root = make_store(tmp_path)
    store = open_store(str(root))
    read = {"documents": 40, "chars": 4000, "checked": 40, "kept": 40, "rejected": 0, "backend": "corpus",
            "source": "corpus", "seconds": 0.25}
    commit_partition(store, RUN, "c00000", "generate", {f"runs/{RUN}/generated/c00000.parquet": _records(40)},
                     read, 1)
    stages = stage_figures(*read_run(root))["stages"]
    assert stages["read"]["partitions"] == 1 and stages["read"]["records_out"] == 40
    assert stages["generate"]["partitions"] == 2 and stages["generate"]["records_out"] == 100
    assert "corpus read" in markdown([{"records": 140, "partitions": 3, "published_records": 93, "run_wall_s": 1.0,
                                       **stage_figures(*read_run(root)),
                                       "memory": {"roles": {}, "total_simultaneous_rss_mib": 1.0}}], [])
