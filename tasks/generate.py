"""Stage ``generate``: one plan partition -> generated records and rejects, then commit.

The plain functions (:func:`requests_from_plan`, :func:`records_from_results`) work on Arrow
tables and know nothing of Ray or Prefect; :func:`generate_partition` is the thin Prefect task
that reads the plan partition, asks an engine actor, and commits through the manifest.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from prefect import get_run_logger, task

from hare.backends.base import GenerationRequest, GenerationResult
from hare.config import RunConfig
from hare.layout import generated_key, plan_key, rejects_key
from hare.manifest import commit_partition, committed_manifest, previous_attempts, record_failure
from hare.schema import RECORD_SCHEMA, REJECT_SCHEMA, record_id
from hare.store import open_store, retry_count, sha256_bytes
from hare.tables import from_parquet_bytes
from hare import lineage

STAGE = "generate"


@dataclass(frozen=True)
class RecordContext:
    """What every record of a partition shares: who generated it, in which run."""

    run_id: str
    partition_id: str
    backend: str
    model: str
    model_revision: str
    sampling: dict[str, Any]


def requests_from_plan(plan: pa.Table) -> list[GenerationRequest]:
    return [
        GenerationRequest(r["prompt_index"], r["system"], r["prompt"], r["seed"])
        for r in plan.select(["prompt_index", "system", "prompt", "seed"]).to_pylist()
    ]


def records_from_results(
    plan: pa.Table, results: list[GenerationResult], ctx: RecordContext
) -> tuple[pa.Table, pa.Table]:
    """Join results to their plan rows; good ones become records, the rest rejects."""
    by_index = {r.prompt_index: r for r in results}
    now = datetime.now(timezone.utc)
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    for row in plan.to_pylist():
        res = by_index.get(row["prompt_index"])
        if res is None:
            res = GenerationResult(row["prompt_index"], "", 0, 0, "error", error="missing_result")
        rec = {
            "id": record_id(res.text) if res.text else f"empty-{ctx.run_id}-{row['prompt_index']}",
            "text": res.text,
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
            "sampling": json.dumps({**ctx.sampling, "seed": row["seed"]}, sort_keys=True),
            "run_id": ctx.run_id,
            "partition_id": ctx.partition_id,
            "prompt_index": row["prompt_index"],
            "created_at": now,
            "prompt_tokens": res.prompt_tokens,
            "output_tokens": res.output_tokens,
            "finish_reason": res.finish_reason,
        }
        if res.error:
            rejects.append({**rec, "reject_stage": STAGE, "reject_reason": res.error})
        else:
            kept.append(rec)
    return (
        pa.Table.from_pylist(kept, schema=RECORD_SCHEMA),
        pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA),
    )


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


@task(name="generate-partition", retries=1, retry_delay_seconds=2)
def generate_partition(cfg: RunConfig, run_id: str, partition_id: str, engine: str) -> dict[str, Any]:
    """Generate one partition on an engine actor and commit it; skip it if already committed."""
    import ray

    from hare.engine import call_engine, get_engine

    logger = get_run_logger()
    store = open_store(cfg.store.url)
    retries_before = retry_count()
    pk = plan_key(run_id, partition_id)
    plan_bytes = store.get_bytes(pk)
    inputs = {pk: sha256_bytes(plan_bytes)}
    done = committed_manifest(store, run_id, partition_id, quarantine=True)
    # reused only if generated from this plan (a commit of older code recorded no inputs: kept)
    if done is not None and done.inputs in (None, inputs):
        logger.info("partition %s already committed; skipped", partition_id)
        return {"partition_id": partition_id, "status": "skipped", "stats": done.stats}
    if done is not None:
        logger.warning("partition %s: its plan changed since it was generated; generating it again", partition_id)
    attempts = previous_attempts(store, run_id, partition_id) + 1
    started = time.perf_counter()
    try:
        plan = from_parquet_bytes(plan_bytes, pk)
        results, gen_seconds, gpu = call_engine(engine, requests_from_plan(plan), cfg.sampling, cfg.model)
        info = ray.get(get_engine(engine).describe.remote(), timeout=cfg.model.call_timeout_s)
        ctx = RecordContext(run_id, partition_id, info["backend"], info["model"], info["model_revision"],
                            cfg.sampling.model_dump())
        kept, rejects = records_from_results(plan, results, ctx)
        stats = {
            **generation_stats(results, gen_seconds),
            "prompts": plan.num_rows,
            "records": kept.num_rows,
            "rejects": rejects.num_rows,
            "engine": engine,
            # what actually ran (the card states these, not the config's model.name)
            "model": info["model"], "model_revision": info["model_revision"], "backend": info["backend"],
            "seconds": round(time.perf_counter() - started, 3),
            **gpu,  # gpu_util_mean, gpu_busy_fraction, gpu_memory_used_max_mb... on a GPU
        }
        gk, rk = generated_key(run_id, partition_id), rejects_key(run_id, STAGE, partition_id)
        manifest = commit_partition(store, run_id, partition_id, STAGE, {gk: kept, rk: rejects}, stats, attempts,
                                    inputs, retries_since=retries_before)
    except Exception as exc:
        record_failure(store, run_id, partition_id, STAGE, f"{type(exc).__name__}: {exc}", attempts)
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
