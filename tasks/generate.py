"""Stage ``generate``: one plan partition -> generated records and rejects, then commit.

The plain functions (:func:`requests_from_plan`, :func:`records_from_results`) work on Arrow
tables and know nothing of Ray or Prefect; :func:`generate_partition` is the thin Prefect task
that reads the plan partition, asks an engine actor, and commits through the manifest.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from hare.backends.base import GenerationRequest, GenerationResult, unavailable_rows
from hare.stages.validate.answers import problem_text
from hare.config import RunConfig, SamplingConfig, ValidationConfig
from hare.priors.prompts import template_for
from hare.store.layout import plan_key
from hare.store.manifest import commit_first, record_failure, start_partition
from hare.store.schema import RECORD_SCHEMA, REJECT_SCHEMA, record_id
from hare.store import open_store
from hare.store.tables import from_parquet_bytes
from hare.store import lineage
from hare.tasks.rewrite import rewrite_reject_reason

STAGE = "generate"


@dataclass(frozen=True)
class RecordContext:
    """What every record of a partition shares: who generated it, in which run.

    ``sampling_config`` (when given) states each record's own kind's settings in its
    ``sampling`` column; ``voted_kinds``: the self-consistency kinds of this run."""

    run_id: str
    partition_id: str
    backend: str
    model: str
    model_revision: str
    sampling: dict[str, Any]
    sampling_config: SamplingConfig | None = None
    voted_kinds: tuple[str, ...] = ()
    source: str = "synthesize"   # the synthesize source's name (a rewrite row names its own source)

    def voted(self, kind: str) -> bool:
        return kind in self.voted_kinds


def requests_from_plan(plan: pa.Table, sampling: SamplingConfig | None = None,
                       validation: ValidationConfig | None = None) -> list[GenerationRequest]:
    """The first engine call of a partition: one request per plan row. With ``sampling`` each
    request carries its kind's settings (``sampling.by_kind``); a self-consistency kind's row
    (``validation.samples(kind) > 1``) asks for the problem only, sized by
    ``validation.problem_max_tokens`` (its k solutions come in :func:`solve_requests`)."""
    out = []
    for r in plan.select(["prompt_index", "system", "prompt", "seed", "kind"]).to_pylist():
        own = sampling.for_kind(r["kind"]) if sampling is not None else None
        if own is not None and validation is not None and validation.samples(r["kind"]) > 1:
            own = own.model_copy(update={"max_tokens": validation.problem_max_tokens})
        out.append(GenerationRequest(r["prompt_index"], r["system"], r["prompt"], r["seed"], 0, own))
    return out


@dataclass(frozen=True)
class Solve:
    """One of the k samples that solve a written problem: which plan row, which sample."""

    prompt_index: int
    sample: int
    problem: str
    forced_answer: bool = False  # its final-answer line was forced (validation.answer_line: guided)


def sample_seed(seed: int, sample: int) -> int:
    """The j-th sample's seed: the plan's seed + j, as vLLM seeds the children of an n>1 request
    (v1/engine/parallel_sampling.py), so k requests here draw what n=k would, reproducibly."""
    return (seed + sample) & 0x7FFFFFFF


def solve_requests(plan: pa.Table, first: list[GenerationResult], sampling: SamplingConfig,
                   validation: ValidationConfig) -> tuple[list[GenerationRequest], list[Solve]]:
    """The second engine call: each self-consistency row whose problem was written is solved k
    times. Requests are numbered by position (the engine keys results by that number), and the
    returned :class:`Solve` list says which row and sample each position is."""
    by_index = {r.prompt_index: r for r in first}
    requests: list[GenerationRequest] = []
    solves: list[Solve] = []
    for row in plan.to_pylist():
        k = validation.samples(row["kind"])
        res = by_index.get(row["prompt_index"])
        if k <= 1 or res is None or _problem_failure(res) is not None:
            continue
        tpl = template_for(row["kind"])
        problem = problem_text(res.text)
        prompt = tpl.render_solve(problem=problem, audience=row["audience"], style=row["style"])
        own = sampling.for_kind(row["kind"])
        for j in range(k):
            requests.append(GenerationRequest(len(requests), tpl.solve_system_turn(), prompt,
                                              sample_seed(row["seed"], j), j, own))
            solves.append(Solve(row["prompt_index"], j, problem))
    return requests, solves


def answer_line_requests(solve_reqs: list[GenerationRequest], solutions: list[GenerationResult],
                         solves: list[Solve], plan: pa.Table) -> list[GenerationRequest]:
    """The third engine call (``validation.answer_line: guided``): each solution that finished
    (``stop``) without a final-answer line the template's extractor finds is continued with
    ``Final answer:`` and a value decoded under structured outputs (the template's
    ``answer.guided`` regex), greedily: the randomness of a vote is in the solutions, the value
    is the one the model reads off its own solution. Numbered like ``solve_reqs``."""
    kinds = dict(zip(plan.column("prompt_index").to_pylist(), plan.column("kind").to_pylist()))
    out: list[GenerationRequest] = []
    for req, res, solve in zip(solve_reqs, solutions, solves):
        tpl = template_for(kinds[solve.prompt_index])
        if (res.error or res.finish_reason != "stop" or tpl.answer is None or not tpl.answer.guided
                or tpl.extract_answer(res.text) is not None):
            continue
        own = (req.sampling or SamplingConfig()).model_copy(update={"max_tokens": 16, "temperature": 0.0})
        out.append(GenerationRequest(req.prompt_index, req.system, req.prompt, req.seed, req.sample, own,
                                     prefix=f"{res.text.rstrip()}\nFinal answer:", guided_regex=tpl.answer.guided))
    return out


def with_answer_lines(solutions: list[GenerationResult], solves: list[Solve], forced: list[GenerationResult],
                      ) -> tuple[list[GenerationResult], list[Solve], dict[str, int]]:
    """The solutions with each forced value appended as their ``Final answer:`` line, the
    solves marked ``forced_answer``, and the counts for the manifest (a forced request that
    failed leaves its solution as it was: it then has no vote)."""
    by_index = {r.prompt_index: r for r in forced if not r.error and r.text.strip()}
    out = []
    for r in solutions:
        f = by_index.get(r.prompt_index)
        out.append(r if f is None else GenerationResult(
            r.prompt_index, f"{r.text.rstrip()}\nFinal answer: {f.text.strip()}", r.prompt_tokens,
            r.output_tokens + f.output_tokens, r.finish_reason, r.error))
    marked = [replace(s, forced_answer=True) if i in by_index else s for i, s in enumerate(solves)]
    return out, marked, {"forced_answers": len(by_index), "forced_failed": len(forced) - len(by_index)}


def _problem_failure(res: GenerationResult) -> str | None:
    """Why a written problem cannot be solved (a reject reason), or None."""
    if res.error:
        return f"problem_{res.error}"
    if res.finish_reason == "length":
        return "problem_truncated"
    if not problem_text(res.text):
        return "problem_empty"
    return None


def compose_solution(problem: str, solution: str) -> str:
    """The record text of one sample: the problem, then its solution."""
    solution = re.sub(r"(?i)^\s*solution\s*:\s*", "", solution.strip())
    return f"Problem: {problem}\n\nSolution: {solution}"


def records_from_results(
    plan: pa.Table, results: list[GenerationResult], ctx: RecordContext,
    solved: list[tuple[Solve, GenerationResult]] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Join results to their plan rows; good ones become records, the rest rejects.

    ``solved``: the k samples of each self-consistency row (its ``results`` entry is then the
    written problem): each sample becomes a record of its own (same ``prompt_index``, its seed and
    sample number in ``sampling``), which the validate stage votes over and reduces to one."""
    by_index = {r.prompt_index: r for r in results}
    samples: dict[int, list[tuple[Solve, GenerationResult]]] = {}
    for solve, res in solved or []:
        samples.setdefault(solve.prompt_index, []).append((solve, res))
    now = datetime.now(timezone.utc)
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    sampling_of = ctx.sampling_config.for_kind if ctx.sampling_config is not None else None
    for row in plan.to_pylist():
        res = by_index.get(row["prompt_index"])
        if res is None:
            res = GenerationResult(row["prompt_index"], "", 0, 0, "error", error="missing_result")
        base_sampling = sampling_of(row["kind"]).model_dump(exclude={"by_kind"}) if sampling_of else ctx.sampling
        outputs: list[tuple[str, GenerationResult, dict[str, Any]]] = []
        if row["prompt_index"] in samples:
            k = len(samples[row["prompt_index"]])
            for solve, sres in samples[row["prompt_index"]]:
                text = compose_solution(solve.problem, sres.text) if sres.text else ""
                merged = GenerationResult(row["prompt_index"], text, sres.prompt_tokens,
                                          res.output_tokens + sres.output_tokens, sres.finish_reason, sres.error)
                outputs.append((text, merged, {"seed": sample_seed(row["seed"], solve.sample), "sample": solve.sample,
                                               "samples": k, "problem_seed": row["seed"],
                                               **({"forced_answer": True} if solve.forced_answer else {})}))
        else:
            failure = _problem_failure(res) if ctx.voted(row["kind"]) and not res.error else None
            if failure is not None:
                res = GenerationResult(res.prompt_index, res.text, res.prompt_tokens, res.output_tokens,
                                       res.finish_reason, failure)
            outputs.append((res.text, res, {"seed": row["seed"]}))
        for text, r, seeds in outputs:
            rec = {
                "id": record_id(text) if text else f"empty-{ctx.run_id}-{row['prompt_index']}",
                "text": text,
                "kind": row["kind"],
                "topic_path": row["topic_path"],
                "audience": row["audience"],
                "style": row["style"],
                "prompt": row["prompt"],
                "template_id": row["template_id"],
                "template_version": row["template_version"],
                "model": ctx.model,
                "model_revision": ctx.model_revision,
                "backend": ctx.backend,
                "sampling": json.dumps({**base_sampling, **seeds}, sort_keys=True),
                "run_id": ctx.run_id,
                "partition_id": ctx.partition_id,
                "prompt_index": row["prompt_index"],
                "created_at": now,
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "finish_reason": r.finish_reason,
                "source": row.get("source") or ctx.source,
                "source_ref": row.get("source_ref"),
            }
            error = r.error or rewrite_reject_reason(row, text)  # a rewrite must keep its row's label / answer
            if error:
                rejects.append({**rec, "reject_stage": STAGE, "reject_reason": error})
            else:
                kept.append(rec)
    return (
        pa.Table.from_pylist(kept, schema=RECORD_SCHEMA),
        pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA),
    )


