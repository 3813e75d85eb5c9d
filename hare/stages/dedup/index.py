"""The store's dedup index, sharded so that a run's cost grows with its own size.

Layout (keys in hare/store/layout.py):

- ``index/minhash/_scheme.json``: MinHash scheme, ``num_perm``, shingles, bands x rows and the
  number of bucket groups, fixed by the first run that indexes into the store;
- ``index/minhash/g<g>/<run>/<pid>.parquet``: (key, row, exact) band keys of what a partition
  published, in bucket group g (a key's group is its top byte modulo the group count);
- ``index/ivf/current.json`` and ``index/ivf/<version>/centroids.npy``: the IVF quantizer,
  trained once per store on a sample (``hare index retrain`` makes a new version);
- ``index/ivf/<version>/g<g>/<run>/<pid>.parquet``: (row, list, vector) of what a partition
  published, in list group g;
- ``index/runs/<run>/<pid>.parquet``: the published records' features (id, signature,
  embedding), read only for the few records that turn up in a candidate pair;
- ``index/published/<run>.json``: written last; only marked runs count as published.

A run's own band keys are written by its streamed ``features`` stage
(``runs/<run>/dedup/bands/g<g>/<pid>.parquet``); its list assignments by a parallel pass at
decision time (the quantizer may be trained from this very run). The decision then runs one
task per group (Ray tasks when Ray is up): each joins this run's keys with the stored ones of
its group only, and returns candidate pairs; the pairs (a small set) are confirmed and
resolved in the deciding process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hare.config import DedupConfig
from hare.stages.dedup.layers import (Duplicate, ROW_BITS, assign_lists, candidate_pairs, confirm_near, group_lists, layer_verdicts,
                        nlist_for, order_of, resolve_clusters, resolve_semantic, search_lists, train_quantizer)
from hare.store.layout import (features_key, index_bands_key, index_bands_prefix, index_lease_key, index_lists_key,
                         index_lists_prefix, index_shard_ids, ivf_centroids_key, ivf_current_key, ivf_lineage_key,
                         ivf_version_key, minhash_params_key, published_index_key, published_index_prefix,
                         published_marker_key, published_markers_prefix, run_bands_key, run_id_of_folder,
                         run_lists_key)
from hare.stages.dedup.minhash import SchemeMismatch, band_keys, check_scheme, id_keys, lsh_params, scheme
from hare.store import KeyNotFound, ObjectStore, open_store
from hare.store.tables import from_parquet_bytes, to_parquet_bytes
from hare.clock import utc_now

log = logging.getLogger("hare.dedup")
T = TypeVar("T")
R = TypeVar("R")
SCHEME_META = b"hare.minhash_scheme"


# --- parameters -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinhashParams:
    scheme: str
    num_perm: int
    shingle_words: int
    bands: int
    rows: int
    groups: int

    def group_of(self, keys: np.ndarray) -> np.ndarray:
        return ((keys >> np.uint64(56)) % np.uint64(self.groups)).astype(np.int32)


def minhash_params(store: ObjectStore, cfg: DedupConfig) -> MinhashParams:
    """The store's band layout, or this config's for a store that has none yet. A store made
    with other signatures (scheme, num_perm, shingles) is refused, naming both."""
    try:
        found = json.loads(store.get_bytes(minhash_params_key()))
    except KeyNotFound:
        bands, rows = lsh_params(cfg.near_threshold, cfg.num_perm)
        return MinhashParams(scheme(), cfg.num_perm, cfg.shingle_words, bands, rows, cfg.index_groups)
    params = MinhashParams(**found)
    check_scheme(params.scheme, f"this store's dedup index ({store.uri(minhash_params_key())})")
    if (params.num_perm, params.shingle_words) != (cfg.num_perm, cfg.shingle_words):
        raise SchemeMismatch(f"this store's dedup index uses num_perm={params.num_perm}, shingle_words="
                             f"{params.shingle_words}; the config asks for num_perm={cfg.num_perm}, "
                             f"shingle_words={cfg.shingle_words}: signatures would not be comparable")
    return params


def fix_params(store: ObjectStore, params: MinhashParams) -> MinhashParams:
    """Write the store's band layout if it has none (the first writer wins)."""
    store.put_if_absent(minhash_params_key(), json.dumps(asdict(params), indent=2).encode())
    return MinhashParams(**json.loads(store.get_bytes(minhash_params_key())))


