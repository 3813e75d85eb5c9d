"""Deduplication in three layers, each naming the earlier record a dropped one duplicates.

- exact: the record id is the hash of the normalized text, so equal ids are exact copies;
- near: MinHash (datasketch) over word shingles with LSH candidates, confirmed by the
  estimated Jaccard similarity;
- semantic: cosine similarity of unit embeddings with FAISS: exact inner-product search up to
  ``flat_max`` vectors, an IVF index above it (trained on a sample, ``nprobe`` lists searched),
  so the cost grows with n * nprobe / nlist instead of n squared.

"Earlier" is the order of the input: items already published by earlier runs come first, then
this run's records in partition order, so the first copy is kept and later ones dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hare.config import DedupConfig

_WORD = re.compile(r"\w+")
# Signatures are stored in the published index: pin the hashing scheme so later runs (and
# datasketch upgrades) compare like with like.
MINHASH_SCHEME = "affine64"


@dataclass(frozen=True)
class Duplicate:
    layer: str  # "exact" | "near" | "semantic"
    of: int  # index of the earlier item it duplicates
    score: float


def minhash_signatures(texts: Sequence[str], cfg: DedupConfig) -> np.ndarray:
    """(n, num_perm) uint64 MinHash signatures of word shingles."""
    from datasketch import MinHash

    out = np.zeros((len(texts), cfg.num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        k = cfg.shingle_words
        shingles = {" ".join(words[j:j + k]) for j in range(max(1, len(words) - k + 1))}
        m = MinHash(num_perm=cfg.num_perm, seed=1, scheme=MINHASH_SCHEME)
        m.update_batch([s.encode("utf-8") for s in shingles])
        out[i] = m.hashvalues
    return out


def exact_duplicates(ids: Sequence[str]) -> dict[int, Duplicate]:
    first: dict[str, int] = {}
    dups = {}
    for i, rid in enumerate(ids):
        if rid in first:
            dups[i] = Duplicate("exact", first[rid], 1.0)
        else:
            first[rid] = i
    return dups


def near_duplicates(sigs: np.ndarray, cfg: DedupConfig, skip: set[int]) -> dict[int, Duplicate]:
    """Each item against the earlier kept ones, through MinHash LSH."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.near_threshold, num_perm=cfg.num_perm)
    dups = {}
    for i in range(sigs.shape[0]):
        if i in skip:
            continue
        m = MinHash(num_perm=cfg.num_perm, seed=1, hashvalues=sigs[i], scheme=MINHASH_SCHEME)
        best, best_j = 0.0, -1
        for key in lsh.query(m):
            j = int(key)
            jac = float(np.mean(sigs[j] == sigs[i]))
            if jac > best or (jac == best and j < best_j):
                best, best_j = jac, j
        if best_j >= 0 and best >= cfg.near_threshold:
            dups[i] = Duplicate("near", best_j, round(best, 4))
        else:
            lsh.insert(str(i), m)
    return dups


def build_index(vecs: np.ndarray, cfg: DedupConfig, seed: int = 0):
    """Exact inner-product index up to ``flat_max`` vectors; IVF (4 * sqrt(n) lists) above."""
    import faiss

    n, d = vecs.shape
    if n <= cfg.flat_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        # 39 training points per list is FAISS's floor for stable k-means; more only costs time.
        sample = vecs[np.sort(rng.choice(n, size=min(n, nlist * 40), replace=False))]
        index.train(np.ascontiguousarray(sample))
        index.nprobe = cfg.nprobe
    index.add(np.ascontiguousarray(vecs))
    return index


def semantic_duplicates(vecs: np.ndarray, cfg: DedupConfig, skip: set[int], batch: int = 65_536,
                        index=None) -> dict[int, Duplicate]:
    """An item is a duplicate of its most similar earlier item at or above the threshold.

    ``index`` may be one already built over ``vecs`` by :func:`build_index` (benchmarks reuse it).
    """
    n = vecs.shape[0]
    if n < 2:
        return {}
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    index = index if index is not None else build_index(vecs, cfg)
    k = min(cfg.neighbors, n)
    dups = {}
    dropped = set(skip)  # rows are decided in order, so every earlier row is final
    for start in range(0, n, batch):
        sims, nbrs = index.search(vecs[start:start + batch], k)
        for row in range(sims.shape[0]):
            i = start + row
            if i in dropped:
                continue
            best, best_j = -1.0, -1
            for s, j in zip(sims[row], nbrs[row]):
                if 0 <= j < i and j not in dropped and s >= cfg.semantic_threshold and s > best:
                    best, best_j = float(s), int(j)
            if best_j >= 0:
                dups[i] = Duplicate("semantic", best_j, round(best, 4))
                dropped.add(i)
    return dups


def find_duplicates(ids: Sequence[str], sigs: np.ndarray | None, vecs: np.ndarray | None,
                    cfg: DedupConfig) -> dict[int, Duplicate]:
    """All three layers in order; a later layer only looks at what the earlier ones kept."""
    dups: dict[int, Duplicate] = exact_duplicates(ids) if cfg.exact else {}
    if cfg.near and sigs is not None:
        dups.update(near_duplicates(sigs, cfg, set(dups)))
    if cfg.semantic and vecs is not None:
        dups.update(semantic_duplicates(vecs, cfg, set(dups)))
    return dups
