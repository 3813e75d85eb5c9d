"""Stage ``plan``: seed taxonomy x prior axes -> prompt specs, cut into partitions.

Deterministic from (config, seed): the same config gives the same prompts, partition ids and
per-prompt seeds, which is what lets a re-run find and redo exactly the missing partitions.
Allocation: every (leaf, audience, style, kind) combination is enumerated in file order and
shuffled with the run seed; prompts take combinations in that order and a new shuffled cycle
starts only when all have been used, so no combination repeats before every one appeared once.
"""

from __future__ import annotations

import hashlib
import random
from itertools import product

import pyarrow as pa
from prefect import task

from hare import lineage
from hare.config import RunConfig
from hare.layout import plan_key
from hare.runs import start_run
from hare.store import open_store, sha256_bytes
from hare.tables import to_parquet_bytes
from hare.prompts import template_for
from hare.schema import PLAN_SCHEMA
from hare.taxonomy import load_taxonomy


def partition_id(index: int) -> str:
    """Partition ids come from the plan, never from how Ray splits work."""
    return f"p{index:05d}"


def prompt_seed(run_seed: int, prompt_index: int) -> int:
    """A per-prompt sampling seed, stable for a (seed, index) pair and well spread."""
    digest = hashlib.sha256(f"hare:{run_seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_plan(cfg: RunConfig) -> pa.Table:
    """All prompt specs of the run, with their partition ids, as one Arrow table."""
    leaves = load_taxonomy(cfg.topics.path)
    combos = list(product(leaves, cfg.axes.audiences, cfg.axes.styles, cfg.axes.kinds))
    total = cfg.plan.partitions * cfg.plan.prompts_per_partition
    rng = random.Random(cfg.seed)
    order: list[tuple] = []
    while len(order) < total:
        cycle = combos[:]
        rng.shuffle(cycle)
        order.extend(cycle)
    rows: dict[str, list] = {name: [] for name in PLAN_SCHEMA.names}
    for i, (leaf, audience, style, kind) in enumerate(order[:total]):
        tpl = template_for(kind)
        rows["prompt_index"].append(i)
        rows["partition_id"].append(partition_id(i // cfg.plan.prompts_per_partition))
        rows["topic_path"].append(leaf.path)
        rows["topic"].append(leaf.topic)
        rows["audience"].append(audience)
        rows["style"].append(style)
        rows["kind"].append(kind)
        rows["template_id"].append(tpl.id)
        rows["template_version"].append(tpl.version)
        rows["system"].append(tpl.system)
        rows["prompt"].append(
            tpl.render(topic=leaf.topic, topic_path=leaf.path, audience=audience, style=style)
        )
        rows["seed"].append(prompt_seed(cfg.seed, i))
    return pa.Table.from_pydict(rows, schema=PLAN_SCHEMA)


def split_partitions(plan: pa.Table) -> dict[str, pa.Table]:
    """The plan cut by partition id, in partition order."""
    ids = plan.column("partition_id").to_pylist()
    out: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out[ids[start]] = plan.slice(start, i - start)
            start = i
    return out


@task(name="plan")
def plan_run(cfg: RunConfig, run_id: str) -> list[str]:
    """Build the plan, write each partition's prompt specs and run.json; return partition ids.

    Plan objects are rewritten identically on a resume (the plan is deterministic), so a
    half-written plan from an interrupted start is simply completed.
    """
    store = open_store(cfg.store.url)
    parts = split_partitions(build_plan(cfg))
    start_run(store, cfg, run_id, list(parts))
    for pid, table in parts.items():
        key = plan_key(run_id, pid)
        data = to_parquet_bytes(table)
        if not store.exists(key) or sha256_bytes(store.get_bytes(key)) != sha256_bytes(data):
            store.put_bytes(key, data)
    lineage.emit(
        store, run_id, "synthesize.plan", "COMPLETE",
        inputs=[lineage.dataset(f"file://{cfg.topics.path}")],
        outputs=[lineage.dataset(store.uri(plan_key(run_id, p)), None) for p in parts],
        facets={"stage": "plan", "prompts": sum(t.num_rows for t in parts.values()),
                "config_hash": cfg.config_hash()},
    )
    return list(parts)