# --- small table helpers ----------------------------------------------------------------------------

def stamped(table: pa.Table) -> pa.Table:
    """The table with the MinHash scheme in its schema metadata (kept in its Parquet file)."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SCHEME_META: scheme().encode()})


def _parquet(table: pa.Table) -> bytes:
    """Index shards hold hashes and vectors: zstd only costs time on them."""
    return to_parquet_bytes(stamped(table), compression="none")


def _read(store: ObjectStore, key: str, columns: list[str] | None = None) -> pa.Table:
    try:
        table = pq.read_table(io.BytesIO(store.get_bytes(key)), columns=columns)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{key} is not a readable Parquet file: {exc}") from exc
    found = (table.schema.metadata or {}).get(SCHEME_META)
    check_scheme(found.decode() if found else None, key)
    return table


StoreRef = Union[str, ObjectStore]  # a URL (Ray tasks reopen it) or, in one process, the store itself


def _open(ref: StoreRef) -> ObjectStore:
    return open_store(ref) if isinstance(ref, str) else ref


def _ref(store: ObjectStore) -> StoreRef:
    """What a job carries: the URL where a Ray task can reopen it, else the store object."""
    import ray

    return store.url if ray.is_initialized() else store


def _read_stored(store: ObjectStore, key: str, columns: list[str] | None = None) -> pa.Table | None:
    """An index shard, or None when it is corrupt: it is moved to ``quarantine/`` (named and
    logged) and left out, so the dedup of later runs goes on without it."""
    from hare.store.quarantine import quarantine_object

    try:
        return _read(store, key, columns)
    except KeyNotFound:
        return None
    except (ValueError, OSError) as exc:
        if isinstance(exc, SchemeMismatch):
            raise
        quarantine_object(store, key, f"unreadable index shard: {exc}")
        if rebuild_shards(store, key):
            log.warning("dedup index: %s was corrupt: moved to quarantine/ and rebuilt from its run", key)
            return _read(store, key, columns)
        log.error("dedup index: %s is corrupt, moved to quarantine/ and left out (its run's features "
                  "or records are gone): %s", key, exc)
        return None


def rebuild_shards(store: ObjectStore, key: str) -> bool:
    """Write a published partition's index shards again from what its run still holds (its
    features and the records its dedup stage kept); False when those are gone too."""
    from hare.store.layout import records_key

    run_id, pid = index_shard_ids(key)
    try:
        source = records_key(run_id, pid, "dedup")
        kept = set(from_parquet_bytes(store.get_bytes(source), source).column("id").to_pylist())
        params = MinhashParams(**json.loads(store.get_bytes(minhash_params_key())))
        publish_partition(store, params, load_quantizer(store), run_id, pid, kept)
    except (KeyNotFound, ValueError, OSError):
        return False
    return store.exists(key)


def parallel_map(fn: Callable[[T], R], items: list[T], num_cpus: float = 1) -> list[R]:
    """``fn`` over ``items`` as Ray tasks when Ray is up (a flow's task), else in this process."""
    import ray

    if not ray.is_initialized() or len(items) <= 1:
        return [fn(x) for x in items]
    remote = ray.remote(num_cpus=num_cpus, max_retries=2)(fn)
    return ray.get([remote.remote(x) for x in items])


def features_table(ids: list[str], sigs: np.ndarray, vecs: np.ndarray) -> pa.Table:
    """id, minhash (uint32 list), embedding (float32 list): a partition's dedup features."""
    n = len(ids)
    return stamped(pa.table({
        "id": pa.array(list(ids), pa.string()),
        "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sigs.reshape(-1), pa.uint32()), sigs.shape[1]),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1).astype(np.float32), pa.float32()),
                                                       vecs.shape[1]) if vecs.shape[1] else pa.nulls(n, pa.list_(pa.float32())),
    }))


