"""Reasoning kinds on the real model: how many samples carry a final answer, how many votes pass,
with the final-answer line free and forced (guided decoding), side by side on the same solutions.

    PYTHONPATH=. .venv-cpu/bin/python -m bench.reasoning_kinds [--config configs/demo.yaml]
        [--kinds math_word_problem logical_deduction code] [--prompts 8] [--k 3]
        [--json bench/results/reasoning-DATE.json]

For each kind, the first ``--prompts`` rows of the config's plan with ``axes.kinds`` set to that
kind, through the code a partition runs (tasks/generate.py): the problem call, the k solve calls,
then the forced answer lines (``validation.answer_line: guided``: each solution that finished
without the line is continued with "Final answer:" and a value under vLLM structured outputs);
then cleanup and the validate stage (tasks/cleanup.py, tasks/validate.py) twice, on the
solutions as written (``free``) and with the forced lines (``guided``). Code is sandboxed
(no answer line). One in-process vLLM engine (the config's model and settings), no Ray or
Prefect: this measures the model and the checks, not the orchestration.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent


def kind_config(cfg: Any, kind: str, prompts: int, k: int) -> Any:
    """The config with one kind, enough prompts in one partition, validation on with k samples."""
    axes = cfg.axes.model_copy(update={"kinds": [kind]})
    plan = cfg.plan.model_copy(update={"partitions": 1, "prompts_per_partition": prompts, "top_up_rounds": 0})
    voted = {kind: k} if kind in ("math_word_problem", "logical_deduction") else {}
    validation = cfg.validation.model_copy(update={"enabled": True, "k": voted, "answer_line": "guided"})
    return cfg.model_copy(update={"axes": axes, "plan": plan, "validation": validation})


def run_kind(backend: Any, cfg: Any, kind: str) -> dict[str, Any]:
    from hare.tasks.cleanup import Cleanup
    from hare.tasks.generate import (RecordContext, answer_line_requests, records_from_results,
                                     requests_from_plan, solve_requests, with_answer_lines)
    from hare.tasks.plan import build_plan, is_baseline
    from hare.tasks.validate import validate_table

    plan = build_plan(cfg)
    plan = plan.filter(pa.array([not is_baseline(p) for p in plan.column("partition_id").to_pylist()]))
    t0 = time.perf_counter()
    first = backend.generate(requests_from_plan(plan, cfg.sampling, cfg.validation), cfg.sampling)
    reqs, solves = solve_requests(plan, first, cfg.sampling, cfg.validation)
    solutions = backend.generate(reqs, cfg.sampling) if reqs else []
    solutions = sorted(solutions, key=lambda r: r.prompt_index)
    forced_reqs = answer_line_requests(reqs, solutions, solves, plan) if reqs else []
    forced = backend.generate(forced_reqs, cfg.sampling) if forced_reqs else []
    seconds = time.perf_counter() - t0
    guided = with_answer_lines(solutions, solves, forced) if reqs else None
    ctx = RecordContext("bench", "p00000", backend.name, backend.model, backend.model_revision,
                        cfg.sampling.model_dump(exclude={"by_kind"}), cfg.sampling, tuple(cfg.validation.k))
    out: dict[str, Any] = {"prompts": plan.num_rows, "samples": len(reqs) or plan.num_rows,
                           "generate_seconds": round(seconds, 1),
                           "output_tokens": sum(r.output_tokens for r in [*first, *solutions, *forced]),
                           "problems_failed": sum(1 for r in first if r.error or r.finish_reason == "length")
                           if reqs else None,
                           "solutions_truncated": sum(1 for r in solutions if r.finish_reason == "length"),
                           "forced_lines": guided[2]["forced_answers"] if guided else 0}
    variants = {"free": (solutions, solves)}
    if guided:
        variants["guided"] = guided[:2]
    for name, (sols, slv) in variants.items():
        generated, gen_rejects = records_from_results(plan, first, ctx, list(zip(slv, sols)) if reqs else None)
        cleaned = Cleanup().process(cfg, "bench", "p00000", generated)
        kept, rejects, agg = validate_table(cleaned.kept, cfg)
        reasons = Counter(gen_rejects.column("reject_reason").to_pylist()) + \
            Counter(cleaned.rejects.column("reject_reason").to_pylist()) + Counter(agg["reject_reasons"])
        votes = [json.loads(v) for v in [*kept.column("validation").to_pylist(), *rejects.column("validation").to_pylist()]]
        with_answer = sum(sum(c for a, c in (v.get("counts") or {}).items()) for v in votes)
        out[name] = {"kept": kept.num_rows, "pass_rate": round(kept.num_rows / max(1, plan.num_rows), 3),
                     "samples_with_answer": with_answer if reqs else None,
                     "rejects": dict(reasons.most_common()),
                     "kept_examples": [t[:400] for t in kept.column("text").to_pylist()[:2]],
                     "votes": [{"answers": v.get("answers"), "share": v.get("share")} for v in votes][:12]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--kinds", nargs="+", default=["math_word_problem", "logical_deduction", "code"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / f"reasoning-{date.today().isoformat()}.json"))
    args = p.parse_args()

    from hare.config import load_config
    from hare.engine import make_backend, resolve_on_this_node

    base = load_config(args.config)
    t0 = time.perf_counter()
    backend = make_backend(base.model, resolve_on_this_node(base.model))
    results: dict[str, Any] = {"date": date.today().isoformat(), "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
                               "backend": backend.name, "model": backend.model, "k": args.k,
                               "engine_start_seconds": round(time.perf_counter() - t0, 1), "kinds": {}}
    for kind in args.kinds:
        results["kinds"][kind] = run_kind(backend, kind_config(base, kind, args.prompts, args.k), kind)
        print(kind, json.dumps({x: results["kinds"][kind][x] for x in results["kinds"][kind]
                                if x not in ("free", "guided")}),
              {v: {f: results["kinds"][kind][v][f] for f in ("kept", "pass_rate", "samples_with_answer", "rejects")}
               for v in ("free", "guided") if v in results["kinds"][kind]}, flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