def synthesize_source_name(cfg: RunConfig) -> str:
    """The name synthesized records carry in their ``source`` column."""
    return next((s.name for s in cfg.run_sources() if s.kind == "synthesize"), "synthesize")


def generation_stats(results: list[GenerationResult], seconds: float) -> dict[str, Any]:
    """Throughput figures that land in the manifest (and in `hare status`)."""
    out_tokens = sum(r.output_tokens for r in results)
    return {
        "requests": len(results),
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "output_tokens": out_tokens,
        "generate_seconds": round(seconds, 3),
        "output_tokens_per_s": round(out_tokens / seconds, 2) if seconds > 0 else 0.0,
        "requests_per_s": round(len(results) / seconds, 3) if seconds > 0 else 0.0,
    }


def merged_call_figures(first: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """The figures of a partition's engine calls (problem, solve, forced answer lines) as one:
    the latest GPU figures, and the engine restarts of every call added up (a restart waited
    for in the first call must still reach the manifest)."""
    merged = {**first, **later}
    restarts = first.get("engine_restarts", 0) + later.get("engine_restarts", 0)
    if restarts:
        merged["engine_restarts"] = restarts
    return merged


@task(name="generate-partition", retries=1, retry_delay_seconds=2)
def generate_partition(cfg: RunConfig, run_id: str, partition_id: str, engine: str) -> dict[str, Any]:
    """Generate one partition on an engine actor and commit it; skip it if already committed."""
    import ray

    from hare.engines.engine import call_engine, get_engine

    logger = get_run_logger()
    store = open_store(cfg.store.url)
    start = start_partition(store, run_id, partition_id)
    if (skipped := start.skipped(partition_id, logger.info)) is not None:
        return skipped
    if start.plan_changed:
        logger.warning("partition %s: its plan changed since it was generated; generating it again", partition_id)
    started = time.perf_counter()
    try:
        plan = from_parquet_bytes(start.plan_bytes, start.plan_key)
        results, gen_seconds, gpu = call_engine(engine, requests_from_plan(plan, cfg.sampling, cfg.validation),
                                                cfg.sampling, cfg.model)
        # self-consistency kinds: the problems written above are now solved k times each
        solve_reqs, solves = solve_requests(plan, results, cfg.sampling, cfg.validation)
        solved: list[tuple[Solve, GenerationResult]] = []
        forced_stats: dict[str, int] = {}
        all_results = list(results)
        if solve_reqs:
            solutions, solve_seconds, later = call_engine(engine, solve_reqs, cfg.sampling, cfg.model)
            gpu = merged_call_figures(gpu, later)
            gen_seconds += solve_seconds
            solutions = sorted(solutions, key=lambda r: r.prompt_index)
            all_results += solutions
            forced_reqs = (answer_line_requests(solve_reqs, solutions, solves, plan)
                           if cfg.validation.answer_line == "guided" else [])
            if forced_reqs:
                forced, forced_seconds, later = call_engine(engine, forced_reqs, cfg.sampling, cfg.model)
                gpu = merged_call_figures(gpu, later)
                gen_seconds += forced_seconds
                all_results += forced
                solutions, solves, forced_stats = with_answer_lines(solutions, solves, forced)
            solved = list(zip(solves, solutions))
        unanswered = unavailable_rows(all_results)
        if unanswered:  # an endpoint outage past its retry budget: fail the partition, a rerun redoes it
            raise RuntimeError(f"{len(unanswered)} request(s) the endpoint never answered: {unanswered[0].error}")
        info = ray.get(get_engine(engine).describe.remote(), timeout=cfg.model.call_timeout_s)
        voted = tuple(k for k in cfg.validation.k if cfg.validation.samples(k) > 1)
        ctx = RecordContext(run_id, partition_id, info["backend"], info["model"], info["model_revision"],
                            cfg.sampling.model_dump(exclude={"by_kind"}), cfg.sampling if cfg.sampling.by_kind else None,
                            voted, synthesize_source_name(cfg))
        kept, rejects = records_from_results(plan, results, ctx, solved)
        stats = {
            **generation_stats(all_results, gen_seconds),
            "prompts": plan.num_rows,
            **({"samples": len(solve_reqs)} if solve_reqs else {}),
            **forced_stats,
            # the counts every commit has (hare/stages/base.py): outputs checked, kept as records, rejected
            "checked": kept.num_rows + rejects.num_rows, "kept": kept.num_rows, "rejected": rejects.num_rows,
            "engine": engine,
            **({"endpoint": info["endpoint"]} if info.get("endpoint") else {}),
            "source": plan.column("source")[0].as_py() if "source" in plan.column_names else ctx.source,
            # what actually ran (the card states these, not the config's model.name)
            "model": info["model"], "model_revision": info["model_revision"], "backend": info["backend"],
            "seconds": round(time.perf_counter() - started, 3),
            **gpu,  # gpu_util_mean, gpu_busy_fraction, gpu_memory_used_max_mb... on a GPU
        }
        manifest = commit_first(store, start, run_id, partition_id, kept, rejects, stats)
    except Exception as exc:
        record_failure(store, run_id, partition_id, STAGE, f"{type(exc).__name__}: {exc}", start.attempts)
        raise
    lineage.emit(
        store, run_id, f"synthesize.generate.{partition_id}", "COMPLETE",
        inputs=[lineage.dataset(store.uri(plan_key(run_id, partition_id))),
                {"namespace": "model", "name": f"{info['model']}@{info['model_revision']}"}],
        outputs=[lineage.dataset(store.uri(o.key), o.sha256, o.rows) for o in manifest.outputs],
        facets={"stage": STAGE, "backend": info["backend"], "stats": stats},
    )
    logger.info(
        "partition %s: %d records, %d rejects, %.1f output tok/s",
        partition_id, kept.num_rows, rejects.num_rows, stats["output_tokens_per_s"],
    )
    return {"partition_id": partition_id, "status": "succeeded", "stats": stats}
