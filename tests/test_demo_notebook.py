"""The demo config, shrunk, runs end to end with the real model; the diversity notebook then
executes on its output (nbclient), so neither the demo path nor the notebook can rot."""

import json
from pathlib import Path

import pytest

from hare.config import load_config
from hare.flows.synthesize import run_synthesize
from hare.run.notebooks import execute_notebook
from hare.store import open_store
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
    # 48 tokens cut every answer short: relax the rules that would drop everything at this size.
    raw["quality"] = {"drop_truncated": False, "require_answer": False, "min_words": {"default": 10}}
    raw.update(plan={"partitions": 2, "prompts_per_partition": 3},
               diversity={"baseline_prompts": 3, "sample": 100},
               store={"url": str(tmp_path / "store")})
    raw["sampling"]["max_tokens"] = 48
    small.write_text(yaml.safe_dump(raw))

    result = run_synthesize(str(small))
    store = open_store(result["store"])
    run_id = result["run_id"]
    report = json.loads(store.get_bytes(f"runs/{run_id}/diversity.json"))
    assert report["records"] == result["records"] and report["baseline_records"] >= 1
    assert {"dataset", "baseline", "dataset_at_baseline_size"} <= set(report["figures"])
    assert report["leaves_planned"] == 6
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert "## Diversity" in card and "anchor_entropy" in card
    assert "## Quality" in card and "## Decontamination" in card
    quality = json.loads(store.get_bytes(f"runs/{run_id}/quality.json"))
    decontam = json.loads(store.get_bytes(f"runs/{run_id}/decontam.json"))
    assert quality["checked"] == 6 and decontam["checked"] == quality["kept"]
    assert result["records"] == decontam["kept"] == decontam["checked"] - decontam["rejected"]

    out = tmp_path / "figures"
    monkeypatch.setenv("HARE_STORE", result["store"])
    monkeypatch.setenv("HARE_RUN_ID", run_id)
    monkeypatch.setenv("HARE_NOTEBOOK_OUT", str(out))
    nb = execute_notebook(ROOT / "notebooks" / "diversity.ipynb", tmp_path / "executed.ipynb")
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"run {run_id}" in printed and f"{result['records']} records" in printed
    assert (out / "coverage.png").stat().st_size > 10_000
    assert (out / "embeddings.png").stat().st_size > 10_000
