"""Generation throughput: the same prompts through raw ``vllm.LLM.generate`` and through ``synthesize``.

    PYTHONPATH=. .venv/bin/python -m bench.gen_throughput [--config bench/configs/gen-throughput.yaml]

Both paths get the plan of one config (same prompts, chat template, sampling and per-prompt
seeds, same engine settings), one after the other in one invocation:

- raw: one ``LLM`` in a fresh process, every prompt in a single ``generate`` call (the best
  continuous batching can do), timed around that call;
- synthesize: the whole flow (Prefect + Ray, engine actors fed whole partitions by the queue);
  its generation-stage wall time from run.json (first partition submitted -> last one committed,
  engines already loaded, as for raw).

``--repeats N`` (default 3) rounds of (raw, synthesize), interleaved so that a slow moment of a
shared machine hits both paths. Reports output tokens/s of each and the ratio per round, and
over the rounds the median, min, max and relative spread ((max - min) / median); the headline
is the median ratio (goal >= 0.95). On a GPU, the busy fraction sampled with NVML during
generation (goal >= 0.90). Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "bench" / "configs" / "gen-throughput.yaml"


def raw_vllm(config_path: str) -> dict[str, Any]:
    """Runs in a spawned process: load the engine, then time one generate over all prompts."""
    from hare.backends.vllm_backend import VLLMBackend
    from hare.config import load_config
    from hare.engines.gpu_monitor import GpuSampler
    from hare.engines.models import resolve_model
    from hare.tasks.generate import requests_from_plan
    from hare.tasks.plan import build_plan

    cfg = load_config(config_path)
    resolved = resolve_model(cfg.model.source)
    backend = VLLMBackend(cfg.model, resolved.path, resolved.revision)
    requests = requests_from_plan(build_plan(cfg))
    items = [(r, backend.prompt_ids(r)) for r in requests]  # chat template, as synthesize does
    started = time.perf_counter()
    with GpuSampler() as gpu:
        outputs = backend.run_batch(items, cfg.sampling)  # one LLM.generate over every prompt
    seconds = time.perf_counter() - started
    tokens = [len(o.outputs[0].token_ids) for o in outputs]
    return {"requests": len(requests), "output_tokens": sum(tokens), "seconds": round(seconds, 2),
            "output_tokens_per_s": round(sum(tokens) / seconds, 2), "per_request_tokens": tokens,
            "engine": backend.name, **gpu.summary()}


def through_synthesize(config_path: str, store: str) -> dict[str, Any]:
    from hare.flows.synthesize import run_synthesize
    from hare.store.runs import read_run
    from hare.store import open_store

    result = run_synthesize(config_path, store_url=store)
    info = read_run(open_store(result["store"]), result["run_id"])
    return {"run_id": result["run_id"], **info["summary"]["generation"]}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the relative spread ((max - min) / median) of repeated measurements."""
    med = statistics.median(values)
    return {"median": round(med, 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "spread": round((max(values) - min(values)) / med, 3) if med else None, "n": len(values),
            "values": [round(v, 3) for v in values]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of (raw, synthesize), interleaved so slow moments of the machine hit both")
    p.add_argument("--out", default=None, help="result JSON (default: bench/results/gen_throughput-<date>.json)")
    args = p.parse_args()

    rounds: list[dict[str, Any]] = []
    spawn = multiprocessing.get_context("spawn")  # the raw engine's memory is gone before synthesize starts
    for i in range(args.repeats):
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            raw = pool.submit(raw_vllm, args.config).result()
        with tempfile.TemporaryDirectory(prefix="hare-gen-bench-") as tmp:
            synth = through_synthesize(args.config, f"file://{tmp}/store")
        ratio = synth["output_tokens_per_s"] / raw["output_tokens_per_s"]
        rounds.append({"round": i + 1, "raw_vllm": {k: v for k, v in raw.items() if k != "per_request_tokens"},
                       "synthesize": synth, "ratio": round(ratio, 3),
                       "same_output_tokens": synth["output_tokens"] == raw["output_tokens"]})
        print(f"round {i + 1}/{args.repeats}: raw {raw['output_tokens_per_s']} tok/s, synthesize "
              f"{synth['output_tokens_per_s']} tok/s, ratio {ratio:.3f}", flush=True)

    raw0 = rounds[0]["raw_vllm"]
    from bench.provenance import provenance

    result = {
        **provenance(),
        "date": date.today().isoformat(),
        "machine": f"{platform.node()} {platform.machine()} {multiprocessing.cpu_count()} cores",
        "gpu": raw0.get("gpu_name", "none (CPU)"),
        "config": str(Path(args.config).resolve().relative_to(ROOT)),
        "repeats": args.repeats,
        "raw_vllm_tokens_per_s": spread([r["raw_vllm"]["output_tokens_per_s"] for r in rounds]),
        "synthesize_tokens_per_s": spread([r["synthesize"]["output_tokens_per_s"] for r in rounds]),
        "ratio_synthesize_over_raw": spread([r["ratio"] for r in rounds]),
        "same_output_tokens": all(r["same_output_tokens"] for r in rounds),
        "rounds": rounds,
    }
    out = Path(args.out or ROOT / "bench" / "results" / f"gen_throughput-{result['date']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    r = result["ratio_synthesize_over_raw"]
    print(f"ratio median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}, {args.repeats} rounds; "
          f"goal >= 0.95); written to {out}")


if __name__ == "__main__":
    main()