def split_features(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, signatures (n, num_perm) uint32, embeddings (n, dim) float32) of a features table."""
    ids = table.column("id").to_pylist()
    n = len(ids)
    return ids, _matrix(table, "minhash", np.uint32, n), _matrix(table, "embedding", np.float32, n)


def _half(vecs: np.ndarray) -> pa.Array:
    """Vectors of the inverted lists, stored as float16: half the bytes, cosine within ~1e-3."""
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).reshape(-1), pa.float16()), vecs.shape[1])


def _matrix(table: pa.Table, column: str, dtype: type, n: int) -> np.ndarray:
    if column not in table.column_names or n == 0:
        return np.zeros((n, 0), dtype)
    col = table.column(column).combine_chunks()
    if col.null_count == n:
        return np.zeros((n, 0), dtype)
    flat = col.flatten() if hasattr(col, "flatten") else col.values
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=dtype).reshape(n, -1)


# --- writing keys ----------------------------------------------------------------------------------

def band_rows(params: MinhashParams, ids: list[str], sigs: np.ndarray) -> dict[int, pa.Table]:
    """This partition's (key, row, exact) rows, split by bucket group."""
    n = len(ids)
    if n == 0:
        return {}
    keys = np.concatenate([band_keys(sigs, params.bands, params.rows).reshape(-1), id_keys(ids)])
    rows = np.concatenate([np.repeat(np.arange(n, dtype=np.int32), params.bands), np.arange(n, dtype=np.int32)])
    exact = np.concatenate([np.zeros(n * params.bands, bool), np.ones(n, bool)])
    group = params.group_of(keys)
    return {int(g): stamped(pa.table({"key": keys[group == g], "row": rows[group == g], "exact": exact[group == g]}))
            for g in np.unique(group)}


def band_objects(params: MinhashParams, ids: list[str], sigs: np.ndarray,
                 key_of: Callable[[int], str]) -> dict[str, pa.Table]:
    return {key_of(g): t for g, t in band_rows(params, ids, sigs).items()}


# --- the stored side ----------------------------------------------------------------------------------

@dataclass
class Parts:
    """Every partition taking part in a decision, numbered in global order: published runs in
    the order they were published, then this run's partitions in order."""

    keys: list[tuple[str, str, bool]]  # (run, partition, is this run)
    number: dict[tuple[str, str], int]
    first_new: int  # the global order of this run's first record

    @classmethod
    def of(cls, store: ObjectStore, run_id: str, partition_ids: list[str]) -> "Parts":
        keys = [(r, p, False) for r in published_runs(store, exclude=run_id) for p in published_partitions(store, r)]
        keys += [(run_id, p, True) for p in partition_ids]
        first_new = int(order_of(sum(1 for k in keys if not k[2]), 0))
        return cls(keys, {(r, p): i for i, (r, p, _) in enumerate(keys)}, first_new)

    def locate(self, order: int) -> tuple[str, str, int, bool]:
        run, pid, new = self.keys[order >> ROW_BITS]
        return run, pid, order & ((1 << ROW_BITS) - 1), new


def published_runs(store: ObjectStore, exclude: str = "") -> list[str]:
    """Runs whose index is complete (marker written), in publish order. A run whose index
    shards carry no scheme (written before signatures were versioned) is refused."""
    marked = []
    for key in store.list(published_markers_prefix()):
        info = json.loads(store.get_bytes(key))
        if info["run_id"] != exclude:
            marked.append((info["published_at"], info["run_id"]))
    names = {r for _, r in marked}
    for run in store.folders(published_index_prefix()):
        run = run_id_of_folder(run)
        if run in names or run == exclude:
            continue
        shards = store.list(published_index_prefix(run))
        if shards:
            meta = pq.read_schema(io.BytesIO(store.get_bytes(shards[0]))).metadata or {}
            if SCHEME_META not in meta:  # an older hare's index: do not silently mix signatures
                check_scheme(None, store.uri(published_index_prefix(run)))
    return [r for _, r in sorted(marked)]


def published_partitions(store: ObjectStore, run_id: str) -> list[str]:
    prefix = published_index_prefix(run_id)
    return sorted(index_shard_ids(k)[1] for k in store.list(prefix) if k.endswith(".parquet"))


def published_records(store: ObjectStore, exclude: str = "") -> int:
    total = 0
    for key in store.list(published_markers_prefix()):
        info = json.loads(store.get_bytes(key))
        total += info.get("records", 0) if info["run_id"] != exclude else 0
    return total


# --- the decision ----------------------------------------------------------------------------------------

@dataclass
class GroupJob:
    store: StoreRef
    run_id: str
    group: int
    parts: Parts
    exact: bool
    near: bool


