"""The demo config, shrunk, runs end to end with the real model; the diversity notebook then
executes on its output (nbclient), so neither the demo path nor the notebook can rot."""

import json
from pathlib import Path

import pytest

from hare.config import load_config
from hare.flows.synthesize import run_synthesize
from hare.run.notebooks import execute_notebook
from hare.store import open_store
from hare.store.manifest import read_manifest
from hare.store.tables import from_parquet_bytes
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_demo_run_then_diversity_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = ROOT / "configs" / "demo.yaml"
    small = tmp_path / "demo-small.yaml"
    import yaml

    raw = yaml.safe_load(demo.read_text())
    resolved = load_config(demo)
    raw["topics"]["path"] = str(resolved.topics.path)
    raw["axes"]["path"] = str(resolved.axes.path)
    for bench, done in zip(raw["decontam"]["benchmarks"], resolved.decontam.benchmarks):
        bench["source"] = done.source  # every benchmark's path, resolved against configs/
    # the demo's three sources, resolved, smaller: one corpus file, three rows rewritten
    raw["sources"] = [{**s.model_dump(mode="json"), **({"limit": 3} if s.kind == "rewrite" else {}),
                       **({"paths": s.paths[:1]} if s.kind == "corpus" else {})} for s in resolved.sources]
    # 48 tokens cut every answer short: relax the rules that would drop everything at this size.
    raw["quality"] = {"drop_truncated": False, "require_answer": False, "min_words": {"default": 10}}
    raw.update(plan={"partitions": 2, "prompts_per_partition": 3, "allocate": "coverage", "coverage_sample": 20},
               diversity={"baseline_prompts": 3, "sample": 100},
               store={"url": str(tmp_path / "store")})
    raw["sampling"]["max_tokens"] = 48
    small.write_text(yaml.safe_dump(raw))

    result = run_synthesize(str(small))
    store = open_store(result["store"])
    run_id = result["run_id"]
    report = json.loads(store.get_bytes(f"runs/{run_id}/diversity.json"))
    mixture = json.loads(store.get_bytes(f"runs/{run_id}/mixture.json"))
    # diversity is measured on the records every stage kept, before the mixture down-samples them
    assert report["records"] == result["records"] + sum(s["records_down_sampled"] for s in mixture["sources"])
    assert report["baseline_records"] >= 1
    assert {"dataset", "baseline", "dataset_at_baseline_size"} <= set(report["figures"])
    assert report["leaves_planned"] == 6
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert "## Diversity" in card and "anchor_entropy" in card
    assert "## Quality" in card and "## Decontamination" in card
    quality = json.loads(store.get_bytes(f"runs/{run_id}/quality.json"))
    decontam = json.loads(store.get_bytes(f"runs/{run_id}/decontam.json"))
    made = {p: read_manifest(store, run_id, p) for p in json.loads(store.get_bytes(f"runs/{run_id}/run.json"))["partitions"]}
    assert quality["checked"] == sum(m.stats["kept"] for p, m in made.items() if not p.startswith("b"))
    assert decontam["checked"] == quality["kept"]
    # the rewrite source went through the real model: 3 rows, each a record or a named reject
    rewrite = made["r00000"].stats
    assert rewrite["checked"] == 3 and rewrite["source"] == "qa-rewrite" and rewrite["backend"].startswith("vllm")
    rejects = from_parquet_bytes(store.get_bytes(f"runs/{run_id}/rejects/generate/r00000.parquet")).to_pylist()
    assert len(rejects) == rewrite["rejected"] == 3 - rewrite["kept"] and all(r["reject_reason"] for r in rejects)
    # the corpus source and the coverage plan: the card says where the corpus is thin
    assert made["c00000"].stats["source"] == "pd-prose" and made["c00000"].stats["kept"] > 0
    plan_report = json.loads(store.get_bytes(f"runs/{run_id}/plan/report.json"))
    assert plan_report["coverage"]["sampled"] == 20 and "## Where the corpus is thin" in card
    assert "## Mixture by source" in card
    assert decontam["kept"] == decontam["checked"] - decontam["rejected"]
    assert report["records"] <= decontam["kept"]  # dedup may drop some; the mixture is after both

    out = tmp_path / "figures"
    monkeypatch.setenv("HARE_STORE", result["store"])
    monkeypatch.setenv("HARE_RUN_ID", run_id)
    monkeypatch.setenv("HARE_NOTEBOOK_OUT", str(out))
    nb = execute_notebook(ROOT / "notebooks" / "diversity.ipynb", tmp_path / "executed.ipynb")
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"run {run_id}" in printed and f"{result['records']} records" in printed
    assert (out / "coverage.png").stat().st_size > 10_000
    assert (out / "embeddings.png").stat().st_size > 10_000
