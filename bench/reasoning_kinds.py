"""Validation pass rate of every task kind on the real model: how many samples carry a final
answer, how many votes pass, with the final-answer line free and forced (guided decoding), side
by side on the same solutions; code through the sandbox; the other kinds through validate's
pass-through (and the quality rules, for information).

    PYTHONPATH=. .venv-cpu/bin/python -m bench.reasoning_kinds [--config configs/demo.yaml]
        [--kinds KIND ...] [--prompts 8] [--k 3] [--json bench/results/reasoning-DATE.json] [--resume]
    PYTHONPATH=. .venv-cpu/bin/python -m bench.reasoning_kinds --render bench/results/reasoning-DATE.json

``--kinds`` defaults to every shipped template (hare/priors/templates/*.yaml). Per kind the
headline ``pass_rate`` is the share of prompts whose record passed validation with the
config's own ``validation.answer_line`` (the demo's: ``free``); tests/test_validate.py checks
the demo's ``axes.kinds`` against the committed results file. The file carries
bench/provenance.py's fields (date, machine, command, git revision) of the first invocation; it
is written after every kind, and ``--resume`` measures the kinds an unfinished file lacks (a
run cut short on a busy machine): ``runs[]`` lists those later invocations and a kind's ``run``
names the one that measured it (no ``run``: the first). On a crowded 2-core machine set
``OMP_WAIT_POLICY=PASSIVE``: vLLM's two OpenMP threads otherwise spin-wait for each other when
other processes hold the cores, and generation crawls (the setting is recorded under ``env``).

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
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = ROOT / "hare" / "priors" / "templates"


def all_kinds() -> list[str]:
    """Every shipped task kind: one template per kind."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