def near_candidates(job: GroupJob) -> tuple[np.ndarray, np.ndarray]:
    """(exact pairs, near candidate pairs) of one bucket group: this run's keys joined with
    the stored keys of the same group (and with each other)."""
    store = _open(job.store)
    keys, orders, exact = [], [], []

    def add(key: str, part: int, stored: bool = False) -> None:
        t = _read_stored(store, key) if stored else _read(store, key)
        if t is None:
            return
        keys.append(t.column("key").to_numpy())
        orders.append(order_of(part, t.column("row").to_numpy()))
        exact.append(t.column("exact").to_numpy(zero_copy_only=False))

    for key in store.list(index_bands_prefix(job.group)):
        run, pid = index_shard_ids(key)
        if (run, pid) in job.parts.number and run != job.run_id:
            add(key, job.parts.number[(run, pid)], stored=True)
    for run, pid, new in job.parts.keys:
        if new:
            try:
                add(run_bands_key(run, job.group, pid), job.parts.number[(run, pid)])
            except KeyNotFound:
                pass  # no key of this partition fell in this group
    if not keys:
        return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    k, o, e = np.concatenate(keys), np.concatenate(orders), np.concatenate(exact)
    none = np.zeros((0, 2), np.int64)
    return (candidate_pairs(k[e], o[e], job.parts.first_new) if job.exact else none,
            candidate_pairs(k[~e], o[~e], job.parts.first_new) if job.near else none)


def gather(store: ObjectStore, parts: Parts, orders: Iterable[int], columns: list[str]) -> dict[int, dict[str, Any]]:
    """The named feature columns of a few records by global order, one read per partition."""
    by_part: dict[int, list[int]] = {}
    for o in set(int(x) for x in orders):
        by_part.setdefault(o >> ROW_BITS, []).append(o)

    def load(item: tuple[int, list[int]]) -> dict[int, dict[str, Any]]:
        part, wanted = item
        run, pid, new = parts.keys[part]
        key = features_key(run, pid) if new else published_index_key(run, pid)
        t = _read(store, key, columns) if new else _read_stored(store, key, columns)
        if t is None:
            return {}
        rows = np.array([o & ((1 << ROW_BITS) - 1) for o in wanted])
        picked = t.take(pa.array(rows))
        values = {c: _matrix(picked, c, np.uint32, len(rows)) if c == "minhash" else picked.column(c).to_pylist()
                  for c in columns}  # signatures as one uint32 matrix, not Python ints
        return {o: {c: values[c][i] for c in columns} for i, o in enumerate(wanted)}

    result: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(4) as pool:  # each read holds one partition's features
        for part in pool.map(load, by_part.items()):
            result.update(part)
    return result


@dataclass
class Decision:
    verdicts: dict[str, dict[int, tuple[Duplicate, str, str]]]  # pid -> row -> (dup, of id, of run)
    prior_records: int
    candidates: int
    semantic_pairs: np.ndarray  # (query, member, cosine) rows the list search found (benchmarks read them)
    seconds: dict[str, float]  # wall time and peak RSS after the near (exact + MinHash) and semantic parts


