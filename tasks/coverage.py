"""Coverage of the taxonomy by the corpus (``plan.allocate: coverage``): synthesis goes where
the corpus is thin (HARE: D2 fills what D1 lacks).

A seeded sample of the corpus (``plan.coverage_sample`` documents: whole partitions in a seeded
order, read until the sample is full, so the cost is the sample's and not the corpus's) is
embedded with the run's embedding model, each document assigned to its nearest taxonomy leaf
(hare/stages/coverage.py, below ``plan.coverage_min_similarity`` to none), and the synthesized
prompts allocated to the leaves the sample covers least, each covered document standing for
(corpus documents / sample) of its kind. The plan stores the measurement at the run's first
start (``plan/coverage.json``): a resume plans the same prompts without embedding again.
"""

from __future__ import annotations

import random
from typing import Any

from hare.config import RunConfig
from hare.priors.corpus import cut_partitions, list_corpus_files, merge_row_groups, read_documents
from hare.priors.taxonomy import load_taxonomy
from hare.stages.coverage import assign_leaves, coverage_allocation, coverage_counts, leaf_text
from hare.tasks.corpus import corpus_sources


def corpus_sample(cfg: RunConfig) -> tuple[list[str], int]:
    """(texts, partitions read): up to ``plan.coverage_sample`` documents of the corpus sources,
    from whole partitions taken in a seeded order."""
    pieces = []
    for src in corpus_sources(cfg):
        files = list_corpus_files(src.paths, src.split)
        pieces += [(src, part) for part in cut_partitions(files, int(src.partition_mb * (1 << 20)))]
    random.Random(cfg.seed).shuffle(pieces)
    texts: list[str] = []
    read = 0
    for src, part in pieces:
        if len(texts) >= cfg.plan.coverage_sample:
            break
        read += 1
        for piece in merge_row_groups(part):
            texts += [d.text for d in read_documents(piece, src.text_field, src.license_field, src.license)
                      if d.text and d.text.strip()]
    return texts[:cfg.plan.coverage_sample], read


def measure_coverage(cfg: RunConfig) -> dict[str, Any]:
    """The sample's documents per leaf and the synthesized prompts per leaf they lead to."""
    from hare.engines.embed import embed

    leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
    texts, partitions = corpus_sample(cfg)
    leaf_vectors = embed([leaf_text(leaf) for leaf in leaves])
    assigned = assign_leaves(embed(texts), leaf_vectors, cfg.plan.coverage_min_similarity) if texts else []
    covered = coverage_counts(assigned, leaves)
    total = cfg.plan.partitions * cfg.plan.prompts_per_partition
    # ties (leaves equally covered: most of them, when the corpus is small) go in a seeded order,
    # not the taxonomy's: in file order 48 prompts would all land in its first three domains
    order = list(leaves)
    random.Random(cfg.seed).shuffle(order)
    return {"sampled": len(texts), "partitions_read": partitions, "assigned": int(sum(covered.values())),
            "min_similarity": cfg.plan.coverage_min_similarity, "covered": covered,
            "allocation": coverage_allocation(order, covered, total)}