def _taxonomy_for(cfg: Any, kind: str) -> Any:
    """The config's topics, restricted to the domains the kind's template allows (code: the
    programming, science and mathematics domains), written to a temporary taxonomy file."""
    import atexit
    import shutil
    import tempfile

    import yaml

    from hare.priors.prompts import template_for

    tpl = template_for(kind)
    if not tpl.domains:
        return cfg.topics
    kept: dict[str, Any] = {}
    for path in (cfg.topics.path, *cfg.topics.extra_paths):
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        for domain, subjects in raw["domains"].items():
            if tpl.allows(domain):
                kept.setdefault(domain, {}).update(subjects)
    folder = Path(tempfile.mkdtemp(prefix="hare-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    out = folder / f"taxonomy-{kind}.yaml"
    out.write_text(yaml.safe_dump({"version": 1, "domains": kept}, sort_keys=False), encoding="utf-8")
    return cfg.topics.model_copy(update={"path": out, "extra_paths": []})


def kind_config(cfg: Any, kind: str, prompts: int, k: int) -> Any:
    """The config with one kind, enough prompts in one partition, validation on with k samples."""
    axes = cfg.axes.model_copy(update={"kinds": [kind]})
    plan = cfg.plan.model_copy(update={"partitions": 1, "prompts_per_partition": prompts, "top_up_rounds": 0})
    voted = {kind: k} if kind in ("math_word_problem", "logical_deduction") else {}
    validation = cfg.validation.model_copy(update={"enabled": True, "k": voted, "answer_line": "guided"})
    return cfg.model_copy(update={"axes": axes, "plan": plan, "validation": validation,
                                  "topics": _taxonomy_for(cfg, kind)})


def run_kind(backend: Any, cfg: Any, kind: str, answer_line: str = "free") -> dict[str, Any]:
    """One kind's figures; ``answer_line`` names the variant whose pass rate is the headline."""
    from hare.priors.prompts import template_for
    from hare.stages.quality import judge
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
        verdicts = [judge(r["text"] or "", r["kind"], r.get("finish_reason") or "stop", cfg.quality).reason
                    for r in kept.to_pylist()]
        out[name] = {"kept": kept.num_rows, "pass_rate": round(kept.num_rows / max(1, plan.num_rows), 3),
                     "kept_passing_quality": sum(1 for v in verdicts if v is None),
                     "quality_rejects_of_kept": dict(Counter(v for v in verdicts if v).most_common()),
                     "samples_with_answer": with_answer if reqs else None,
                     "rejects": dict(reasons.most_common()),
                     "kept_examples": [t[:400] for t in kept.column("text").to_pylist()[:2]],
                     "votes": [{"answers": v.get("answers"), "share": v.get("share")} for v in votes][:12]}
    tpl = template_for(kind)
    out["method"] = ("self_consistency" if reqs else
                     "sandbox" if tpl.answer is not None and tpl.answer.type == "code" else "none")
    headline = answer_line if answer_line in out else "free"
    out["headline_variant"] = headline
    out["pass_rate"] = out[headline]["pass_rate"]
    return out


def render(results: dict[str, Any], path: str) -> str:
    """The Markdown table of a results file (docs/benchmarks.md), with its figures tag."""
    method = {"self_consistency": "vote of k", "sandbox": "sandbox", "none": "none (pass-through)"}
    tag, rows = [], []
    for kind, r in sorted(results["kinds"].items()):
        head = r[r["headline_variant"]]
        guided = r.get("guided")
        tag += [f"kinds.{kind}.prompts={r['prompts']}", f"kinds.{kind}.{r['headline_variant']}.kept={head['kept']}",
                f"kinds.{kind}.pass_rate={r['pass_rate']:.2f}",
                f"kinds.{kind}.{r['headline_variant']}.kept_passing_quality={head['kept_passing_quality']}"]
        if guided:
            tag.append(f"kinds.{kind}.guided.pass_rate={guided['pass_rate']:.2f}")
        rejects = ", ".join(f"{k} {v}" for k, v in head["rejects"].items()) or "-"
        guided_rate = f"{guided['pass_rate']:.2f}" if guided else "-"
        rows.append(f"| {kind} | {method[r['method']]} | {r['prompts']} | {r['samples']} | {head['kept']} | "
                    f"**{r['pass_rate']:.2f}** | {guided_rate} | "
                    f"{head['kept_passing_quality']} of {head['kept']} | {rejects} |")
    out = [f"<!-- figures: {path}: " + "; ".join(tag) + " -->",
           "| kind | validation | prompts | samples | kept (validation passed) | pass rate | pass rate, answer line "
           "forced (`guided`) | kept that also pass the quality rules | rejects |",
           "|---|---|---|---|---|---|---|---|---|", *rows]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--kinds", nargs="+", default=None, help="default: every shipped template's kind")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / f"reasoning-{date.today().isoformat()}.json"))
    p.add_argument("--resume", action="store_true",
                   help="keep the kinds an unfinished --json file (same config, prompts, k) already holds and "
                        "measure the others (a run cut short on a busy machine)")
    p.add_argument("--render", metavar="JSON", help="print the Markdown table of a results file and exit")
    args = p.parse_args()
    if args.render:
        rel = Path(args.render).resolve()
        print(render(json.loads(rel.read_text()), str(rel.relative_to(ROOT)) if rel.is_relative_to(ROOT) else args.render))
        return
    kinds = args.kinds or all_kinds()

    from bench.provenance import provenance
    from hare.config import load_config
    from hare.engines.engine import make_backend, resolve_on_this_node

    base = load_config(args.config)
    config = (str(Path(args.config).resolve().relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT)
              else args.config)
    this_run = provenance()
    results: dict[str, Any] = {**this_run, "config": config, "answer_line": base.validation.answer_line,
                               "prompts_per_kind": args.prompts, "k": args.k, "kinds": {}}
    if args.resume and Path(args.json).is_file():
        earlier = json.loads(Path(args.json).read_text())
        same = {f: (earlier.get(f), results[f]) for f in ("config", "answer_line", "prompts_per_kind", "k")}
        if any(a != b for a, b in same.values()) or earlier.get("model") != base.model.name:
            raise SystemExit(f"--resume: {args.json} was measured with other settings: {same}")
        results = earlier  # its provenance stays that of the first invocation; each one is in runs[]
    results.setdefault("runs", []).append({f: this_run[f] for f in ("started_at", "command", "git_revision", "env")
                                           if f in this_run})
    todo = [k for k in kinds if k not in results["kinds"]]
    print("measured already:", sorted(results["kinds"]), "to measure:", todo, flush=True)
    t0 = time.perf_counter()
    backend = make_backend(base.model, resolve_on_this_node(base.model))
    results.update({"backend": backend.name, "model": backend.model})
    results["runs"][-1]["engine_start_seconds"] = round(time.perf_counter() - t0, 1)
    results["complete"] = False  # written after every kind, so a long run keeps what it measured
    for kind in todo:
        results["kinds"][kind] = run_kind(backend, kind_config(base, kind, args.prompts, args.k), kind,
                                          base.validation.answer_line)
        results["kinds"][kind]["run"] = len(results["runs"]) - 1  # which invocation of runs[] measured it
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(kind, json.dumps({x: results["kinds"][kind][x] for x in results["kinds"][kind]
                                if x not in ("free", "guided")}),
              {v: {f: results["kinds"][kind][v][f] for f in ("kept", "pass_rate", "samples_with_answer", "rejects",
                                                              "kept_passing_quality")}
               for v in ("free", "guided") if v in results["kinds"][kind]}, flush=True)
    results["runs"][-1]["seconds"] = round(time.perf_counter() - t0, 1)
    results["complete"] = set(all_kinds()) <= set(results["kinds"])
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
