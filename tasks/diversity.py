"""Stage ``diversity``: how diverse is what was generated, against a no-priors baseline.

Reads the committed records of the dataset (``p*``) and baseline (``b*``) partitions, writes
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
from prefect import task

from hare import diversity as div
from hare.config import RunConfig
from hare.layout import diversity_key, plan_report_key
from hare.store import open_store
from hare.taxonomy import Leaf, load_taxonomy

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


def diversity_report(
    cfg: RunConfig, records: pa.Table, baseline: pa.Table, planned: dict[str, Any], embed: Embed
) -> dict[str, Any]:
    leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
    anchor_names, anchor_texts = domain_anchors(leaves)
    anchors = embed(anchor_texts)
    texts = records.column("text").to_pylist()
    base_texts = baseline.column("text").to_pylist()

    sets = {"dataset": _sample(texts, cfg.diversity.sample, cfg.seed)}
    if base_texts:
        sets["baseline"] = _sample(base_texts, cfg.diversity.sample, cfg.seed)
        sets["dataset_at_baseline_size"] = _sample(texts, len(sets["baseline"]), cfg.seed + 1)
    measured = {}
    for name, subset in sets.items():
        emb = embed(subset)
        measured[name] = div.figures(subset, emb, anchors)
        _, per_anchor = div.anchor_entropy(emb, anchors)
        measured[name]["nearest_domain"] = {anchor_names[i]: n for i, n in sorted(per_anchor.items())}

    achieved = {
        "domains": Counter(p.split(" > ")[0] for p in records.column("topic_path").to_pylist()),
        "audiences": Counter(records.column("audience").to_pylist()),
        "styles": Counter(records.column("style").to_pylist()),
        "kinds": Counter(records.column("kind").to_pylist()),
    }
    coverage = {axis: div.shares(planned[axis], achieved[axis]) for axis in achieved}
    leaves_hit = sum(1 for p in set(records.column("topic_path").to_pylist()) if p)
    return {
        "records": records.num_rows,
        "baseline_records": baseline.num_rows,
        "leaves_planned": sum(1 for n in planned["leaves"].values() if n),
        "leaves_covered": leaves_hit,
        "coverage": coverage,
        "figures": measured,
        "anchors": "one per taxonomy domain: nearest-anchor entropy / log(#domains)",
    }


@task(name="diversity")
def measure_diversity(cfg: RunConfig, run_id: str, dataset_ids: list[str], baseline_ids: list[str]) -> dict[str, Any]:
    from hare.embed import embed
    from hare.tasks.publish import collect_records

    store = open_store(cfg.store.url)
    planned = json.loads(store.get_bytes(plan_report_key(run_id)))
    report = diversity_report(cfg, collect_records(store, run_id, dataset_ids, cfg.final_stage()),
                              collect_records(store, run_id, baseline_ids), planned, embed)
    store.put_bytes(diversity_key(run_id), json.dumps(report, indent=2).encode())
    return report
