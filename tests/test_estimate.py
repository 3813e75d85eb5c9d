"""``hare plan``: the plan summary, earlier runs' throughput, the estimate, the card lines, the CLI.

Fast: no Ray, no Prefect flow, no model. Earlier runs are fake run.json objects written to a
store with ``hare.store.open_store``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hare.config import ConfigError, load_config
from hare.tasks.estimate import (
    ANSWER_LINE_TOKENS, DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST, DEFAULT_FILL, DEFAULT_REMOVED_SHARE,
    budget_signature, card_section, default_throughput, estimate, gpu_prior, measured_throughput, model_size_b,
    plan_markdown, plan_summary, prompt_budget, register, render_plan, scan_runs, throughput_table,
)
from hare.store import open_store
from hare.tasks.plan import build_plan, is_baseline, split_partitions
from tests.conftest import ROOT, write_run_config

MODEL = "SmolLM2-135M-Instruct"  # ModelConfig's default name, used by write_run_config
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def fake_run(store: Any, name: str, minutes: int, *, model: str = MODEL, status: str = "succeeded",
             per_engine: float = 100.0, engines: int = 1, gpus: float = 0, generated: int = 4,
             max_tokens: int = 16, dataset_tokens: int = 120, generation: bool = True,
             endpoint: dict[str, Any] | None = None) -> str:
    """Write runs/<id>/run.json as a finished run would, ``minutes`` after T0; return the id.
    ``endpoint``: a run of backend openai against that ``model.endpoint``."""
    stamp = (T0 + timedelta(minutes=minutes)).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{name}-{stamp}-{minutes:06x}"
    gen = {"partitions": 4, "generated": generated, "engines": engines, "gpus": gpus,
           "output_tokens": 1000, "wall_seconds": 1000 / (per_engine * engines),
           "output_tokens_per_s": per_engine * engines, "output_tokens_per_s_per_engine": per_engine}
    if gpus:
        gen["output_tokens_per_s_per_gpu"] = per_engine * engines / gpus
    info = {"run_id": run_id, "name": name, "status": status,
            "config": {"name": name, "model": {"name": model, **({"backend": "openai", "endpoint": endpoint}
                                                                  if endpoint else {})},
                       "sampling": {"max_tokens": max_tokens},
                       "plan": {"partitions": 3, "prompts_per_partition": 4}},
            "summary": {"records": 10, "output_tokens": dataset_tokens, **({"generation": gen} if generation else {})}}
    store.put_bytes(f"runs/{run_id}/run.json", json.dumps(info).encode())
    store.put_bytes(f"runs/{run_id}/partitions/p00000.json", b"{}")  # other objects of a run are ignored
    return run_id


# --------------------------------------------------------------------------------- plan summary


def test_plan_summary_counts_match_build_plan(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path))
    s = plan_summary(cfg)
    plan = build_plan(cfg)
    rows = [r for r in plan.to_pylist() if not is_baseline(r["partition_id"])]
    assert s["prompts"] == len(rows) == 12
    assert s["baseline_prompts"] == 2 and s["total_prompts"] == plan.num_rows == 14
    parts = split_partitions(plan)
    assert (s["partitions"], s["baseline_partitions"], s["total_partitions"]) == (3, 1, len(parts))
    for key, column in (("kinds", "kind"), ("audiences", "audience"), ("styles", "style")):
        assert {k: v for k, v in s[key].items() if v} == dict(Counter(r[column] for r in rows))
        assert sum(s[key].values()) == s["prompts"]
    assert s["domains"] == {"Mathematics": Counter(r["topic_path"].split(" > ")[0] for r in rows)["Mathematics"],
                            "Sciences": Counter(r["topic_path"].split(" > ")[0] for r in rows)["Sciences"]}
    assert sum(s["domains"].values()) == 12
    # nothing measured: max_tokens x the default fill factor, and the dict says so
    assert s["source"]["kind"] == "default" and "not measured" in s["source"]["detail"]
    assert s["expected_tokens_per_prompt"] == 16 * DEFAULT_FILL
    assert s["expected_output_tokens"] == round(14 * 16 * DEFAULT_FILL)


def test_plan_summary_of_the_demo_config() -> None:
    s = plan_summary(load_config(ROOT / "configs" / "demo.yaml"))
    # 48 synthesized + 24 rows of data/tasks/qa-mini.jsonl rewritten + 16 baseline prompts
    assert (s["prompts"], s["rewrite_prompts"], s["baseline_prompts"], s["total_prompts"]) == (48, 24, 16, 88)
    # 6 synthesized + 2 rewrite (12 rows each) + 4 corpus partitions (2 files of ~85-100 KB, 0.05 MB each)
    assert (s["partitions"], s["baseline_partitions"]) == (12, 2)
    assert [(x["name"], x["kind"], x["partitions"]) for x in s["sources"]] == [
        ("pd-prose", "corpus", 4), ("synthesize", "synthesize", 6), ("qa-rewrite", "rewrite", 2)]
    assert len(set(s["kinds"].values())) == 1 and sum(s["kinds"].values()) == 48  # equal shares of the kinds
    assert len(s["domains"]) == 25 and sum(s["domains"].values()) == 48


def test_tokens_per_prompt_measured_by_earlier_runs_of_the_same_max_tokens(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path))  # 3 x 4 prompts + 2 baseline, max_tokens 16
    store = open_store(str(tmp_path / "store"))
    fake_run(store, "a", 1, dataset_tokens=120)  # 10 tokens per dataset prompt
    fake_run(store, "b", 2, dataset_tokens=144)  # 12
    fake_run(store, "c", 3, dataset_tokens=180)  # 15
    fake_run(store, "d", 4, dataset_tokens=2400, max_tokens=256)  # another max_tokens: not used
    fake_run(store, "e", 5, dataset_tokens=2400, model="Qwen2.5-7B-Instruct")  # another model
    s = plan_summary(cfg, store)
    assert s["source"]["kind"] == "measured" and s["source"]["runs"] == 3
    assert s["source"]["newest_run"].startswith("c-")
    assert s["expected_tokens_per_prompt"] == 12
    assert s["expected_output_tokens"] == 14 * 12
    # a run with a top-up round: its tokens are not the plan's prompts' (the top-up term counts them)
    run_id = fake_run(store, "f", 6, dataset_tokens=300)
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    info["summary"]["generation"]["top_up"] = [{"round": 1, "output_tokens": 120}]
    store.put_bytes(f"runs/{run_id}/run.json", json.dumps(info).encode())
    assert plan_summary(cfg, store)["expected_tokens_per_prompt"] == 13.5  # median of 10, 12, 15, 15


# --------------------------------------------------------------------------- earlier runs' figures


def test_measured_throughput_same_model_succeeded_runs_only(store_url: str) -> None:
    store = open_store(store_url)
    fake_run(store, "zzz", 1, per_engine=60)                          # oldest, sorts last by name
    newest = fake_run(store, "aaa", 30, per_engine=100)                # newest by time, first by name
    fake_run(store, "mmm", 10, per_engine=80)
    fake_run(store, "mmm", 11, per_engine=5, status="failed")
    fake_run(store, "mmm", 12, per_engine=5, status="interrupted")
    fake_run(store, "mmm", 13, per_engine=9999, model="SmolLM2-360M-Instruct")
    fake_run(store, "mmm", 14, per_engine=5, generation=False)        # succeeded, but no generation figures
    fake_run(store, "mmm", 15, per_engine=5, generated=0)             # a resume that generated nothing
    gpu = fake_run(store, "gpu", 20, per_engine=8000, engines=2, gpus=2)

    cpu = measured_throughput(store, MODEL, on_gpu=False)
    assert cpu is not None
    assert cpu["runs"] == 3 and cpu["tokens_per_s_per_engine"] == 80  # median of 60, 80, 100
    assert cpu["newest_run"] == newest and cpu["tokens_per_s_per_gpu"] is None
    both = measured_throughput(store, MODEL)
    assert both is not None and both["runs"] == 4 and both["tokens_per_s_per_gpu"] == 8000
    on_gpu = measured_throughput(store, MODEL, on_gpu=True)
    assert on_gpu is not None and on_gpu["run_ids"] == [gpu] and on_gpu["tokens_per_s_per_engine"] == 8000
    assert measured_throughput(store, "Llama-3-8B") is None


def test_scan_reads_only_the_newest_run_json(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    ids = [fake_run(store, f"n{i % 3}", i) for i in range(25)]
    store.put_bytes("runs/hand-picked-id/run.json", b'{"status": "succeeded"}')  # no stamp: the oldest
    scanned = scan_runs(store)
    assert [r["run_id"] for r in scanned] == ids[::-1][:20]
    assert [r["run_id"] for r in scan_runs(store, limit=2)] == [ids[24], ids[23]]
    assert measured_throughput(open_store(str(tmp_path / "empty")), MODEL) is None


# ------------------------------------------------------------------------------------- estimate


def test_estimate_default_when_the_store_is_empty(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path))
    est = estimate(cfg, open_store(str(tmp_path / "store")))
    assert est["source"]["kind"] == "default" and est["source"]["detail"].startswith("default, not measured")
    assert est["tokens_source"]["kind"] == "default"
    assert est["device"] == "cpu" and est["engines"] == 1 and est["model_size"] == "135M"
    assert est["tokens_per_s_per_engine"] == 100.0  # the 135M CPU figure of docs/benchmarks.md
    assert est["expected_output_tokens"] == round(14 * 16 * DEFAULT_FILL)
    assert est["wall_seconds"] == pytest.approx(est["expected_output_tokens"] / 100.0, abs=0.1)
    assert est["gpu_hours"] == 0
    assert est["engine_hours"] == pytest.approx(est["wall_seconds"] / 3600, rel=1e-3)
    assert not (tmp_path / "store").exists()  # a dry run writes nothing


def test_two_replicas_halve_the_wall_time(tmp_path: Path) -> None:
    one = estimate(load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 0,
                                                                   "replicas": 1})), None)
    two = estimate(load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 0,
                                                                   "replicas": 2})), None)
    assert two["engines"] == 2 and two["engines_from"] == "model.replicas"
    assert two["expected_output_tokens"] == one["expected_output_tokens"]
    assert two["wall_seconds"] == pytest.approx(one["wall_seconds"] / 2, abs=0.1)
    assert two["engine_hours"] == pytest.approx(one["engine_hours"], rel=1e-2)  # same work, twice the engines


def test_estimate_on_gpus_uses_measured_per_gpu_throughput(tmp_path: Path) -> None:
    path = write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 0, "num_gpus": 2,
                                             "tensor_parallel_size": 2})
    cfg = load_config(path)
    store = open_store(str(tmp_path / "store"))
    default = estimate(cfg, store, gpus=8)  # replicas null: 8 GPUs / 2 per engine
    assert default["engines"] == 4 and default["gpus"] == 8 and default["device"] == "gpu"
    assert default["source"]["kind"] == "default" and "not measured" in default["source"]["detail"]
    # 135M: the published 8B H100 figure x 4 (the table's cap on small-model growth), per GPU
    assert default["tokens_per_s_per_gpu"] == round(8088.35 * 4, 1)
    assert default["tokens_per_s_per_engine"] == round(8088.35 * 4 * 2, 1)
    assert estimate(cfg, store)["engines"] == 1  # no --gpus, no replicas: one engine

    fake_run(store, "g", 1, per_engine=6000, engines=2, gpus=4)  # 3,000 tok/s per GPU
    fake_run(store, "c", 2, per_engine=100)                       # a CPU run: not for a GPU estimate
    est = estimate(cfg, store, gpus=8)
    assert est["source"]["kind"] == "measured" and est["source"]["runs"] == 1
    assert est["tokens_per_s_per_gpu"] == 3000 and est["tokens_per_s_per_engine"] == 6000
    busy = min(4, est["engines"])  # 4 partitions (3 + 1 baseline), 4 engines
    assert est["wall_seconds"] == pytest.approx(est["expected_output_tokens"] / (6000 * busy), abs=0.1)
    assert est["gpu_hours"] == pytest.approx(est["wall_seconds"] / 3600 * 4 * 2, rel=1e-2)


def test_model_size_and_default_table() -> None:
    assert model_size_b("SmolLM2-135M-Instruct") == pytest.approx(0.135)
    assert model_size_b("HuggingFaceTB/SmolLM2-1.7B-Instruct") == 1.7
    assert model_size_b("Meta-Llama-3.1-8B-Instruct") == 8
    assert model_size_b("my-model") is None
    assert default_throughput("Meta-Llama-3.1-8B-Instruct", on_gpu=True)["tokens_per_s_per_gpu"] == 8088.4
    assert "size unknown" in default_throughput("my-model", on_gpu=True)["detail"]
    assert default_throughput("SmolLM2-1.7B", on_gpu=False)["tokens_per_s_per_engine"] < 100


LAMBDA = "https://github.com/LambdaLabsML/vllm-benchmark/blob/main/benchmark_v0.md"


def test_the_throughput_table_holds_published_figures_with_their_sources() -> None:
    table = throughput_table()
    assert table["default_gpu"] in table["gpus"]
    for gpu, rows in table["gpus"].items():
        assert rows == sorted(rows, key=lambda r: r["params_b"]) and len(rows) >= 2, gpu
        for row in rows:
            assert row["source"].startswith("https://") and row["output_tokens_per_s"] > 0 and row["vllm"], row
            assert row["tensor_parallel"] >= 1 and row["setup"], row
    assert table["cpu"]["source"] == "docs/benchmarks.md"  # the project's own measurement


def test_default_gpu_throughput_published_interpolated_and_extrapolated() -> None:
    """A size the table has is its figure per GPU; between two sizes, log-log interpolation;
    outside, the table's stated rules; the detail says which, and cites every row used."""
    llama8 = default_throughput("Meta-Llama-3.1-8B-Instruct", on_gpu=True)
    assert llama8["derivation"] == "published" and llama8["tokens_per_s_per_gpu"] == 8088.4
    assert llama8["sources"] == [LAMBDA] and LAMBDA in llama8["detail"] and "H100-80GB" in llama8["detail"]
    seventy = default_throughput("Llama-3.3-70B-Instruct", on_gpu=True)
    assert seventy["tokens_per_s_per_gpu"] == round(3542.88 / 4, 1)  # TP 4: per GPU
    mid = default_throughput("Qwen2.5-14B-Instruct", on_gpu=True)
    assert mid["derivation"] == "interpolated" and "Llama-3.1-8B" in mid["detail"] and "Llama-3.1-70B" in mid["detail"]
    import math

    t = math.log(14 / 8) / math.log(70 / 8)
    expected = math.exp((1 - t) * math.log(8088.35) + t * math.log(3542.88 / 4))
    assert mid["tokens_per_s_per_gpu"] == round(expected, 1) and 3542.88 / 4 < expected < 8088.35
    small = gpu_prior(0.135)
    assert small["how"] == "extrapolated" and small["rate"] == pytest.approx(8088.35 * 4)  # capped at x 4
    assert gpu_prior(2.0)["rate"] == pytest.approx(8088.35 * 2)  # (8 / 2) ^ 0.5
    assert gpu_prior(810)["rate"] == pytest.approx(1714.07 / 8 / 2)  # past 405B: inverse to the size
    a100 = default_throughput("Mistral-7B-Instruct-v0.3", on_gpu=True, gpu="A100-80GB")
    assert a100["derivation"] == "published" and a100["tokens_per_s_per_gpu"] == 1591.4 and "vLLM 0.5.4" in a100["detail"]
    with pytest.raises(ValueError, match="no published throughput for GPU 'T4'"):
        gpu_prior(8, "T4")


