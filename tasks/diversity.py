"""Stage ``diversity``: how diverse is what was generated, against a no-priors baseline.

Coverage is counted over every kept record, one partition at a time and only its axis columns;
the embedded figures use texts from a random sample of partitions. Writes
``runs/<run_id>/diversity.json`` (achieved vs planned shares per domain and axis; distinct-n,
pairwise cosine distance and anchor entropy for the dataset, the baseline, and the dataset
subsampled to the baseline's size so the two compare fairly). The dataset card shows it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from hare.stages import diversity as div
from hare.config import RunConfig
from hare.store.layout import diversity_key, plan_report_key, records_key
from hare.store import ObjectStore, open_store
from hare.priors.taxonomy import Leaf, load_taxonomy

Embed = Callable[[Sequence[str]], np.ndarray]


def domain_anchors(leaves: Sequence[Leaf]) -> tuple[list[str], list[str]]:
    """One anchor text per domain: its name and its subjects' names."""
    subjects: dict[str, list[str]] = {}
    for leaf in leaves:
        subjects.setdefault(leaf.domain, [])
        if leaf.subject not in subjects[leaf.domain]:
            subjects[leaf.domain].append(leaf.subject)
    names = list(subjects)
    return names, [f"{d}: {', '.join(s)}" for d, s in subjects.items()]


def _sample(texts: list[str], k: int, seed: int) -> list[str]:
    return texts if len(texts) <= k else random.Random(seed).sample(texts, k)


def achieved_counts(records: pa.Table) -> dict[str, Counter]:
    """Records per domain, audience, style and kind (topic paths under "leaves")."""
    return {
        "domains": Counter(p.split(" > ")[0] for p in records.column("topic_path").to_pylist()),
        "audiences": Counter(records.column("audience").to_pylist()),
        "styles": Counter(records.column("style").to_pylist()),
        "kinds": Counter(records.column("kind").to_pylist()),
        "leaves": Counter(p for p in records.column("topic_path").to_pylist() if p),
    }


def diversity_report(
    cfg: RunConfig, records: pa.Table, baseline: pa.Table, planned: dict[str, Any], embed: Embed,
    achieved: dict[str, Counter] | None = None, unfiltered: pa.Table | None = None,
) -> dict[str, Any]:
    """Figures over ``records`` (all of them, or a sample: at most ``diversity.sample`` are
    embedded anyway) and coverage from ``achieved`` (counted over every record of the dataset,
    :func:`achieved_counts`; default: counted on ``records``).

    The baseline is generated and never filtered, so it is compared with the dataset's records
    *as generated* (``unfiltered``: the generated records of the same partitions, before the
    quality, decontam and dedup filters), subsampled to the baseline's size: like with like.
    Without ``unfiltered`` the kept records stand in (the report says which)."""
    leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
    anchor_names, anchor_texts = domain_anchors(leaves)
    anchors = embed(anchor_texts)
    texts = records.column("text").to_pylist()
    base_texts = baseline.column("text").to_pylist()

    sets = {"dataset": _sample(texts, cfg.diversity.sample, cfg.seed)}
    compared = unfiltered if unfiltered is not None else records
    if base_texts:
        sets["baseline"] = _sample(base_texts, cfg.diversity.sample, cfg.seed)
        sets["dataset_at_baseline_size"] = _sample([t or "" for t in compared.column("text").to_pylist()],
                                                   len(sets["baseline"]), cfg.seed + 1)
    measured = {}
    for name, subset in sets.items():
        emb = embed(subset)
        measured[name] = div.figures(subset, emb, anchors)
        _, per_anchor = div.anchor_entropy(emb, anchors)
        measured[name]["nearest_domain"] = {anchor_names[i]: n for i, n in sorted(per_anchor.items())}

    achieved = achieved if achieved is not None else achieved_counts(records)
    coverage = {axis: div.shares(planned[axis], achieved[axis]) for axis in ("domains", "audiences", "styles", "kinds")}
    leaves_hit = len(achieved["leaves"])
    return {
        "records": sum(achieved["kinds"].values()),
        "baseline_records": baseline.num_rows,
        "leaves_planned": sum(1 for n in planned["leaves"].values() if n),
        "leaves_covered": leaves_hit,
        "coverage": coverage,
        "figures": measured,
        "compared_with_baseline": ("dataset_at_baseline_size: the dataset's records as generated (before the "
                                   "quality, decontam and dedup filters), like the baseline, subsampled to its size"
                                   if unfiltered is not None else
                                   "dataset_at_baseline_size: the kept records, subsampled to the baseline's size"),
        "anchors": "one per taxonomy domain: nearest-anchor entropy / log(#domains)",
    }


AXIS_COLUMNS = ["topic_path", "audience", "style", "kind"]


def _read(store: ObjectStore, run_id: str, pid: str, stage: str, columns: list[str]) -> pa.Table:
    key = records_key(run_id, pid, stage)
    return pq.read_table(pa.BufferReader(store.get_bytes(key)), columns=columns)


def sample_partitions(sizes: dict[str, int], want: int, seed: int) -> list[str]:
    """Partitions picked at random (seeded) until they hold ``want`` records: the texts the
    figures embed come from these alone, never from every partition."""
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    picked, have = [], 0
    for pid in order:
        if have >= want:
            break
        if sizes[pid]:
            picked.append(pid)
            have += sizes[pid]
    return sorted(picked)


def dataset_diversity(store: ObjectStore, cfg: RunConfig, run_id: str, dataset: dict[str, int],
                      baseline_ids: list[str], stage: str, embed: Embed) -> dict[str, Any]:
    """The report with bounded memory: coverage counted one partition at a time over the axis
    columns only; texts read from a random sample of partitions holding ``diversity.sample``."""
    achieved: dict[str, Counter] = {axis: Counter() for axis in ("domains", "audiences", "styles", "kinds", "leaves")}
    for pid in dataset:
        for axis, counts in achieved_counts(_read(store, run_id, pid, stage, AXIS_COLUMNS)).items():
            achieved[axis].update(counts)
    columns = ["text", *AXIS_COLUMNS]
    picked = sample_partitions(dataset, cfg.diversity.sample, cfg.seed)
    sampled = [_read(store, run_id, p, stage, columns) for p in picked]
    records = pa.concat_tables(sampled) if sampled else pa.table({c: pa.array([], pa.string()) for c in columns})
    base = [_read(store, run_id, p, "generate", columns) for p in baseline_ids]
    baseline = pa.concat_tables(base) if base else records.slice(0, 0)
    # the same partitions as generated, for the like-with-like comparison with the (unfiltered) baseline
    raw = [_read(store, run_id, p, "generate", columns) for p in picked] if base else []
    unfiltered = pa.concat_tables(raw) if raw else None
    planned = json.loads(store.get_bytes(plan_report_key(run_id)))
    return diversity_report(cfg, records, baseline, planned, embed, achieved, unfiltered)


@task(name="diversity")
def measure_diversity(cfg: RunConfig, run_id: str, dataset: dict[str, int], baseline_ids: list[str],
                      stage: str) -> dict[str, Any]:
    """``dataset``: the dataset partitions and how many records each kept (from the manifests)."""
    from hare.engines.embedders import pool_embed

    store = open_store(cfg.store.url)
    report = dataset_diversity(store, cfg, run_id, dataset, baseline_ids, stage, pool_embed(run_id))
    store.put_bytes(diversity_key(run_id), json.dumps(report, indent=2).encode())
    return report
