"""Dedup at scale: a store of earlier runs, then one more; and MinHash speed against rensa.

    PYTHONPATH=. .venv/bin/python -m bench.dedup_bench [--runs 4] [--n 1000000] [--part 20000]

1. MinHash: ``hare.minhash.signatures`` (rensa's bulk digest matrix) against rensa's own
   per-document ``RMinHash.update``/``digest`` loop on the same texts (the public-domain corpus
   in 300-word documents), the same word 5-gram shingles and ``num_perm``: interleaved rounds,
   median and spread, one core.
2. Index: ``--runs`` runs of ``--n`` records each are deduplicated one after the other into one
   local store, each in a fresh child process (its peak RSS is the figure). Features are
   synthetic, written exactly as the streamed ``features`` stage writes them (features shard
   and band keys per partition): 128-value MinHash signatures and 384-d unit vectors drawn
   around 20,000 topic centres. Planted in every run: 0.2% exact copies, 0.5% near copies
   (8 of 128 signature values changed, Jaccard ~0.94, a new vector) and 0.5% semantic copies
   (cosine ~0.97, a new signature); after the first run 80% of the sources are in earlier
   runs. Scored one to one: a planted copy counts as found only if its verdict names its own
   source and layer. False drops: unplanted records dropped. Semantic pair recall: for 1,000
   random and 1,000 planted queries of the last run, the pairs at or above the threshold that
   the inverted-list search found / the pairs exact search over every earlier vector finds.
   The thresholds are the defaults, never tuned on these data.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
D, CENTRES, PERM = 384, 20_000, 128
EXACT, NEAR, SEMANTIC = 0.002, 0.005, 0.005


# --- 1. MinHash speed ---------------------------------------------------------------------------

def minhash_bench(rounds: int = 5) -> dict:
    import rensa

    from hare.stages.dedup.minhash import shingle_sets, signatures

    words = " ".join(Path(f).read_text(encoding="utf-8") for f in sorted(glob.glob(str(ROOT / "data/corpus/pd-prose/*.txt")))).split()
    texts = [" ".join(words[i:i + 300]) for i in range(0, len(words) - 300, 300)]
    mb = sum(len(t.encode()) for t in texts) / 1e6
    hare_mbs, rensa_mbs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ours = signatures(texts, PERM, 5)
        hare_mbs.append(mb / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        ref = []
        for sh in shingle_sets(texts, 5):
            m = rensa.RMinHash(PERM, 1)
            m.update(sh)
            ref.append(m.digest())
        rensa_mbs.append(mb / (time.perf_counter() - t0))
        assert (np.asarray(ref, np.uint32) == ours).all(), "hare's signatures must equal rensa's own"
    ratios = [h / r for h, r in zip(hare_mbs, rensa_mbs)]
    return {"texts": len(texts), "mb": round(mb, 2), "rounds": rounds,
            "hare_mb_per_s": _spread(hare_mbs), "rensa_loop_mb_per_s": _spread(rensa_mbs),
            "ratio_hare_over_rensa": _spread(ratios)}


def _spread(xs: list[float]) -> dict:
    return {"median": round(float(np.median(xs)), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


# --- 2. synthetic runs -------------------------------------------------------------------------

def _ids(run: int, idx: np.ndarray) -> list[str]:
    return [hashlib.sha256(f"{run}:{i}".encode()).hexdigest()[:32] for i in idx.tolist()]


def _base_vecs(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    v = centres[rng.integers(0, CENTRES, n)] + rng.standard_normal((n, D), dtype=np.float32) * (0.75 / np.sqrt(D))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_run(work: Path, run: int, n: int) -> dict:
    """Signatures and vectors of one run (memory-mapped on disk), with planted copies."""
    rng = np.random.default_rng(100 + run)
    centres = np.random.default_rng(0).standard_normal((CENTRES, D), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sigs = np.lib.format.open_memmap(work / f"run{run}.sigs.npy", "w+", np.uint32, (n, PERM))
    vecs = np.lib.format.open_memmap(work / f"run{run}.vecs.npy", "w+", np.float16, (n, D))
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        sigs[s:e] = rng.integers(0, 2 ** 32, (e - s, PERM), dtype=np.uint32)
        vecs[s:e] = _base_vecs(rng, centres, e - s)
    ids = _ids(run, np.arange(n))
    kinds = rng.permutation(n)
    k_exact, k_near, k_sem = int(n * EXACT), int(n * NEAR), int(n * SEMANTIC)
    planted = {"exact": np.sort(kinds[:k_exact]), "near": np.sort(kinds[k_exact:k_exact + k_near]),
               "semantic": np.sort(kinds[k_exact + k_near:k_exact + k_near + k_sem])}
    copies = set(np.concatenate(list(planted.values())).tolist())
    truth = []
    earlier = [np.load(work / f"run{r}.sigs.npy", mmap_mode="r") for r in range(run)]
    earlier_v = [np.load(work / f"run{r}.vecs.npy", mmap_mode="r") for r in range(run)]
    for kind, rows in planted.items():
        for row in rows.tolist():
            if run > 0 and rng.random() < 0.8:
                src_run = int(rng.integers(0, run))
                src = int(rng.integers(0, n))
                while src in _copies_of(work, src_run):
                    src = int(rng.integers(0, n))
                s_sig, s_vec, s_id = earlier[src_run][src], earlier_v[src_run][src], _ids(src_run, np.array([src]))[0]
            else:
                src_run, src = run, int(rng.integers(0, max(1, row)))
                while src in copies and src > 0:
                    src = int(rng.integers(0, max(1, row)))
                if src in copies:
                    continue
                s_sig, s_vec, s_id = sigs[src], vecs[src], ids[src]
            if kind == "exact":
                sigs[row], vecs[row], ids[row] = s_sig, s_vec, s_id
            elif kind == "near":
                sig = np.array(s_sig)
                pos = rng.choice(PERM, 8, replace=False)
                sig[pos] = rng.integers(0, 2 ** 32, 8, dtype=np.uint32)
                sigs[row] = sig
            else:
                v = np.asarray(s_vec, np.float32) + rng.standard_normal(D, dtype=np.float32) * (0.25 / np.sqrt(D))
                vecs[row] = v / np.linalg.norm(v)
            truth.append({"row": row, "kind": kind, "src_run": src_run, "src": src, "src_id": s_id})
    sigs.flush(), vecs.flush()
    (work / f"run{run}.copies.json").write_text(json.dumps(sorted(copies)))
    (work / f"run{run}.truth.json").write_text(json.dumps(truth))
    (work / f"run{run}.ids.json").write_text(json.dumps(ids))
    return {"planted": {k: len(v) for k, v in planted.items()}, "copies": len(copies)}


_COPIES: dict[tuple[str, int], set[int]] = {}


def _copies_of(work: Path, run: int) -> set[int]:
    key = (str(work), run)
    if key not in _COPIES:
        _COPIES[key] = set(json.loads((work / f"run{run}.copies.json").read_text()))
    return _COPIES[key]


def stage_run(work: Path, store_url: str, run: int, n: int, part: int) -> list[str]:
    """What the streamed features stage writes, per partition."""
    from hare.config import DedupConfig
    from hare.stages.dedup.index import band_objects, features_table, minhash_params
    from hare.store.layout import features_key, run_bands_key
    from hare.store import open_store
    from hare.store.tables import to_parquet_bytes

    store = open_store(store_url)
    params = minhash_params(store, DedupConfig())
    sigs = np.load(work / f"run{run}.sigs.npy", mmap_mode="r")
    vecs = np.load(work / f"run{run}.vecs.npy", mmap_mode="r")
    ids = json.loads((work / f"run{run}.ids.json").read_text())
    pids = []
    for p, s in enumerate(range(0, n, part)):
        pid, e = f"p{p:05d}", min(n, s + part)
        name = f"run-{run}"
        objs = {features_key(name, pid): features_table(ids[s:e], np.asarray(sigs[s:e]), np.asarray(vecs[s:e], np.float32)),
                **band_objects(params, ids[s:e], np.asarray(sigs[s:e]), lambda g: run_bands_key(name, g, pid))}
        for key, table in objs.items():
            store.put_bytes(key, to_parquet_bytes(table))
        pids.append(pid)
    return pids


def _cpu() -> float:
    """CPU seconds of this process (user + system): steadier than wall time on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def decide_child(store_url: str, run: int, pids: list[str], out: Path) -> None:
    """One run's decision and its publish into the index, in this (child) process."""
    from hare.config import DedupConfig
    from hare.stages.dedup.index import _peak_rss_mib, decide, publish_run
    from hare.store import open_store

    store, cfg, name = open_store(store_url), DedupConfig(), f"run-{run}"
    t0, c0 = time.perf_counter(), _cpu()
    decision = decide(store, cfg, name, pids)
    t1, c1 = time.perf_counter(), _cpu()
    rss_after_decide = _peak_rss_mib()  # VmHWM: ru_maxrss would carry the forking parent's RSS
    ids = json.loads((out.parent / f"run{run}.ids.json").read_text())
    part = int(os.environ["BENCH_PART"])
    dropped = {pids.index(pid) * part + row for pid, v in decision.verdicts.items() for row in v}
    publish_run(store, cfg, name, pids,
                lambda pid: {ids[i] for i in range(pids.index(pid) * part, min(len(ids), (pids.index(pid) + 1) * part))
                             if i not in dropped})
    t2 = time.perf_counter()
    verdicts = [{"row": pids.index(pid) * part + row, "layer": d.layer, "of_id": of_id, "of_run": of_run}
                for pid, v in decision.verdicts.items() for row, (d, of_id, of_run) in v.items()]
    out.write_text(json.dumps({
        "decide_seconds": round(t1 - t0, 1), "decide_cpu_seconds": round(c1 - c0, 1), "parts_seconds": decision.seconds, "publish_seconds": round(t2 - t1, 1),
        "peak_rss_mib": _peak_rss_mib(),
        "peak_rss_mib_decide": round(rss_after_decide, 1),
        "candidates": decision.candidates, "verdicts": verdicts,
        "semantic_pairs": decision.semantic_pairs.tolist()}))