def test_hare_plan_of_the_cluster_config_with_no_earlier_run_uses_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/cluster.yaml (SmolLM2-135M, one H100 per engine) against an empty store: the
    estimate cites the published figures it was derived from, and the card carries that line
    beside the actual."""
    args = _parser().parse_args(["plan", str(ROOT / "configs" / "cluster.yaml"), "--store", str(tmp_path / "s"),
                                 "--gpus", "16", "--json"])
    assert args.fn(args) == 0
    doc = json.loads(capsys.readouterr().out)
    est = doc["estimate"]
    assert est["source"]["kind"] == "default" and est["source"]["derivation"] == "extrapolated"
    assert est["source"]["sources"] == [LAMBDA] and est["source"]["gpu"] == "H100-80GB"
    assert est["engines"] == 16 and est["tokens_per_s_per_gpu"] == round(8088.35 * 4, 1)
    busy = min(16, doc["plan"]["total_partitions"])
    assert est["wall_seconds"] == pytest.approx(est["expected_output_tokens"] / (8088.35 * 4 * busy), rel=1e-3)
    args = _parser().parse_args(["plan", str(ROOT / "configs" / "cluster.yaml"), "--store", str(tmp_path / "s"),
                                 "--gpus", "16", "--gpu-type", "A100-80GB", "--json"])
    assert args.fn(args) == 0
    a100 = json.loads(capsys.readouterr().out)["estimate"]
    assert a100["tokens_per_s_per_gpu"] == round(1591.4 * 4, 1) and a100["wall_seconds"] > est["wall_seconds"]
    card = "\n".join(card_section(est, {"engines": 16, "gpus": 16, "output_tokens": 1000, "wall_seconds": 60.0,
                                         "kept_output_tokens": 500}))
    assert LAMBDA in card and "default, not measured" in card


# ------------------------------------------------------------------------------------ card lines


def test_card_section_cpu_run(tmp_path: Path) -> None:
    est = estimate(load_config(write_run_config(tmp_path)), None)
    actual = {"partitions": 4, "generated": 4, "engines": 1, "gpus": 0, "output_tokens": 11312,
              "wall_seconds": 110.8, "output_tokens_per_s": 102.1, "output_tokens_per_s_per_engine": 102.1,
              "kept_output_tokens": 2000}
    text = "\n".join(card_section(est, actual))
    assert "| generation wall time | 2 s | 1 min 51 s |" in text
    assert "| output tokens | 179 | 11,312 |" in text
    assert "| output tok/s | 100.0 | 102.1 |" in text
    assert "| GPU-hours per 1M kept tokens | | CPU run: n/a |" in text
    assert f"| engine-hours per 1M kept tokens | | {110.8 / 3600 / 2000 * 1e6:,.3f} |" in text
    assert "default, not measured" in text


def test_card_section_gpu_run(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 0,
                                                        "num_gpus": 1, "replicas": 2}))
    est = estimate(cfg, None)
    actual = {"engines": 2, "gpus": 2, "output_tokens": 3_000_000, "wall_seconds": 3600.0,
              "output_tokens_per_s": 833.3, "kept_output_tokens": 1_000_000}
    text = "\n".join(card_section(est, actual))
    assert "| GPU-hours per 1M kept tokens | | 2.000 |" in text  # 2 GPUs x 1 h for 1M kept tokens
    assert "| GPU-hours |" in text and "| 2.000 |" in text
    assert "engine-hours per 1M kept tokens" not in text
    assert "| kept output tokens (published records) | | 1,000,000 |" in text
    nothing_kept = "\n".join(card_section(est, {**actual, "kept_output_tokens": 0}))
    assert "n/a (no kept tokens)" in nothing_kept


# ------------------------------------------------------------------- an OpenAI-compatible endpoint

ENDPOINT_A = {"base_url": "http://10.0.0.5:8000/v1", "max_concurrency": 4}


def endpoint_config(tmp_path: Path, **endpoint: Any) -> Any:
    return load_config(write_run_config(tmp_path, model={"backend": "openai", "num_cpus": 0.5,
                                                         "endpoint": {**ENDPOINT_A, **endpoint}}))


def test_an_endpoints_throughput_comes_from_runs_against_that_endpoint_only(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    # the same endpoint, spelled with a trailing slash: endpoint_key names both alike
    mine = fake_run(store, "a", 1, per_engine=250, engines=2,
                    endpoint={**ENDPOINT_A, "base_url": "http://10.0.0.5:8000/v1/"})
    fake_run(store, "b", 2, per_engine=9999, endpoint={**ENDPOINT_A, "base_url": "http://10.0.0.6:8000/v1"})
    fake_run(store, "s", 3, per_engine=7777, endpoint={**ENDPOINT_A, "served_model": "other-model"})
    in_process = fake_run(store, "g", 4, per_engine=8000, gpus=1)  # in-process vLLM of the same model name
    fake_run(store, "f", 5, per_engine=5, endpoint=ENDPOINT_A, status="failed")

    est = estimate(endpoint_config(tmp_path), store)
    assert est["device"] == "endpoint" and est["endpoint"] == "http://10.0.0.5:8000/v1"
    assert est["source"]["kind"] == "measured" and est["source"]["run_ids"] == [mine]
    assert est["tokens_per_s"] == 500, "the endpoint's rate: the run's tokens/s over its 2 engines, not per engine"
    assert est["source"]["in_flight"] == [8] and "at 8 requests in flight" in est["source"]["detail"]
    assert est["wall_seconds"] == pytest.approx(est["expected_output_tokens"] / 500, abs=0.1)
    assert est["gpu_hours"] is None and est["gpus"] == 0, "the server's GPUs are not hare's"
    assert est["wall_hours"] == pytest.approx(est["wall_seconds"] / 3600, abs=1e-4)
    # nor is an endpoint's figure taken for the in-process engines of the same model name
    assert measured_throughput(store, MODEL)["run_ids"] == [in_process]  # type: ignore[index]


def test_an_endpoint_nobody_measured_gets_the_stated_assumption_not_a_gpu_prior(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    fake_run(store, "g", 1, per_engine=8000, gpus=1)  # a GPU figure of the same model: not for an endpoint
    est = estimate(endpoint_config(tmp_path, max_concurrency=3), store)
    assert est["source"]["kind"] == "default" and est["in_flight"] == 3
    assert est["tokens_per_s"] == DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST * 3
    assert "no succeeded run sent SmolLM2-135M-Instruct to http://10.0.0.5:8000/v1" in est["source"]["detail"]
    assert "max_concurrency 3" in est["source"]["detail"] and "GPU" not in est["source"]["detail"]
    assert est["cost"] is None, "no price: hours only"
    text = plan_markdown(plan_summary(endpoint_config(tmp_path)), est)
    assert "| money | no price set" in text and "GPU-hours |" not in text
    assert "| endpoint wall hours |" in text


def test_an_endpoints_money_is_input_and_output_tokens_at_the_prices(tmp_path: Path) -> None:
    cfg = endpoint_config(tmp_path, price_per_m_input=0.5, price_per_m_output=2.0)
    est = estimate(cfg, None)
    tokens_in, tokens_out = est["expected_input_tokens"], est["expected_output_tokens"]
    assert tokens_in > 14 * 10, "14 rendered prompts of tens of words each"
    assert est["input_tokens_source"]["detail"].startswith("estimated, not measured")
    assert est["cost"] == pytest.approx(tokens_in * 0.5 / 1e6 + tokens_out * 2.0 / 1e6)

    # the card prices every generate manifest's tokens (the top-up round's too) at the estimate's prices
    actual = {"engines": 1, "gpus": 0, "output_tokens": 900_000, "wall_seconds": 7200.0, "output_tokens_per_s": 125.0,
              "manifest_prompt_tokens": 1_500_000, "manifest_output_tokens": 900_000, "kept_output_tokens": 500_000,
              "top_up": [{"round": 1, "manifest_prompt_tokens": 500_000, "manifest_output_tokens": 100_000}]}
    text = "\n".join(card_section(est, actual))
    assert "| input / output tokens billed (generate manifests, all rounds) |" in text
    assert "| 2,000,000 / 1,000,000 |" in text
    assert "| money at 0.5 / 2 per 1M input / output tokens |" in text
    assert text.count("| 3.00 |") == 1, "2M x 0.5 + 1M x 2 per million = 3.00"
    assert "| money per 1M kept tokens | | 6.00 |" in text, "3.00 for 500,000 kept tokens"
    assert "| endpoint wall hours |" in text and "| 2.000 |" in text and "| GPU-hours" not in text
    # a run that recorded no prompt tokens (an older run.json) has no actual money, not a wrong one
    old = {k: v for k, v in actual.items() if k != "top_up"}
    del old["manifest_prompt_tokens"]
    assert "| not recorded |" in "\n".join(card_section(est, old))

    unpriced = "\n".join(card_section(estimate(endpoint_config(tmp_path), None), actual))
    assert "money" not in unpriced.split("Throughput of the estimate")[0]
    assert "| endpoint wall hours per 1M kept tokens | | 4.000 |" in unpriced


# ---------------------------------------------------------------------------------- rendering, CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hare")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_plan_prints_the_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_run_config(tmp_path)
    store = tmp_path / "runs-store"
    fake_run(open_store(str(store)), "t", 1, per_engine=50)
    args = _parser().parse_args(["plan", str(path), "--store", str(store)])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "12 + 2 baseline = 14" in out
    assert "3 + 1 baseline = 4" in out
    assert "expected output tokens │ 140 " in out  # 14 prompts x 10 tokens measured by the earlier run
    assert "measured: median of 1 succeeded CPU run" in out
    assert "prompts per kind" in out and "explanation" in out and "math_word_problem" in out


def test_cli_plan_json_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_run_config(tmp_path)
    args = _parser().parse_args(["plan", str(path), "--json", "--gpus", "4"])
    assert args.gpus == 4.0
    assert args.fn(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["total_prompts"] == 14 and sum(doc["plan"]["kinds"].values()) == 12
    assert doc["estimate"]["source"]["kind"] == "default"
    assert not (tmp_path / "store").exists()  # the config's store: read, never written

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nplan: {partitions: 1, prompts_per_partition: 1}\nmodel: {nmae: typo}\n")
    args = _parser().parse_args(["plan", str(bad)])
    with pytest.raises(ConfigError, match="nmae"):
        args.fn(args)


def test_render_plan_and_markdown(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    cfg = load_config(write_run_config(tmp_path))
    s = plan_summary(cfg)
    est = estimate(cfg, None, summary=s)
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(render_plan(s, est))
    text = console.export_text()
    assert "hare plan: t" in text and "12 + 2 baseline = 14" in text and "0 (CPU run)" in text
    md = plan_markdown(s, est)
    assert md.startswith("# Plan of `t`")
    assert "| expected output tokens | 179 |" in md
    assert "## Prompts per kind" in md and "| explanation |" in md
    assert "default, not measured" in md


def test_the_budget_counts_each_kinds_max_tokens_the_k_solutions_and_top_up_rounds(tmp_path: Path) -> None:
    """A self-consistency kind costs its problem plus k solutions (plus k forced answer lines), a
    kind with its own max_tokens costs that, and each top-up round re-plans the assumed removed
    share of the round before."""
    cfg = load_config(write_run_config(
        tmp_path, axes={"kinds": ["math_word_problem", "explanation"]},
        plan={"partitions": 2, "prompts_per_partition": 5, "top_up_rounds": 2},
        sampling={"max_tokens": 16, "by_kind": {"math_word_problem": {"max_tokens": 40},
                                                "explanation": {"max_tokens": 30}}},
        validation={"enabled": True, "k": {"math_word_problem": 3}, "problem_max_tokens": 20,
                    "answer_line": "guided"}))
    assert prompt_budget(cfg, "math_word_problem") == 20 + 3 * 40 + 3 * ANSWER_LINE_TOKENS
    assert prompt_budget(cfg, "explanation") == 30
    s = plan_summary(cfg)
    kinds = s["kinds"]
    plan_tokens = (kinds["math_word_problem"] * 188 + kinds["explanation"] * 30 + s["baseline_prompts"] * 16) * DEFAULT_FILL
    top_up = round(10 * DEFAULT_REMOVED_SHARE + 10 * DEFAULT_REMOVED_SHARE ** 2)
    assert s["expected_top_up_prompts"] == top_up and s["top_up_rounds"] == 2
    per_dataset_prompt = (kinds["math_word_problem"] * 188 + kinds["explanation"] * 30) * DEFAULT_FILL / 10
    assert s["expected_output_tokens"] == round(plan_tokens + top_up * per_dataset_prompt)
    assert "k {'math_word_problem': 3}" in s["source"]["detail"]
    # an earlier run measures this one only with the same budget: other per-kind limits do not count
    store = open_store(str(tmp_path / "store"))
    run_id = fake_run(store, "a", 1, dataset_tokens=500)
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert plan_summary(cfg, store)["source"]["kind"] == "default"
    info["config"] = {**cfg.to_jsonable(), "name": "a", "model": {"name": MODEL}}  # a vllm run of the model
    store.put_bytes(f"runs/{run_id}/run.json", json.dumps(info).encode())
    assert plan_summary(cfg, store)["source"]["kind"] == "measured"
    assert budget_signature(cfg.to_jsonable()) != budget_signature(
        {**cfg.to_jsonable(), "validation": {**cfg.to_jsonable()["validation"], "k": {"math_word_problem": 5}}})


def test_the_decontamination_judge_is_in_the_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 28: with ``decontam.judge`` on, the plan counts the judge's pairs (records checked x
    the measured pairs per record), its output tokens among the expected output tokens and its
    prompt tokens among the input tokens; `hare plan` shows it with its source. Off: nothing."""
    from hare.tasks.estimate import (JUDGE_OUTPUT_TOKENS_PER_PAIR, JUDGE_PAIRS_PER_RECORD,
                                     JUDGE_PROMPT_TOKENS_PER_PAIR, expected_input_tokens)

    bench = {"benchmarks": [{"name": "gsm8k", "source": str(ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl")}]}
    off = plan_summary(load_config(write_run_config(tmp_path, decontamination=bench, plan={
        "partitions": 100, "prompts_per_partition": 100, "top_up_rounds": 0})))
    on_path = write_run_config(tmp_path, decontamination={**bench, "judge": True},
                               plan={"partitions": 100, "prompts_per_partition": 100, "top_up_rounds": 0})
    on_cfg = load_config(on_path)
    on = plan_summary(on_cfg)
    assert off["judge"] is None
    pairs = on["judge"]["pairs"]
    assert pairs == round(10_000 * JUDGE_PAIRS_PER_RECORD["cpu_routes"])
    assert on["judge"]["output_tokens"] == round(pairs * JUDGE_OUTPUT_TOKENS_PER_PAIR)
    assert on["expected_output_tokens"] == off["expected_output_tokens"] + on["judge"]["output_tokens"]
    judge_in = round(pairs * JUDGE_PROMPT_TOKENS_PER_PAIR["cpu_routes"])
    added = expected_input_tokens(on_cfg, on)["tokens"] - expected_input_tokens(on_cfg, off)["tokens"]
    assert added == pytest.approx(judge_in, abs=1)  # each total is rounded once
    args = _parser().parse_args(["plan", str(on_path)])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert f"~{pairs:,} pairs" in out and "decontamination judge: default, not measured" in out
    # with GPU embedders the every-window route proposes pairs too: its own, measured rate
    wide = plan_summary(load_config(write_run_config(tmp_path, decontamination={**bench, "judge": True},
                                                     embedding={"num_gpus": 0.5},
                                                     plan={"partitions": 100, "prompts_per_partition": 100,
                                                           "top_up_rounds": 0})))
    assert wide["judge"]["pairs"] == round(10_000 * JUDGE_PAIRS_PER_RECORD["every_window"]) > pairs
    assert "with the every-window route" in wide["judge"]["detail"]
