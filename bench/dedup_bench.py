"""Dedup benchmarks: semantic dedup of 1,000,000 384-d embeddings, MinHash and embedding throughput.

    .venv/bin/python bench/dedup_bench.py [--n 1000000] [--sample 2000]

1. Semantic: 1M unit vectors in 384-d, drawn around 20,000 topic centres (cosine to their centre
   ~0.8) plus 1% planted near-copies (cosine ~0.97). ``hare.dedup.semantic_duplicates`` with the
   default config (IVF above 200k vectors, nprobe 16) is timed end to end (index build + search),
   and its neighbour search is compared with exact flat search for ``--sample`` random queries:
   pair recall = pairs at or above the threshold that IVF finds / pairs exact search finds.
2. MinHash: ``minhash_signatures`` on real generated text (the stores' records), MB/s on one core.
3. Embeddings: all-MiniLM-L6-v2 texts/s on this machine's cores, same texts.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from hare.config import DedupConfig
from hare.dedup import build_index, minhash_signatures, semantic_duplicates

ROOT = Path(__file__).resolve().parent.parent


def synthetic(n: int, d: int = 384, centres: int = 20_000, planted: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    base = n - int(n * planted)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, base, 100_000):
        e = min(base, s + 100_000)
        noise = rng.standard_normal((e - s, d), dtype=np.float32) * (0.75 / np.sqrt(d))
        out[s:e] = c[rng.integers(0, centres, e - s)] + noise
    src = rng.integers(0, base, n - base)
    out[base:] = out[src] + rng.standard_normal((n - base, d), dtype=np.float32) * (0.25 / np.sqrt(d))
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def semantic_bench(n: int, sample: int) -> dict:
    import faiss

    cfg = DedupConfig()
    vecs = synthetic(n)
    t0 = time.perf_counter()
    index = build_index(vecs, cfg)
    t_build = time.perf_counter() - t0
    dups = semantic_duplicates(vecs, cfg, set(), index=index)
    wall = time.perf_counter() - t0

    rng = np.random.default_rng(1)
    queries = rng.choice(n, size=sample, replace=False)
    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs)
    k = cfg.neighbors
    es, ei = flat.search(vecs[queries], k)
    as_, ai = index.search(vecs[queries], k)
    exact_pairs = {(int(q), int(j)) for q, row_s, row_i in zip(queries, es, ei)
                   for s, j in zip(row_s, row_i) if j != q and s >= cfg.semantic_threshold}
    approx_pairs = {(int(q), int(j)) for q, row_s, row_i in zip(queries, as_, ai)
                    for s, j in zip(row_s, row_i) if j != q and s >= cfg.semantic_threshold}
    return {
        "vectors": n, "index": type(index).__name__, "nlist": getattr(index, "nlist", None),
        "nprobe": getattr(index, "nprobe", None), "threshold": cfg.semantic_threshold,
        "build_seconds": round(t_build, 1), "wall_seconds": round(wall, 1),
        "duplicates_found": len(dups), "planted": int(n * 0.01),
        "sample_queries": sample, "exact_pairs": len(exact_pairs),
        "pair_recall": round(len(exact_pairs & approx_pairs) / max(1, len(exact_pairs)), 4),
    }


def text_benches() -> dict:
    from bench.decontam_recall import clean_records
    from hare.embed import embed

    texts = [r["text"] for r in clean_records([str(ROOT / ".hare" / "store"), str(ROOT / ".hare" / "bench-store")])]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        minhash_signatures(texts, DedupConfig())
        runs.append(mb / (time.perf_counter() - t0))
    embed(texts[:8])  # load the model
    eruns = []
    for _ in range(3):
        t0 = time.perf_counter()
        embed(texts)
        eruns.append(len(texts) / (time.perf_counter() - t0))
    words = sum(len(t.split()) for t in texts) / len(texts)
    return {"texts": len(texts), "mean_words": round(words, 1), "mb": round(mb, 2),
            "minhash_mb_per_s_one_core": round(float(np.median(runs)), 2),
            "embed_texts_per_s": round(float(np.median(eruns)), 1), "cores": os.cpu_count()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--skip-semantic", action="store_true")
    args = p.parse_args()
    out = {"text": text_benches()}
    if not args.skip_semantic:
        out["semantic"] = semantic_bench(args.n, args.sample)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
