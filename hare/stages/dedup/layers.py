"""Deduplication in three layers over arrays: the pure functions both the sharded store index
(hare/stages/dedup/index.py) and the in-memory :func:`find_duplicates` are built from.

Every record has a global order (``int64``): earlier runs first, then this run's partitions
in order, then rows. The first record in that order is kept; a dropped one names what it
duplicates.

- exact: the record id is the hash of the normalized text; equal ids share an exact key;
- near: MinHash signatures (hare/stages/dedup/minhash.py) banded into LSH keys; records sharing a key are
  candidates, confirmed by estimated Jaccard, and confirmed pairs are joined into clusters
  (union-find) whose earliest record is kept;
- semantic: cosine similarity of unit embeddings, searched inside inverted lists (an IVF
  quantizer's cells): every pair in a probed list at or above the threshold is seen (a range
  search, so a cluster larger than any neighbour count cannot hide a copy); each record in
  order is dropped as a copy of its most similar earlier record still kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hare.config import DedupConfig
from hare.stages.dedup.minhash import band_keys, id_keys, jaccard, lsh_params, signatures

ROW_BITS = 24  # global order = part number << ROW_BITS | row (up to 16M rows a partition)


@dataclass(frozen=True)
class Duplicate:
    layer: str  # "exact" | "near" | "semantic"
    of: int  # global order of the earlier record it duplicates
    score: float


def minhash_signatures(texts: Sequence[str], cfg: DedupConfig) -> np.ndarray:
    """(n, num_perm) uint32 signatures of word shingles (the scheme in hare/stages/dedup/minhash.py)."""
    return signatures(texts, cfg.num_perm, cfg.shingle_words)


def order_of(part: int, rows: np.ndarray | int) -> np.ndarray:
    return (np.int64(part) << np.int64(ROW_BITS)) | np.asarray(rows, dtype=np.int64)


def candidate_pairs(keys: np.ndarray, order: np.ndarray, first_new: int) -> np.ndarray:
    """(m, 2) int64 pairs (later, earlier) of records sharing a key, the later one new
    (order >= ``first_new``): each member is paired with its bucket's first and with the member
    just before it, so a bucket of k records gives at most 2k pairs, never k squared."""
    if keys.size == 0:
        return np.zeros((0, 2), np.int64)
    idx = np.lexsort((order, keys))
    k, o = keys[idx], order[idx]
    start = np.r_[True, k[1:] != k[:-1]]
    first = np.flatnonzero(start)[np.cumsum(start) - 1]
    pos = np.flatnonzero(~start & (o >= first_new))
    pairs = np.concatenate([np.stack([o[pos], o[first[pos]]], 1), np.stack([o[pos], o[pos - 1]], 1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def confirm_near(pairs: np.ndarray, sig_of: dict[int, np.ndarray], threshold: float) -> np.ndarray:
    """The candidate pairs whose estimated Jaccard reaches ``threshold``."""
    if len(pairs) == 0:
        return pairs
    a = np.stack([sig_of[int(x)] for x in pairs[:, 0]])
    b = np.stack([sig_of[int(x)] for x in pairs[:, 1]])
    return pairs[jaccard(a, b) >= threshold]


def resolve_clusters(edges: np.ndarray, first_new: int) -> dict[int, int]:
    """Union-find over confirmed pairs: {dropped new record: the earliest record of its cluster}.

    Records before ``first_new`` are already published and never dropped.
    """
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: r for x in list(parent) if x >= first_new and (r := find(x)) != x}


def layer_verdicts(clusters: dict[int, int], ids: dict[int, str], sig_of: dict[int, np.ndarray]) -> dict[int, Duplicate]:
    """Each clustered record as an exact copy (same id as its cluster's kept record) or a near one."""
    out = {}
    for x, root in clusters.items():
        if ids[x] == ids[root]:
            out[x] = Duplicate("exact", root, 1.0)
        else:
            out[x] = Duplicate("near", root, round(float(jaccard(sig_of[x], sig_of[root])), 4))
    return out


# --- semantic: inverted lists -----------------------------------------------------------------

def nlist_for(expected: int, sample: int, flat_max: int) -> int:
    """One list (exact search) up to ``flat_max`` vectors; else about 4 * sqrt(n), with at least
    39 training vectors a list (FAISS's floor for stable k-means)."""
    if expected <= flat_max:
        return 1
    return max(1, min(int(4 * math.sqrt(expected)), sample // 39))


def train_quantizer(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """(nlist, d) unit centroids by spherical k-means on ``sample``."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if nlist <= 1:
        c = sample.mean(axis=0, keepdims=True) if len(sample) else np.zeros((1, sample.shape[1]), np.float32)
        return c / max(float(np.linalg.norm(c)), 1e-12)
    km = faiss.Kmeans(sample.shape[1], nlist, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(sample)
    return km.centroids.astype(np.float32)


def assign_lists(centroids: np.ndarray, vecs: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(home list of each vector (n,), the ``nprobe`` lists it is searched in (n, p))."""
    import faiss

    p = min(nprobe, centroids.shape[0])
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, probes = index.search(np.ascontiguousarray(vecs, dtype=np.float32), p)
    return probes[:, 0].astype(np.int32), probes.astype(np.int32)


def group_lists(centroids: np.ndarray, groups: int, seed: int = 0) -> np.ndarray:
    """The group of each list: nearby lists share a group (k-means over the centroids), so a
    vector's probed lists mostly fall in one group and its query goes to few group tasks."""
    import faiss

    nlist = centroids.shape[0]
    if nlist <= groups:
        return np.arange(nlist, dtype=np.int32)
    km = faiss.Kmeans(centroids.shape[1], groups, niter=20, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(centroids, dtype=np.float32))
    _, g = km.index.search(np.ascontiguousarray(centroids, dtype=np.float32), 1)
    return g[:, 0].astype(np.int32)


def search_lists(m_order: np.ndarray, m_list: np.ndarray, m_vec: np.ndarray,
                 q_order: np.ndarray, q_probes: np.ndarray, q_vec: np.ndarray,
                 threshold: float, cells: int = 4_000_000) -> np.ndarray:
    """(k, 3) float64 rows (query, member, cosine) for every member of a list the query probes
    that comes earlier and reaches ``threshold``: members hold their home list, queries
    their probed lists (-1 for none). Queries go in blocks of at most ``cells`` similarities,
    so memory stays bounded however long a list grows."""
    out = []
    m_sorted = np.argsort(m_list, kind="stable")  # members grouped by list, found by slicing
    m_lists, m_start = np.unique(m_list[m_sorted], return_index=True)
    m_end = np.r_[m_start[1:], len(m_sorted)]
    flat_l = q_probes.reshape(-1)
    flat_q = np.repeat(np.arange(len(q_order)), q_probes.shape[1])[flat_l >= 0]
    flat_l = flat_l[flat_l >= 0]
    q_sorted = np.argsort(flat_l, kind="stable")  # (list, query) pairs grouped by list
    q_lists, q_start = np.unique(flat_l[q_sorted], return_index=True)
    q_end = np.r_[q_start[1:], len(q_sorted)]
    q_at = dict(zip(q_lists.tolist(), zip(q_start.tolist(), q_end.tolist())))
    for lst, ms, me in zip(m_lists.tolist(), m_start.tolist(), m_end.tolist()):
        if lst not in q_at:
            continue
        members = m_sorted[ms:me]
        queries = flat_q[q_sorted[q_at[lst][0]:q_at[lst][1]]]
        mv, mo = m_vec[members].astype(np.float32), m_order[members]  # vectors may be kept as float16
        block = max(1, cells // len(members))
        for s in range(0, len(queries), block):
            q = queries[s:s + block]
            sims = q_vec[q].astype(np.float32) @ mv.T
            qi, mi = np.nonzero((sims >= threshold) & (mo[None, :] < q_order[q][:, None]))
            if len(qi):
                out.append(np.stack([q_order[q][qi].astype(np.float64), mo[mi].astype(np.float64),
                                     sims[qi, mi].astype(np.float64)], 1))
    return np.concatenate(out) if out else np.zeros((0, 3))


def resolve_semantic(pairs: np.ndarray, dropped: set[int]) -> dict[int, Duplicate]:
    """In global order, each record is a copy of its most similar earlier record still kept."""
    out: dict[int, Duplicate] = {}
    if len(pairs) == 0:
        return out
    q, m, s = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), pairs[:, 2]
    idx = np.lexsort((m, -s, q))
    gone = set(dropped)
    for i in idx.tolist():
        qi, mi = int(q[i]), int(m[i])
        if qi in gone or mi in gone:
            continue
        out[qi] = Duplicate("semantic", mi, round(float(s[i]), 4))
        gone.add(qi)
    return out


# --- in memory ----------------------------------------------------------------------------------

def find_duplicates(ids: Sequence[str], sigs: np.ndarray | None, vecs: np.ndarray | None,
                    cfg: DedupConfig, first_new: int = 0) -> dict[int, Duplicate]:
    """All three layers over one list of records held in memory (a small table, a test): the
    same functions the sharded index runs group by group. Items before ``first_new`` are
    earlier data: matched against, never dropped. ``of`` is an item's position."""
    n = len(ids)
    order = np.arange(n, dtype=np.int64)
    edges = [np.zeros((0, 2), np.int64)]
    if cfg.exact:
        edges.append(candidate_pairs(id_keys(ids), order, first_new))
    sig_of = {i: sigs[i] for i in range(n)} if sigs is not None else {}
    if cfg.near and sigs is not None:
        bands, rows = lsh_params(cfg.near_threshold, cfg.num_perm)
        keys = band_keys(sigs, bands, rows)
        cands = candidate_pairs(keys.reshape(-1), np.repeat(order, bands), first_new)
        edges.append(confirm_near(cands, sig_of, cfg.near_threshold))
    clusters = resolve_clusters(np.concatenate(edges), first_new)
    dups = layer_verdicts(clusters, dict(enumerate(ids)), sig_of)
    if cfg.semantic and vecs is not None and n > 1:
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        nlist = nlist_for(n, n, cfg.flat_max)
        rng = np.random.default_rng(0)
        sample = vecs[np.sort(rng.choice(n, size=min(n, nlist * 40), replace=False))]
        home, probes = assign_lists(train_quantizer(sample, nlist), vecs, cfg.nprobe)
        pairs = search_lists(order, home, vecs, order[first_new:], probes[first_new:], vecs[first_new:],
                             cfg.semantic_threshold)
        dups.update(resolve_semantic(pairs, set(dups)))
    return dups