def decide(store: ObjectStore, cfg: DedupConfig, run_id: str, partition_ids: list[str]) -> Decision:
    """The run's dedup verdicts against everything published in ``store`` and against itself,
    from the features its partitions committed (no record is read)."""
    started = time.perf_counter()
    params = minhash_params(store, cfg)
    parts = Parts.of(store, run_id, partition_ids)
    jobs = [GroupJob(_ref(store), run_id, g, parts, cfg.exact, cfg.near) for g in range(params.groups)]
    results = parallel_map(near_candidates, jobs) if (cfg.exact or cfg.near) else []
    exact_pairs = np.concatenate([r[0] for r in results] or [np.zeros((0, 2), np.int64)])
    cands = np.concatenate([r[1] for r in results] or [np.zeros((0, 2), np.int64)])
    info = gather(store, parts, np.concatenate([exact_pairs.reshape(-1), cands.reshape(-1)]), ["id", "minhash"])
    sig_of = {o: np.asarray(v["minhash"], np.uint32) for o, v in info.items()}
    exact_pairs, cands = (p[[int(a) in info and int(b) in info for a, b in p]] if len(p) else p  # a shard left out
                          for p in (exact_pairs, cands))
    if len(exact_pairs):  # keys are 64 bits of the id: confirm the ids themselves
        exact_pairs = exact_pairs[[info[int(a)]["id"] == info[int(b)]["id"] for a, b in exact_pairs]]
    edges = np.concatenate([exact_pairs, confirm_near(cands, sig_of, cfg.near_threshold)])
    dups = layer_verdicts(resolve_clusters(edges, parts.first_new), {o: v["id"] for o, v in info.items()}, sig_of)
    near_done, near_rss = time.perf_counter(), _peak_rss_mib()
    pairs = np.zeros((0, 3))
    if cfg.semantic:
        pairs = semantic_search(store, cfg, run_id, partition_ids, parts)
        dups.update(resolve_semantic(pairs, set(dups)))
    names = gather(store, parts, [d.of for d in dups.values()], ["id"])
    verdicts: dict[str, dict[int, tuple[Duplicate, str, str]]] = {p: {} for p in partition_ids}
    for o, d in dups.items():
        _, pid, row, _ = parts.locate(o)
        of_run, _, _, _ = parts.locate(d.of)
        verdicts[pid][row] = (d, names[d.of]["id"], of_run)
    seconds = {"near": round(near_done - started, 2), "semantic": round(time.perf_counter() - near_done, 2),
               "peak_rss_mib_near": near_rss, "peak_rss_mib_semantic": _peak_rss_mib()}
    return Decision(verdicts, published_records(store, exclude=run_id), len(cands) + len(exact_pairs), pairs, seconds)