def score(work: Path, run: int, result: dict) -> dict:
    truth = json.loads((work / f"run{run}.truth.json").read_text())
    copies = _copies_of(work, run)
    got = {v["row"]: v for v in result["verdicts"]}
    found = {k: 0 for k in ("exact", "near", "semantic")}
    total = {k: 0 for k in found}
    for t in truth:
        total[t["kind"]] += 1
        v = got.get(t["row"])
        if v and v["layer"] == t["kind"] and v["of_id"] == t["src_id"] and v["of_run"] == f"run-{t['src_run']}":
            found[t["kind"]] += 1
    n = len(json.loads((work / f"run{run}.ids.json").read_text()))
    false_drops = sum(1 for r in got if r not in copies)
    return {"recall": {k: round(found[k] / max(1, total[k]), 4) for k in found}, "planted": total,
            "false_drops": false_drops, "false_drop_rate": round(false_drops / max(1, n - len(copies)), 5)}


def pair_recall(work: Path, run: int, n: int, part: int, pairs: list, threshold: float, rng_seed: int = 5) -> dict:
    """Inverted-list pairs against exact search over every earlier vector, for sampled queries."""
    from hare.stages.dedup.layers import ROW_BITS

    rng = np.random.default_rng(rng_seed)
    truth = json.loads((work / f"run{run}.truth.json").read_text())
    sem = [t["row"] for t in truth if t["kind"] == "semantic"]
    queries = np.unique(np.concatenate([rng.choice(n, 1000, replace=False), rng.choice(sem, min(1000, len(sem)), replace=False)]))
    per_run = -(-n // part)

    def gord(r: int, idx: np.ndarray) -> np.ndarray:
        """Global order of records; an earlier run's row is its place among the partition's
        published (kept) records, as in the store's index shards."""
        if r < run:
            idx = idx - shift[r][idx]
        return ((np.int64(r * per_run) + idx // part) << np.int64(ROW_BITS)) + idx % part

    shift, kept = {}, {}
    for r in range(run):
        dropped = np.zeros(n, bool)
        dropped[[v["row"] for v in json.loads((work / f"run{r}.result.json").read_text())["verdicts"]]] = True
        before = np.cumsum(dropped) - dropped  # dropped rows before each row, run-wide
        start = (np.arange(n) // part) * part
        shift[r], kept[r] = before - before[start], ~dropped  # ... within its own partition

    q_vec = np.asarray(np.load(work / f"run{run}.vecs.npy", mmap_mode="r")[queries], np.float32)
    q_ord = gord(run, queries)
    exact = set()
    for r in range(run + 1):
        vecs = np.load(work / f"run{r}.vecs.npy", mmap_mode="r")
        for s in range(0, n, 200_000):
            block = np.asarray(vecs[s:s + 200_000], np.float32)
            sims = q_vec @ block.T
            qi, mi = np.nonzero(sims >= threshold)
            if r < run:  # only what the earlier run published is in the store
                keep = kept[r][s + mi]
                qi, mi = qi[keep], mi[keep]
            m_ord = gord(r, s + mi)
            for a, b in zip(q_ord[qi].tolist(), m_ord.tolist()):
                if b < a:
                    exact.add((a, b))
    qset = set(q_ord.tolist())
    found = {(int(a), int(b)) for a, b, _ in pairs if int(a) in qset}
    return {"queries": len(queries), "exact_pairs": len(exact), "found": len(exact & found),
            "pair_recall": round(len(exact & found) / max(1, len(exact)), 4)}


def index_bench(runs: int, n: int, part: int, work: Path) -> list[dict]:
    from hare.config import DedupConfig

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    store_url = f"file://{work / 'store'}"
    rows = []
    for run in range(runs):
        t0 = time.perf_counter()
        made = make_run(work, run, n)
        pids = stage_run(work, store_url, run, n, part)
        staged = time.perf_counter() - t0
        out = work / f"run{run}.result.json"
        env = {**os.environ, "BENCH_PART": str(part), "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "bench.dedup_bench", "--child", store_url, str(run), json.dumps(pids),
                        str(out)], check=True, env=env, cwd=ROOT)
        result = json.loads(out.read_text())
        row = {"run": run, "records": n, "partitions": len(pids), "store_records_before": run * n,
               "features_staged_seconds": round(staged, 1), **made,
               **{k: result[k] for k in ("decide_seconds", "decide_cpu_seconds", "parts_seconds", "publish_seconds", "peak_rss_mib",
                                   "peak_rss_mib_decide", "candidates")},
               **score(work, run, result)}
        if run in (0, runs - 1):
            row["semantic"] = pair_recall(work, run, n, part, result["semantic_pairs"], DedupConfig().semantic_threshold)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, store_url, run, pids, out = sys.argv
        decide_child(store_url, int(run), json.loads(pids), Path(out))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--part", type=int, default=20_000)
    p.add_argument("--work", default=str(ROOT / ".hare" / "bench-dedup"))
    p.add_argument("--skip-index", action="store_true")
    args = p.parse_args()
    from bench.provenance import provenance

    out = {**provenance(), "date": date.today().isoformat(), "cores": os.cpu_count(), "minhash": minhash_bench()}
    print(json.dumps(out["minhash"]), flush=True)
    if not args.skip_index:
        out["index"] = index_bench(args.runs, args.n, args.part, Path(args.work))
        first, last = out["index"][0], out["index"][-1]
        out["last_over_first_decide"] = round(last["decide_seconds"] / first["decide_seconds"], 2)
        out["last_over_first_decide_cpu"] = round(last["decide_cpu_seconds"] / first["decide_cpu_seconds"], 2)
    dest = ROOT / "bench" / "results" / f"dedup-{out['date']}-{args.runs}x{args.n}.json"
    dest.write_text(json.dumps(out, indent=2))
    print(f"-> {dest}")


if __name__ == "__main__":
    main()
