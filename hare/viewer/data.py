"""What the viewer reads from the store: runs, one partition's records, one record, a lookup.

Read-only and bounded. A run is never loaded whole: the run list reads ``run.json`` (and the
card's figure table) of one page of runs; a run's partitions come from ``load_manifests`` (one
listing, the manifest index, GETs only of manifests newer than it), so a refresh while the run
goes sees each commit as it lands; records are read one partition at a time (its kept records
and its rejects, the objects its manifests list), kept in a small LRU of partitions. The
record a dropped one duplicates is found by id, one partition at a time: the published index
shards (``index/runs/<run>/<pid>.parquet``, ids only) when the run published, else the kept
records of the run's partitions, the dropped record's own partition first.

Nothing here writes to the store: an object that does not match its commit is reported, never
quarantined (that is the pipeline's job), so looking cannot change what a run will do.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hare.store.layout import (
    RUNS_PREFIX,
    card_key,
    manifest_key,
    published_index_key,
    published_marker_key,
    rejects_key,
    run_json,
    run_prefix,
)
from hare.store.manifest import PartitionManifest, kept_records, parse_manifest, records_output, rejected_records
from hare.store.manifest_index import load_manifests
from hare.store import KeyNotFound, ObjectStore, StoreError, check_key_part, sha256_bytes

log = logging.getLogger("hare.viewer")

RUNS_PER_PAGE = 50
PARTITION_CACHE = 4  # partitions kept in memory (each one partition's records, never a run)


class ViewError(Exception):
    """What the page says instead of a stack trace: a message naming the run, key or field."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def stage_order() -> list[str]:
    """Every per-partition commit, generation first, from the one stage list (tasks/stages.py)."""
    from hare.run.status import later_stages

    return ["generate", *later_stages()]