def _peak_rss_mib() -> float:
    """This process's peak RSS since it started its program (VmHWM: unlike ru_maxrss it does
    not carry the RSS of the parent it was forked from)."""
    try:
        with open("/proc/self/status") as fh:
            return round(next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")) / 1024, 1)
    except (OSError, StopIteration):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- semantic: the stored IVF index ---------------------------------------------------------------------

@dataclass(frozen=True)
class Quantizer:
    version: str
    centroids: np.ndarray
    groups: np.ndarray  # list -> list group

    @property
    def group_count(self) -> int:
        return int(self.groups.max()) + 1


def load_quantizer(store: ObjectStore) -> Quantizer | None:
    try:
        current = json.loads(store.get_bytes(ivf_current_key()))
    except KeyNotFound:
        return None
    centroids = np.load(io.BytesIO(store.get_bytes(ivf_centroids_key(current["version"]))))
    return Quantizer(current["version"], centroids, np.asarray(current["list_groups"], np.int32))


def write_quantizer(store: ObjectStore, centroids: np.ndarray, groups: int, version: str,
                    **about: Any) -> dict[str, Any]:
    """A quantizer version's centroids and description (not yet the current one)."""
    buf = io.BytesIO()
    np.save(buf, centroids.astype(np.float32))
    store.put_bytes(ivf_centroids_key(version), buf.getvalue())
    body = {"version": version, "nlist": int(centroids.shape[0]), "dim": int(centroids.shape[1]),
            "list_groups": group_lists(centroids, groups).tolist(), "trained_at": utc_now(), **about}
    store.put_bytes(ivf_version_key(version), json.dumps(body).encode())
    return body


LIST_GROUP_RECORDS = 100_000


def list_group_count(cfg: DedupConfig, records: int) -> int:
    """List groups: at least ``index_groups``, and about one per 100k records, so one group
    task's vectors stay near 100k * (1 + the queries probing it) whatever the run's size."""
    return max(cfg.index_groups, -(-records // LIST_GROUP_RECORDS))


def quantizer_for(store: ObjectStore, cfg: DedupConfig, run_id: str, partition_ids: list[str]) -> Quantizer:
    """The store's quantizer; the first run trains it on a sample of its own embeddings."""
    found = load_quantizer(store)
    if found is not None:
        return found
    expected = sum(store_rows(store, features_key(run_id, p)) for p in partition_ids)
    nlist = nlist_for(expected, expected, cfg.flat_max)
    want = min(expected, max(nlist * 40, 1))
    rng = np.random.default_rng(0)
    sample, have = [], 0
    for pid in rng.permutation(partition_ids).tolist():
        if have >= want:
            break
        _, _, vecs = split_features(_read(store, features_key(run_id, pid), ["id", "embedding"]))
        if len(vecs):  # a partition the filters emptied has (0, 0) features: nothing to train on
            sample.append(vecs)
        have += len(vecs)
    vecs = np.concatenate(sample) if sample else np.zeros((0, 1), np.float32)
    body = write_quantizer(store, train_quantizer(vecs, nlist), list_group_count(cfg, expected), "v1",
                           trained_on=len(vecs), trained_by=run_id)
    store.put_if_absent(ivf_current_key(), json.dumps(body).encode())  # two first runs at once: the first wins
    found = load_quantizer(store)
    assert found is not None
    return found


def store_rows(store: ObjectStore, key: str) -> int:
    return pq.read_metadata(io.BytesIO(store.get_bytes(key))).num_rows


@dataclass
class ListJob:
    store: StoreRef
    run_id: str
    partition_id: str
    version: str
    nprobe: int


def assign_partition(job: ListJob) -> None:
    """One partition's embeddings into the quantizer's lists, one object per list group."""
    store = _open(job.store)
    q = load_quantizer(store)
    assert q is not None and q.version == job.version
    _, _, vecs = split_features(_read(store, features_key(job.run_id, job.partition_id), ["id", "embedding"]))
    if len(vecs) == 0:
        return
    home, probes = assign_lists(q.centroids, vecs, job.nprobe)
    for g in range(q.group_count):
        in_group = q.groups[probes] == g
        rows = np.flatnonzero(in_group.any(axis=1))
        if len(rows) == 0:
            continue
        probe_g = np.where(in_group[rows], probes[rows], -1)
        home_g = np.where(q.groups[home[rows]] == g, home[rows], -1)
        store.put_bytes(run_lists_key(job.run_id, g, job.partition_id), _parquet(pa.table({
            "row": pa.array(rows.astype(np.int32)), "list": pa.array(home_g),
            "probes": pa.FixedSizeListArray.from_arrays(pa.array(probe_g.reshape(-1)), probe_g.shape[1]),
            "vector": _half(vecs[rows])})))


@dataclass
class SearchJob:
    store: StoreRef
    run_id: str
    group: int
    version: str
    parts: Parts
    threshold: float


def semantic_pairs(job: SearchJob) -> np.ndarray:
    """(query, member, cosine) pairs of one list group: this run's vectors against the stored
    lists of the group and this run's earlier vectors."""
    store = _open(job.store)
    m_o, m_l, m_v, q_o, q_p, q_v = [], [], [], [], [], []
    prefix = index_lists_prefix(job.version, job.group)
    for key in store.list(prefix):
        run, pid = index_shard_ids(key)
        if (run, pid) not in job.parts.number or run == job.run_id:
            continue
        t = _read_stored(store, key)
        if t is None:
            continue
        m_o.append(order_of(job.parts.number[(run, pid)], t.column("row").to_numpy()))
        m_l.append(t.column("list").to_numpy())
        m_v.append(_matrix(t, "vector", np.float16, t.num_rows))
    for run, pid, new in job.parts.keys:
        if not new:
            continue
        try:
            t = _read(store, run_lists_key(run, job.group, pid))
        except KeyNotFound:
            continue
        o = order_of(job.parts.number[(run, pid)], t.column("row").to_numpy())
        lst, vec = t.column("list").to_numpy(), _matrix(t, "vector", np.float16, t.num_rows)
        home = lst >= 0
        m_o.append(o[home]), m_l.append(lst[home]), m_v.append(vec[home])
        q_o.append(o), q_p.append(_matrix(t, "probes", np.int32, t.num_rows)), q_v.append(vec)
    if not q_o or not m_o:
        return np.zeros((0, 3))
    return search_lists(np.concatenate(m_o), np.concatenate(m_l), np.concatenate(m_v),
                        np.concatenate(q_o), np.concatenate(q_p), np.concatenate(q_v), job.threshold)


def semantic_search(store: ObjectStore, cfg: DedupConfig, run_id: str, partition_ids: list[str],
                    parts: Parts) -> np.ndarray:
    """Every (this run's record, earlier record, cosine) pair at or above the threshold in
    the lists each record probes: assignment per partition, then search per list group."""
    q = quantizer_for(store, cfg, run_id, partition_ids)
    parallel_map(assign_partition, [ListJob(_ref(store), run_id, p, q.version, cfg.nprobe) for p in partition_ids])
    jobs = [SearchJob(_ref(store), run_id, g, q.version, parts, cfg.semantic_threshold) for g in range(q.group_count)]
    return np.concatenate(parallel_map(semantic_pairs, jobs) or [np.zeros((0, 3))])


# --- publishing into the index ----------------------------------------------------------------------------

def publish_partition(store: ObjectStore, params: MinhashParams, quantizer: Quantizer | None,
                      run_id: str, partition_id: str, kept_ids: set[str]) -> int:
    """A partition's kept records into the index: features shard, band keys, list entries."""
    try:
        feats = _read(store, features_key(run_id, partition_id))
    except KeyNotFound:
        return 0
    seen: set[str] = set()
    keep = []
    for i in feats.column("id").to_pylist():  # an exact copy shares its original's id: index it once
        keep.append(i in kept_ids and i not in seen)
        seen.add(i)
    shard = feats.filter(pa.array(keep, pa.bool_()))
    ids, sigs, vecs = split_features(shard)
    store.put_bytes(published_index_key(run_id, partition_id), _parquet(shard))
    for key, table in band_objects(params, ids, sigs, lambda g: index_bands_key(g, run_id, partition_id)).items():
        store.put_bytes(key, _parquet(table))
    if quantizer is not None and vecs.shape[1] and len(ids):
        home, _ = assign_lists(quantizer.centroids, vecs, 1)
        group = quantizer.groups[home]
        for g in np.unique(group):
            rows = np.flatnonzero(group == g)
            store.put_bytes(index_lists_key(quantizer.version, int(g), run_id, partition_id), _parquet(pa.table({
                "row": pa.array(rows.astype(np.int32)), "list": pa.array(home[rows]),
                "vector": _half(vecs[rows])})))
    return len(ids)


def publish_run(store: ObjectStore, cfg: DedupConfig, run_id: str, partition_ids: list[str],
                kept_ids: Callable[[str], set[str]]) -> dict[str, Any]:
    """Every partition's kept records into the index (in parallel), then the marker that makes
    them count: a run cut off halfway is not published, and publishing again redoes it."""
    params = fix_params(store, minhash_params(store, cfg))
    quantizer = load_quantizer(store) if cfg.semantic else None
    with ThreadPoolExecutor(4) as pool:  # each holds one partition's features
        records = sum(pool.map(lambda p: publish_partition(store, params, quantizer, run_id, p, kept_ids(p)),
                               partition_ids))
    marker = {"run_id": run_id, "published_at": utc_now(), "partitions": len(partition_ids), "records": records,
              "scheme": params.scheme, "ivf_version": quantizer.version if quantizer else None}
    store.put_bytes(published_marker_key(run_id), json.dumps(marker, indent=2).encode())
    return marker


# --- retraining the quantizer (hare index retrain) ---------------------------------------------------------

@dataclass
class ReassignJob:
    store: StoreRef
    run_id: str
    partition_id: str
    version: str


def reassign_partition(job: ReassignJob) -> int:
    """One published partition's vectors into the lists of quantizer ``version``."""
    store = _open(job.store)
    centroids = np.load(io.BytesIO(store.get_bytes(ivf_centroids_key(job.version))))
    groups = np.asarray(json.loads(store.get_bytes(ivf_version_key(job.version)))["list_groups"], np.int32)
    _, _, vecs = split_features(_read(store, published_index_key(job.run_id, job.partition_id), ["id", "embedding"]))
    if len(vecs) == 0 or vecs.shape[1] == 0:
        return 0
    home, _ = assign_lists(centroids, vecs, 1)
    for g in np.unique(groups[home]):
        rows = np.flatnonzero(groups[home] == g)
        store.put_bytes(index_lists_key(job.version, int(g), job.run_id, job.partition_id), _parquet(pa.table({
            "row": pa.array(rows.astype(np.int32)), "list": pa.array(home[rows]), "vector": _half(vecs[rows])})))
    return len(vecs)


def retrain(store: ObjectStore, cfg: DedupConfig, nlist: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A new quantizer trained on a sample of everything published, every published vector
    reassigned into its lists, then made current; the old version stays until deleted."""
    from hare.store import lineage

    parts = [(r, p) for r in published_runs(store) for p in published_partitions(store, r)]
    sizes = {rp: store_rows(store, published_index_key(*rp)) for rp in parts}
    total = sum(sizes.values())
    nlist = nlist or nlist_for(total, total, cfg.flat_max)
    rng = np.random.default_rng(seed)
    sample, have = [], 0
    for i in rng.permutation(len(parts)).tolist():
        if have >= nlist * 40:
            break
        _, _, vecs = split_features(_read(store, published_index_key(*parts[i]), ["id", "embedding"]))
        sample.append(vecs)
        have += len(vecs)
    if not sample or sample[0].shape[1] == 0:
        raise ValueError(f"{store.url}: no published embeddings to train on (semantic dedup was off?)")
    old = load_quantizer(store)
    version = f"v{int(old.version.lstrip('v')) + 1}" if old else "v1"
    body = write_quantizer(store, train_quantizer(np.concatenate(sample), nlist, seed), list_group_count(cfg, total),
                           version,
                           trained_on=have, published_records=total, replaces=old.version if old else None)
    moved = parallel_map(reassign_partition, [ReassignJob(_ref(store), r, p, version) for r, p in parts])
    store.put_bytes(ivf_current_key(), json.dumps(body).encode())
    summary = {k: v for k, v in body.items() if k != "list_groups"} | {"reassigned": sum(moved)}
    lineage.emit(store, "index", "index.retrain", "COMPLETE",
                 inputs=[lineage.dataset(store.uri(published_index_prefix(r))) for r in sorted({r for r, _ in parts})],
                 outputs=[lineage.dataset(store.uri(ivf_centroids_key(version)))],
                 facets=summary, key=ivf_lineage_key(version))
    return summary


# --- one run at a time decides against and publishes into the index ----------------------------------------

@contextlib.contextmanager
def hold_index(store: ObjectStore, run_id: str, wait_s: float = 6 * 3600, poll_s: float = 2.0,
               say: Callable[[str], None] | None = None) -> Iterator[None]:
    """The store's index lease, from the dedup decision to the end of publish: a run decides
    against exactly the index state it publishes into, so two runs started together never
    publish the same text twice. Another run holding it is waited for (up to ``wait_s``).

    A wait can be long (the other run's whole dedup and publish) and looks like a hang, so it
    is said, once, naming the run that holds the lease, and again when the lease is taken:
    through ``say`` (the flow passes its run logger, whose lines reach the run's log and the
    Prefect UI), else this module's logger."""
    from hare.store.lease import LeaseHeld, default_owner, held

    say = say or log.info
    started = time.time()
    deadline, waited = started + wait_s, False
    while True:
        hold = held(store, index_lease_key(), "index", owner=f"run {run_id} ({default_owner()})",
                    what=f"the dedup index of {store.url}")
        try:
            hold.__enter__()
            break
        except LeaseHeld as exc:
            if time.time() > deadline:
                raise
            if not waited:
                say(f"run {run_id}: waiting for the dedup index of {store.url} (one run at a time decides and "
                    f"publishes): held by {exc.holder.describe()}")
                waited = True
            time.sleep(poll_s)
    if waited:
        say(f"run {run_id}: took the dedup index after waiting {time.time() - started:.0f} s")
    try:
        yield
    finally:
        hold.__exit__(None, None, None)


DECISION_GATE_ENV = "HARE_TEST_DECISION_GATE"


def decision_gate(run_id: str, wait_s: float = 900.0, poll_s: float = 0.1) -> None:
    """Tests only; nothing at all unless ``$HARE_TEST_DECISION_GATE`` names a folder. Called
    right after a run's dedup decision: it writes ``<folder>/<run_id>.decided`` and waits until
    ``<folder>/open`` exists (at most ``wait_s``). A test so holds two runs between decision and
    publish at once, and a missing index lease then shows as a text published twice every
    time, not only when the two runs happen to decide within the same second."""
    folder = os.environ.get(DECISION_GATE_ENV)
    if not folder:
        return
    gate = Path(folder)
    gate.mkdir(parents=True, exist_ok=True)
    (gate / f"{run_id}.decided").write_text(str(os.getpid()))
    deadline = time.monotonic() + wait_s
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(poll_s)