def run_stages(info: dict[str, Any]) -> list[str]:
    """The stages this run commits, in order (``stage_names`` of its config in run.json); every
    known stage when that config no longer validates (a run of older code): the page says which
    ones it found either way."""
    from hare.config import RunConfig
    from hare.tasks.stages import stage_names

    try:
        return stage_names(RunConfig.model_validate({**info["config"], "store": {"url": "file://."}}))
    except Exception as exc:  # noqa: BLE001 - any config problem: show every stage, say so in the log
        log.warning("viewer: run %s: its config does not validate (%s); showing every stage",
                    info.get("run_id"), str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return stage_order()


def produces_records(stage: str) -> bool:
    """Whether ``stage`` writes the records that survive it (features only adds columns elsewhere)."""
    from hare.tasks.stages import STAGES

    return stage == "generate" or next((s.produces_records for s in STAGES if s.name == stage), False)


def domain_of(topic_path: str | None) -> str:
    """A record's domain: the first segment of its topic path (as the card and reports count it)."""
    return (topic_path or "(none)").split(" > ")[0]


def _json(store: ObjectStore, key: str, what: str) -> Any:
    try:
        data = store.get_bytes(key)
    except KeyNotFound:
        raise ViewError(f"no {what}: {store.uri(key)} does not exist") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ViewError(f"{what} {store.uri(key)} is not readable JSON: {exc}", status=500) from None


def read_run_info(store: ObjectStore, run_id: str) -> dict[str, Any]:
    try:
        check_key_part(run_id, "run id")
    except StoreError as exc:
        raise ViewError(str(exc), status=400) from None
    try:
        store.get_bytes(run_json(run_id))
    except KeyNotFound:
        raise ViewError(f"no run {run_id!r} in {store.url} (no {run_json(run_id)})") from None
    info = _json(store, run_json(run_id), f"run.json of run {run_id!r}")
    if not isinstance(info, dict):
        raise ViewError(f"{store.uri(run_json(run_id))} is not a JSON object", status=500)
    return info


# --- runs -------------------------------------------------------------------------------------

def card_figures(store: ObjectStore, run_id: str) -> dict[str, str]:
    """The card's headline figures: its first ``| figure | value |`` table (empty before publish)."""
    try:
        text = store.get_bytes(card_key(run_id)).decode("utf-8", "replace")
    except KeyNotFound:
        return {}
    figures: dict[str, str] = {}
    in_table = False
    for line in text.splitlines():
        if line.startswith("| figure | value |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 2 and not set(cells[0]) <= {"-", ":"}:
                figures[cells[0]] = cells[1]
    return figures


@dataclass
class RunRow:
    run_id: str
    name: str = ""
    status: str = "?"
    started_at: str = ""
    finished_at: str = ""
    partitions: int = 0
    figures: dict[str, str] = field(default_factory=dict)
    problem: str = ""  # a run.json that cannot be read: said on its row, the others still listed


def _run_row(store: ObjectStore, run_id: str) -> RunRow:
    try:
        info = read_run_info(store, run_id)
    except ViewError as exc:
        return RunRow(run_id, problem=str(exc))
    row = RunRow(run_id, str(info.get("name", "")), str(info.get("status", "?")), str(info.get("started_at") or ""),
                 str(info.get("finished_at") or ""), len(info.get("partitions") or []))
    row.figures = card_figures(store, run_id)
    if not row.figures and isinstance(info.get("summary"), dict):  # running or failed: run.json's own summary
        row.figures = {k: str(v) for k, v in info["summary"].items() if isinstance(v, (int, float, str))}
    return row


def list_runs(store: ObjectStore, page: int = 1, per_page: int = RUNS_PER_PAGE) -> tuple[list[RunRow], int]:
    """One page of the store's runs, newest id first, and how many there are (a delimiter listing:
    no run's objects are listed; two small GETs per run on the page)."""
    ids = sorted(store.folders(RUNS_PREFIX), reverse=True)
    chunk = ids[(page - 1) * per_page: page * per_page]
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="hare-view") as pool:
        rows = list(pool.map(lambda r: _run_row(store, r), chunk))
    return rows, len(ids)


# --- a run's partitions ------------------------------------------------------------------------

@dataclass
class PartitionState:
    """One planned partition as its manifests say: which stages committed it, which failed."""

    pid: str
    stages: list[str]                           # the run's stages, in order
    committed: list[str]                        # stages in order, succeeded manifests only
    failed: dict[str, str]                      # stage -> error
    manifests: dict[str, PartitionManifest]     # stage -> manifest (succeeded or not)

    @property
    def baseline(self) -> bool:
        return self.stages == ["generate"]

    @property
    def readable(self) -> bool:
        return "generate" in self.committed

    @property
    def chain(self) -> list[str]:
        """The stages committed in order from generation on (a stage runs on what the one before kept)."""
        out = []
        for st in self.stages:
            if st not in self.committed:
                break
            out.append(st)
        return out

    @property
    def records_stage(self) -> str:
        """The last stage of the chain that wrote the records that survive it."""
        return [st for st in self.chain if produces_records(st)][-1]

    def stat(self, stage: str, name: str) -> Any:
        m = self.manifests.get(stage)
        return m.stats.get(name) if m is not None else None

    def kept(self, stage: str) -> int | None:
        m = self.manifests.get(stage)
        return kept_records(m.stats) if m is not None else None

    def rejected(self, stage: str) -> int | None:
        m = self.manifests.get(stage)
        return rejected_records(m.stats) if m is not None else None


def partition_states(store: ObjectStore, run_id: str, info: dict[str, Any]) -> list[PartitionState]:
    """Every planned partition with its commits so far: what the live view refreshes."""
    manifests = load_manifests(store, run_id)
    stages = run_stages(info)
    return [_state(pid, stages, {st: manifests[k] for st in stages if (k := manifest_key(run_id, pid, st)) in manifests})
            for pid in info.get("partitions") or []]


def _state(pid: str, stages: list[str], got: dict[str, PartitionManifest]) -> PartitionState:
    from hare.tasks.plan import is_baseline

    if is_baseline(pid):  # the no-priors baseline prompts: generated for the diversity figures only
        stages = stages[:1]
    return PartitionState(pid, stages, [st for st in stages if st in got and got[st].status == "succeeded"],
                          {st: m.error or m.status for st, m in got.items() if m.status != "succeeded"}, got)


def partition_state(store: ObjectStore, run_id: str, info: dict[str, Any], pid: str) -> PartitionState:
    try:
        check_key_part(pid, "partition id")
    except StoreError as exc:
        raise ViewError(str(exc), status=400) from None
    if pid not in (info.get("partitions") or []):
        raise ViewError(f"run {run_id!r} has no partition {pid!r}")
    stages = run_stages(info)
    got: dict[str, PartitionManifest] = {}
    for st in stages:  # one small GET per stage: no listing of the whole run for one partition
        try:
            got[st] = parse_manifest(store.get_bytes(manifest_key(run_id, pid, st)), run_id, pid, st)
        except KeyNotFound:
            continue
    return _state(pid, stages, got)


# --- one partition's records -------------------------------------------------------------------

OUTCOME, STAGE, REASON = "outcome", "reject_stage", "reject_reason"


def _read_table(store: ObjectStore, state: PartitionState, stage: str, key: str,
                columns: list[str] | None = None) -> pa.Table | None:
    """An object a commit lists, checked against the sha256 it was committed with (never moved);
    None when the commit does not list it (a stage that wrote no such object)."""
    ref = next((o for o in state.manifests[stage].outputs if o.key == key), None)
    if ref is None:
        return None
    try:
        data = store.get_bytes(key)
    except KeyNotFound:
        raise ViewError(f"{store.uri(key)} is missing although the {stage} commit of partition "
                        f"{state.pid} lists it", status=500) from None
    if sha256_bytes(data) != ref.sha256:
        raise ViewError(f"{store.uri(key)} does not match its {stage} commit (sha256 {sha256_bytes(data)[:12]}, "
                        f"committed {ref.sha256[:12]}): run `hare verify` / `hare rerun`", status=500)
    try:
        return pq.read_table(io.BytesIO(data), columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ViewError(f"{store.uri(key)} is not readable Parquet: {exc}", status=500) from None


def _records(run_id: str, state: PartitionState, stage: str) -> str:
    """Where ``stage``'s commit keeps the partition's records (an earlier run's spelling too)."""
    return records_output(state.manifests.get(stage), run_id, state.pid, stage)


def _unify(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


@dataclass
class PartitionRecords:
    """One partition's records as far as its commits go: every generated record once, kept (so
    far) or rejected by the stage that dropped it; ``pending`` the stages still to come."""

    pid: str
    table: pa.Table
    pending: list[str]
    last_stage: str


def read_partition(store: ObjectStore, run_id: str, state: PartitionState) -> PartitionRecords:
    if not state.readable:
        why = state.failed.get("generate")
        raise ViewError(f"partition {state.pid} of run {run_id!r} is not committed yet"
                        + (f" (generation failed: {why})" if why else ""), status=409)
    chain, last_records = state.chain, state.records_stage
    parts: list[pa.Table] = []
    kept = _read_table(store, state, last_records, _records(run_id, state, last_records))
    if kept is not None:
        parts.append(kept.append_column(OUTCOME, pa.array(["kept"] * kept.num_rows, pa.string())))
    for st in chain:
        rej = _read_table(store, state, st, rejects_key(run_id, st, state.pid))
        if rej is None or rej.num_rows == 0:
            continue
        if STAGE not in rej.column_names:
            rej = rej.append_column(STAGE, pa.array([st] * rej.num_rows, pa.string()))
        parts.append(rej.append_column(OUTCOME, pa.array(["rejected"] * rej.num_rows, pa.string())))
    table = _unify(parts)
    if "prompt_index" in table.column_names:
        table = table.sort_by("prompt_index")
    return PartitionRecords(state.pid, table, [st for st in state.stages if st not in chain], chain[-1])


class PartitionCache:
    """The last few partitions read, keyed by their commits (a new commit reads it again)."""

    def __init__(self, size: int = PARTITION_CACHE) -> None:
        self.size = size
        self._items: OrderedDict[tuple, PartitionRecords] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: ObjectStore, run_id: str, state: PartitionState) -> PartitionRecords:
        stamp = (store.url, run_id, state.pid,
                 tuple((st, m.finished_at, m.attempts) for st, m in sorted(state.manifests.items())))
        with self._lock:
            if stamp in self._items:
                self._items.move_to_end(stamp)
                return self._items[stamp]
        recs = read_partition(store, run_id, state)
        with self._lock:
            self._items[stamp] = recs
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return recs


# --- filters ------------------------------------------------------------------------------------

FILTERS = ("kind", "domain", "audience", "style", "outcome", "reason", "q")


def facet_values(table: pa.Table) -> dict[str, list[str]]:
    """The values each filter can take in this partition (the dropdowns)."""
    def distinct(col: str, fn: Callable[[str | None], str] = lambda v: v or "") -> list[str]:
        if col not in table.column_names:
            return []
        return sorted({fn(v) for v in table.column(col).to_pylist()})

    reasons = []
    if REASON in table.column_names:
        rej = table.filter(pc.equal(table.column(OUTCOME), "rejected"))
        reasons = sorted({f"{s}: {r}" for s, r in zip(rej.column(STAGE).to_pylist(), rej.column(REASON).to_pylist())})
    return {"kind": distinct("kind"), "domain": distinct("topic_path", domain_of), "audience": distinct("audience"),
            "style": distinct("style"), "outcome": ["kept", "rejected"], "reason": reasons}


def apply_filters(table: pa.Table, filters: dict[str, str]) -> pa.Table:
    """Rows matching every filter given; ``q``: case-insensitive substring of text or prompt;
    ``reason``: ``<stage>: <reason>`` as ``facet_values`` lists it."""
    mask = pa.array([True] * table.num_rows, pa.bool_())
    for name in ("kind", "audience", "style", "outcome"):
        value = filters.get(name)
        if value and name in table.column_names:
            mask = pc.and_(mask, pc.fill_null(pc.equal(table.column(name), value), False))
        elif value:
            return table.slice(0, 0)
    if (domain := filters.get("domain")) and "topic_path" in table.column_names:
        paths = table.column("topic_path")
        mask = pc.and_(mask, pc.fill_null(pc.or_(pc.equal(paths, domain), pc.starts_with(paths, domain + " > ")), False))
    if reason := filters.get("reason"):
        stage, _, why = reason.partition(": ")
        if REASON not in table.column_names:
            return table.slice(0, 0)
        mask = pc.and_(mask, pc.fill_null(pc.and_(pc.equal(table.column(STAGE), stage),
                                                  pc.equal(table.column(REASON), why)), False))
    if q := filters.get("q"):
        hit = pa.array([False] * table.num_rows, pa.bool_())
        for col in ("text", "prompt"):
            if col in table.column_names:
                hit = pc.or_(hit, pc.fill_null(pc.match_substring(table.column(col), q, ignore_case=True), False))
        mask = pc.and_(mask, hit)
    return table.filter(mask)


# --- one record and what it duplicates ------------------------------------------------------------

def find_row(recs: PartitionRecords, prompt_index: int) -> dict[str, Any]:
    if "prompt_index" not in recs.table.column_names:
        raise ViewError(f"partition {recs.pid} has no prompt_index column", status=500)
    rows = recs.table.filter(pc.equal(recs.table.column("prompt_index"), prompt_index)).to_pylist()
    if not rows:
        raise ViewError(f"partition {recs.pid} has no record with prompt_index {prompt_index}")
    return rows[0]


def kept_row(recs: PartitionRecords, record_id: str) -> dict[str, Any] | None:
    """The kept record ``record_id`` of a partition already read (an exact copy shares its id)."""
    t = recs.table
    if "id" not in t.column_names:
        return None
    rows = t.filter(pc.and_(pc.equal(t.column("id"), record_id), pc.equal(t.column(OUTCOME), "kept"))).to_pylist()
    return rows[0] if rows else None


def _kept_ids(store: ObjectStore, run_id: str, state: PartitionState) -> pa.Table | None:
    """(id, prompt_index) of a partition's kept records so far: two columns of one object."""
    if not state.readable:
        return None
    last = state.records_stage
    return _read_table(store, state, last, _records(run_id, state, last), ["id", "prompt_index"])


def locate_record(store: ObjectStore, run_id: str, record_id: str, near: str | None = None) -> tuple[str, int]:
    """(partition, prompt_index) of the kept record ``record_id`` of ``run_id``: the published
    index names its partition when the run published; else the run's partitions are read one
    at a time (ids only), ``near`` (the dropped record's own partition) first."""
    info = read_run_info(store, run_id)
    pids = list(info.get("partitions") or [])
    order = ([near] if near in pids else []) + [p for p in pids if p != near]
    if store.exists(published_marker_key(run_id)):
        for pid in order:
            try:
                ids = pq.read_table(io.BytesIO(store.get_bytes(published_index_key(run_id, pid))), columns=["id"])
            except KeyNotFound:
                continue
            except (pa.ArrowException, OSError) as exc:
                log.warning("viewer: published index shard %s unreadable: %s",
                            store.uri(published_index_key(run_id, pid)), exc)
                continue
            if pc.any(pc.equal(ids.column("id"), record_id)).as_py():
                order = [pid]  # its partition: the prompt_index comes from the records
                break
    for pid in order:
        state = partition_state(store, run_id, info, pid)
        if not state.readable:
            continue
        ids = _kept_ids(store, run_id, state)
        if ids is None:
            continue
        hit = ids.filter(pc.equal(ids.column("id"), record_id))
        if hit.num_rows:
            return pid, int(hit.column("prompt_index")[0].as_py())
    raise ViewError(f"no kept record {record_id} in run {run_id!r} (looked in {len(order)} partition(s))")


# --- lineage ------------------------------------------------------------------------------------

def lineage_events(store: ObjectStore, run_id: str, page: int = 1,
                   per_page: int = 100) -> tuple[list[dict[str, Any]], int]:
    """One page of the run's OpenLineage events by key (job, type, time, inputs/outputs), and
    how many there are: one listing, one GET per event on the page."""
    prefix = f"{run_prefix(run_id)}/lineage/"
    listed = [k for k in store.list(prefix) if k.endswith(".json")]
    keys = listed[(page - 1) * per_page: page * per_page]

    def one(key: str) -> dict[str, Any]:
        try:
            ev = json.loads(store.get_bytes(key))
            return {"key": key.rsplit("/", 1)[-1], "job": ev.get("job", {}).get("name", "?"),
                    "type": ev.get("eventType", "?"), "time": ev.get("eventTime", ""),
                    "inputs": [f"{d.get('namespace', '')}{d.get('name', '')}" for d in ev.get("inputs", [])],
                    "outputs": [f"{d.get('namespace', '')}{d.get('name', '')}" for d in ev.get("outputs", [])]}
        except (KeyNotFound, ValueError, AttributeError) as exc:
            return {"key": key.rsplit("/", 1)[-1], "job": "?", "type": "unreadable", "time": "",
                    "inputs": [], "outputs": [], "problem": str(exc)}

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="hare-view") as pool:
        events = list(pool.map(one, keys))
    return events, len(listed)

