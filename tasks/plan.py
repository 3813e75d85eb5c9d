"""Stage ``plan``: seed taxonomy x prior axes -> prompt specs, cut into partitions.

Deterministic from (config, seed): the same config gives the same prompts, partition ids and
per-prompt seeds, which is what lets a re-run find and redo exactly the missing partitions.

Allocation rule (stratified; docs/priors.md):
1. Leaves: each of the L leaves gets floor(N/L) prompts; the N mod L leftovers go to the first
   leaves of a seeded shuffle. No leaf is ever more than one prompt from its share.
2. Slots are visited round-robin over the shuffled leaves (one prompt per leaf per round), so
   neighbouring prompts, and so partitions, mix topics.
3. Audience and style: each slot takes the value used least so far (seeded tie-break), so
   every value's count is within one of N/|values|.
4. Kind: each kind has a planned count (equal shares, water-filled when a kind is restricted to
   some domains, like ``code``); each slot takes, among the kinds its domain allows, the one
   furthest below its planned count (seeded tie-break).
The optional baseline (diversity.baseline_prompts) adds partitions ``b00000...`` of one generic
prompt with no priors, generated like the others and kept out of the dataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

import pyarrow as pa
from prefect import task

from hare.store import lineage
from hare.config import RunConfig
from hare.store.layout import plan_key, plan_report_key
from hare.priors.prompts import BASELINE, PromptTemplate, prompt_seed, template_for
from hare.store.runs import start_run
from hare.store.schema import PLAN_SCHEMA
from hare.store import open_store, sha256_bytes
from hare.store.tables import to_parquet_bytes
from hare.priors.taxonomy import Leaf, load_taxonomy

ALLOCATION_RULE = (
    "leaves: floor(N/L) each, N mod L extra to a seeded shuffle; slots round-robin over leaves; "
    "audience/style: least-used value per slot; kind: among kinds allowed for the leaf's domain, "
    "the one furthest below its water-filled planned count"
)


def partition_id(index: int, prefix: str = "p") -> str:
    """Partition ids come from the plan, never from how Ray splits work."""
    return f"{prefix}{index:05d}"


def leaf_slots(leaves: Sequence[Leaf], total: int, rng: random.Random,
               per_leaf: dict[str, int] | None = None) -> list[Leaf]:
    """Rules 1-2: per-leaf counts within one of N/L (or ``per_leaf``: the coverage allocation's
    counts by leaf path), visited round-robin over the shuffled leaves."""
    order = list(leaves)
    rng.shuffle(order)
    if per_leaf is None:
        base, extra = divmod(total, len(order))
        counts = [base + (1 if i < extra else 0) for i in range(len(order))]
    else:
        counts = [per_leaf.get(leaf.path, 0) for leaf in order]
    return [leaf for rnd in range(max(counts, default=0)) for leaf, n in zip(order, counts) if n > rnd]


def kind_targets(slots: Sequence[Leaf], kinds: Sequence[str]) -> dict[str, float]:
    """Planned count per kind: equal shares, water-filled around domain-restricted kinds."""
    capacity = {k: sum(template_for(k).allows(s.domain) for s in slots) for k in kinds}
    targets: dict[str, float] = {}
    left, open_kinds = float(len(slots)), list(kinds)
    while open_kinds:
        share = left / len(open_kinds)
        capped = [k for k in open_kinds if capacity[k] < share]
        if not capped:
            targets.update({k: share for k in open_kinds})
            break
        for k in capped:
            targets[k] = float(capacity[k])
            left -= capacity[k]
            open_kinds.remove(k)
    return targets


def _least_used(counts: Counter, values: Sequence[str], rng: random.Random) -> str:
    low = min(counts[v] for v in values)
    return rng.choice([v for v in values if counts[v] == low])


def allocate(
    leaves: Sequence[Leaf], audiences: Sequence[str], styles: Sequence[str], kinds: Sequence[str],
    total: int, seed: int, per_leaf: dict[str, int] | None = None,
) -> Iterator[tuple[Leaf, str, str, str]]:
    """The stratified (leaf, audience, style, kind) of every prompt, in plan order, one at a
    time (a 10M-prompt plan is never held whole); ``per_leaf``: prompts per leaf decided
    elsewhere (the coverage allocation) instead of rule 1."""
    rng = random.Random(seed)
    slots = leaf_slots(leaves, total, rng, per_leaf)
    targets = kind_targets(slots, kinds)
    used_a, used_s, used_k = Counter(), Counter(), Counter()
    for leaf in slots:
        audience = _least_used(used_a, audiences, rng)
        style = _least_used(used_s, styles, rng)
        allowed = [k for k in kinds if template_for(k).allows(leaf.domain)]
        if not allowed:
            raise ValueError(f"no task kind of {list(kinds)} is allowed for domain {leaf.domain!r}")
        gap = {k: used_k[k] / targets[k] if targets[k] else float("inf") for k in allowed}
        best = min(gap.values())
        kind = rng.choice([k for k in allowed if gap[k] == best])
        used_a[audience] += 1
        used_s[style] += 1
        used_k[kind] += 1
        yield leaf, audience, style, kind


def _row(i: int, pid: str, seed: int, tpl: PromptTemplate, prompt: str, leaf: Leaf | None,
         audience: str, style: str, problem_only: bool = False) -> dict[str, Any]:
    return {
        "prompt_index": i, "partition_id": pid,
        "topic_path": leaf.path if leaf else "", "topic": leaf.topic if leaf else "",
        "audience": audience, "style": style, "kind": tpl.id,
        "template_id": tpl.id, "template_version": tpl.version, "system": tpl.system_turn(problem_only),
        "prompt": prompt, "seed": prompt_seed(seed, i),
    }


class PlanCounts:
    """The plan report's counts (per domain, leaf, audience, style and kind), added up one
    prompt at a time, so the report never needs the plan held whole."""

    AXES = (("leaves", "topic_path"), ("audiences", "audience"), ("styles", "style"), ("kinds", "kind"))

    def __init__(self) -> None:
        self.prompts = self.baseline_prompts = 0
        self.counts: dict[str, Counter[str]] = {name: Counter() for name, _ in self.AXES}

    def add(self, topic_path: str, audience: str, style: str, kind: str) -> None:
        self.prompts += 1
        for (name, _), value in zip(self.AXES, (topic_path, audience, style, kind)):
            self.counts[name][value] += 1

    def add_table(self, plan: pa.Table) -> None:
        """Count a plan table (dataset and baseline rows)."""
        cols = {col: plan.column(col).to_pylist() for _, col in self.AXES}
        for i, pid in enumerate(plan.column("partition_id").to_pylist()):
            if is_baseline(pid):
                self.baseline_prompts += 1
            else:
                self.add(*(cols[col][i] for _, col in self.AXES))

    def report(self, cfg: RunConfig) -> dict[str, Any]:
        """Planned counts per domain, leaf and axis value (the dataset's prompts, not the baseline)."""
        leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
        axes = cfg.axes.resolve()
        by_domain = Counter()
        for path, n in self.counts["leaves"].items():
            by_domain[path.split(" > ")[0]] += n
        universe = {"leaves": [leaf.path for leaf in leaves], "audiences": axes.audiences,
                    "styles": axes.styles, "kinds": axes.kinds}
        return {
            "prompts": self.prompts,
            "baseline_prompts": self.baseline_prompts,
            "allocation_rule": ALLOCATION_RULE,
            "domains": {d: by_domain.get(d, 0) for d in dict.fromkeys(leaf.domain for leaf in leaves)},
            **{name: {v: self.counts[name].get(v, 0) for v in universe[name]} for name, _ in self.AXES},
        }


def plan_partition_ids(cfg: RunConfig) -> list[str]:
    """The synthesized plan's partition ids, dataset (``p*``) then baseline (``b*``), without
    building it (the partitions of a corpus or rewrite source come from reading it:
    :func:`plan_source_partitions`)."""
    per = cfg.plan.prompts_per_partition
    baseline = -(-cfg.diversity.baseline_prompts // per)
    synthesized = cfg.plan.partitions if cfg.synthesizes() else 0
    return [partition_id(i) for i in range(synthesized)] + [partition_id(j, "b") for j in range(baseline)]


def synthesized_prompts(cfg: RunConfig) -> int:
    """Prompts the plan synthesizes (0 in a run without a synthesize source)."""
    return cfg.plan.partitions * cfg.plan.prompts_per_partition if cfg.synthesizes() else 0


def plan_source_partitions(cfg: RunConfig) -> Iterator[tuple[str, pa.Table]]:
    """The partitions of the rewrite sources (``r*``, prompts numbered after the synthesized
    and baseline ones) and of the corpus sources (``c*``), one at a time."""
    from hare.tasks.corpus import plan_corpus_partitions
    from hare.tasks.rewrite import rewrite_plan_table, rewrite_rows

    first = synthesized_prompts(cfg) + cfg.diversity.baseline_prompts
    for pid, group in itertools.groupby(rewrite_rows(cfg, first), key=lambda r: r["partition_id"]):
        yield pid, rewrite_plan_table(list(group))
    yield from plan_corpus_partitions(cfg)


def source_summary(cfg: RunConfig, tables: Iterable[tuple[str, pa.Table]]) -> list[dict[str, Any]]:
    """Per source (in the config's order): kind, share, partitions and what they hold
    (prompts; corpus files and bytes): the plan report's and ``hare plan``'s view of the sources."""
    out = {s.name: {"name": s.name, "kind": s.kind, "share": s.share, "partitions": 0} for s in cfg.run_sources()}
    synth = next((s for s in cfg.run_sources() if s.kind == "synthesize"), None)
    if synth is not None:
        out[synth.name].update(partitions=cfg.plan.partitions, prompts=synthesized_prompts(cfg))
    files: dict[str, set[str]] = {}
    for _, table in tables:
        rows = table.to_pylist()
        entry = out[rows[0]["source"]]
        entry["partitions"] += 1
        entry.setdefault("first_partition", rows[0]["partition_id"])
        entry["last_partition"] = rows[0]["partition_id"]
        if "uri" in table.column_names:
            for r in rows:  # what a range counts: bytes (JSONL/text), row groups (Parquet), rows (datasets)
                unit = {"parquet": "row_groups", "datasets": "rows"}.get(r["format"], "bytes")
                entry[unit] = entry.get(unit, 0) + r["end"] - r["start"]
            files.setdefault(entry["name"], set()).update(r["uri"] for r in rows)
        else:
            entry["prompts"] = entry.get("prompts", 0) + len(rows)
    for name, uris in files.items():
        out[name]["files"] = len(uris)
    return list(out.values())


def _allocation(cfg: RunConfig, coverage: dict[str, Any] | None = None) -> Iterator[tuple[Leaf, str, str, str]]:
    """The config's allocation (:func:`allocate` over its taxonomy and axes), one prompt at a
    time; with ``plan.allocate: coverage``, the prompts per leaf of ``coverage`` (the run's
    stored measurement), measured now when not given."""
    leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
    axes = cfg.axes.resolve()
    per_leaf = None
    if cfg.plan.allocate == "coverage" and cfg.synthesizes():
        from hare.tasks.coverage import measure_coverage

        per_leaf = (coverage or measure_coverage(cfg))["allocation"]
    return allocate(leaves, axes.audiences, axes.styles, axes.kinds, synthesized_prompts(cfg), cfg.seed, per_leaf)


def _prompt_row(cfg: RunConfig, i: int, pid: str, leaf: Leaf, audience: str, style: str, kind: str) -> dict[str, Any]:
    """The prompt spec of one stratum (a self-consistency kind asks for the problem only)."""
    tpl = template_for(kind)
    problem_only = cfg.validation.samples(kind) > 1
    prompt = tpl.render(topic=leaf.topic, description=leaf.description, topic_path=leaf.path,
                        audience=audience, style=style, problem_only=problem_only)
    return _row(i, pid, cfg.seed, tpl, prompt, leaf, audience, style, problem_only)


def by_partition_table(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, pa.Table]]:
    """Consecutive rows of one partition id as one table, a partition at a time."""
    for pid, group in itertools.groupby(rows, key=lambda r: r["partition_id"]):
        yield pid, pa.Table.from_pylist(list(group), schema=PLAN_SCHEMA)


def plan_partitions(cfg: RunConfig, counts: PlanCounts | None = None,
                    coverage: dict[str, Any] | None = None) -> Iterator[tuple[str, pa.Table]]:
    """Each partition's prompt specs, in plan order (dataset ``p*``, then baseline ``b*``), built
    one partition at a time; ``counts`` adds up the plan report on the way; ``coverage``: the
    run's coverage measurement (``plan.allocate: coverage``)."""
    counts = counts if counts is not None else PlanCounts()
    per = cfg.plan.prompts_per_partition
    total = synthesized_prompts(cfg)

    def rows() -> Iterator[dict[str, Any]]:
        for i, (leaf, audience, style, kind) in enumerate(_allocation(cfg, coverage)):
            counts.add(leaf.path, audience, style, kind)
            yield _prompt_row(cfg, i, partition_id(i // per), leaf, audience, style, kind)
        for j in range(cfg.diversity.baseline_prompts):
            counts.baseline_prompts += 1
            yield _row(total + j, partition_id(j // per, "b"), cfg.seed, BASELINE, BASELINE.text, None, "", "")

    return by_partition_table(rows())


def count_plan(cfg: RunConfig) -> PlanCounts:
    """The plan report's counts from the allocation alone (no prompt rendered): what the
    estimate (``hare plan``) needs, cheap at any size."""
    counts = PlanCounts()
    for leaf, audience, style, kind in _allocation(cfg):
        counts.add(leaf.path, audience, style, kind)
    counts.baseline_prompts = cfg.diversity.baseline_prompts
    return counts


def build_plan(cfg: RunConfig) -> pa.Table:
    """All prompt specs of the dataset (partitions ``p*``) and the baseline (``b*``) as one
    table: for tests and small plans; a run writes :func:`plan_partitions` one at a time."""
    return pa.concat_tables([PLAN_SCHEMA.empty_table(), *(t for _, t in plan_partitions(cfg))])


def split_partitions(plan: pa.Table) -> dict[str, pa.Table]:
    """The plan cut by partition id, in plan order."""
    ids = plan.column("partition_id").to_pylist()
    out: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            out[ids[start]] = plan.slice(start, i - start)
            start = i
    return out


def is_baseline(partition: str) -> bool:
    return partition.startswith("b")


def partition_sources(cfg: RunConfig, plan_report: dict[str, Any], partition_ids: list[str]) -> dict[str, str]:
    """The source of each dataset partition: ``p*`` the synthesize source, a rewrite or corpus
    partition the source whose range of partitions (the plan report's ``sources``) holds it."""
    synth = next((s.name for s in cfg.run_sources() if s.kind == "synthesize"), "synthesize")
    ranges = [(s["first_partition"], s["last_partition"], s["name"]) for s in plan_report.get("sources", [])
              if "first_partition" in s]
    out = {}
    for pid in partition_ids:
        found = [name for lo, hi, name in ranges if lo[0] == pid[0] and int(lo[1:]) <= int(pid[1:]) <= int(hi[1:])]
        out[pid] = found[0] if found else synth
    return out


def in_source_order(cfg: RunConfig, plan_report: dict[str, Any], partition_ids: list[str]) -> list[str]:
    """The partitions ordered by their source's place in the config (stable within a source):
    the global dedup keeps the first record in this order, so the source listed first wins."""
    rank = {s.name: i for i, s in enumerate(cfg.run_sources())}
    owner = partition_sources(cfg, plan_report, partition_ids)
    return sorted(partition_ids, key=lambda p: rank.get(owner[p], len(rank)))


def is_synthesized(partition: str) -> bool:
    """A partition of the synthesized plan or its top-up rounds (``p*``)."""
    return partition.startswith("p")


def is_prompt_partition(partition: str) -> bool:
    """A partition of prompts for the engines (synthesized, baseline or rewrite), not a corpus one."""
    return partition[:1] in ("p", "b", "r")


def plan_report(cfg: RunConfig, plan: pa.Table) -> dict[str, Any]:
    """Planned counts per domain, leaf and axis value of a plan table (the dataset's prompts,
    not the baseline)."""
    counts = PlanCounts()
    counts.add_table(plan)
    return counts.report(cfg)


def changed_inputs(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Input files whose contents differ between run.json's record and now, by label:
    ``{label: {"path", "was", "now"}}`` (a file added or gone counts as changed)."""
    out = {}
    for label in sorted({*recorded, *current}):
        was = recorded.get(label, {}).get("sha256", "absent")
        now = current.get(label, {}).get("sha256", "absent")
        if was != now:
            out[label] = {"path": current.get(label, recorded.get(label, {})).get("path", ""), "was": was, "now": now}
    return out


def check_resume_inputs(store: Any, cfg: RunConfig, run_id: str, allow_changed_inputs: bool = False,
                        write: bool = True) -> dict[str, dict[str, str]]:
    """Before a run id is (re)started: a resume whose input files (topics, axes, templates,
    benchmarks) changed since the run started is refused with a :class:`RunError` naming the
    files, unless ``allow_changed_inputs``: then run.json takes the new config hash and input
    hashes and records the change (``input_changes``, and a lineage event), and what the change
    touches is redone (stage commits record the sha256 of what they read). A run.json of older
    code (no input hashes) takes them now. Returns the changed files. ``write=False``: check only."""
    from hare.store.layout import run_json
    from hare.clock import utc_now
    from hare.store.runs import RunError
    from hare.store import KeyNotFound

    try:
        info = json.loads(store.get_bytes(run_json(run_id)))
    except KeyNotFound:
        return {}
    current = cfg.input_hashes()
    settings = info.get("settings_hash") or (info["config_hash"] if "inputs" not in info else None)
    if settings is not None and settings != cfg.config_hash(inputs=False):
        return {}  # another config altogether: start_run refuses it ("use a new run id")
    if "inputs" not in info:  # started by older code: its inputs were not hashed; record them now
        changed: dict[str, dict[str, str]] = {}
    else:
        changed = changed_inputs(info["inputs"], current)
        if changed and not allow_changed_inputs:
            named = "; ".join(f"{label} {c['path']} (sha256 {c['was'][:12]} -> {c['now'][:12]})"
                              for label, c in changed.items())
            raise RunError(f"run {run_id!r}: input file(s) changed since the run started: {named}. Resuming would "
                           f"mix data planned from two versions; restore the file(s), start a new run, or pass "
                           f"--allow-changed-inputs to redo what the change touches (recorded in run.json)")
        if not changed:
            return {}
    if write:
        info.update(config=cfg.to_jsonable(), config_hash=cfg.config_hash(), settings_hash=cfg.config_hash(inputs=False),
                    inputs=current)
        if changed:
            info["input_changes"] = [*info.get("input_changes", []), {"at": utc_now(), "files": changed}]
        store.put_bytes(run_json(run_id), json.dumps(info, indent=2).encode())
        if changed:
            lineage.emit(store, run_id, "synthesize.inputs-changed", "COMPLETE",
                         inputs=[lineage.dataset(f"file://{c['path']}", c["now"]) for c in changed.values()],
                         facets={"changed_inputs": changed, "allowed_by": "--allow-changed-inputs"})
    return changed


def record_inputs(store: Any, cfg: RunConfig, run_id: str) -> None:
    """Put the input files' hashes and the settings hash into run.json (once per start)."""
    from hare.store.layout import run_json

    info = json.loads(store.get_bytes(run_json(run_id)))
    if info.get("inputs") == cfg.input_hashes() and info.get("settings_hash"):
        return
    info.update(inputs=cfg.input_hashes(), settings_hash=cfg.config_hash(inputs=False))
    store.put_bytes(run_json(run_id), json.dumps(info, indent=2).encode())


@task(name="plan")
def plan_run(cfg: RunConfig, run_id: str, allow_changed_inputs: bool = False) -> list[str]:
    """Build the plan, write each partition's prompt specs, the plan report and run.json.

    Plan objects are rewritten identically on a resume (the plan is deterministic), so a
    half-written plan from an interrupted start is simply completed. Returns all partition
    ids, dataset (``p*``) and baseline (``b*``).
    """
    store = open_store(cfg.store.url)
    parts = plan_partition_ids(cfg)
    check_resume_inputs(store, cfg, run_id, allow_changed_inputs)
    start_run(store, cfg, run_id, parts)
    record_inputs(store, cfg, run_id)
    counts = PlanCounts()
    coverage = stored_coverage(store, cfg, run_id) if cfg.plan.allocate == "coverage" else None
    for pid, table in plan_partitions(cfg, counts, coverage):  # one partition in memory at a time
        write_plan_partition(store, run_id, pid, table)
    sources: list[tuple[str, pa.Table]] = []
    for pid, table in plan_source_partitions(cfg):
        write_plan_partition(store, run_id, pid, table)
        sources.append((pid, table.select([c for c in table.column_names if c in ("partition_id", "source", "uri",
                                                                                   "format", "start", "end")])))
    report = counts.report(cfg)
    report["sources"] = source_summary(cfg, sources)
    if coverage is not None:
        from hare.stages.coverage import coverage_report

        leaves = load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)
        report["coverage"] = {**coverage_report(leaves, coverage["covered"], report["leaves"],
                                                unmatched=coverage["sampled"] - coverage["assigned"]),
                              "sampled": coverage["sampled"], "assigned": coverage["assigned"]}
    source_ids = [pid for pid, _ in sources]
    if source_ids:
        add_run_partitions(store, run_id, source_ids)
        parts = [*(p for p in parts if not is_baseline(p)), *source_ids, *(p for p in parts if is_baseline(p))]
    store.put_bytes(plan_report_key(run_id), json.dumps(report, indent=2).encode())
    lineage.emit(
        store, run_id, "synthesize.plan", "COMPLETE",
        inputs=[lineage.dataset(f"file://{f['path']}", f["sha256"]) for f in cfg.input_hashes().values()],
        outputs=[lineage.dataset(store.uri(plan_key(run_id, p))) for p in parts],
        facets={"stage": "plan", "prompts": report["prompts"], "baseline_prompts": report["baseline_prompts"],
                "config_hash": cfg.config_hash()},
    )
    return list(parts)


def add_run_partitions(store: Any, run_id: str, partition_ids: list[str]) -> None:
    """Add partitions planned after the run started (sources, top-up rounds) to run.json."""
    from hare.store.layout import run_json

    info = json.loads(store.get_bytes(run_json(run_id)))
    merged = list(dict.fromkeys([*info.get("partitions", []), *partition_ids]))
    if merged != info.get("partitions"):
        info["partitions"] = merged
        store.put_bytes(run_json(run_id), json.dumps(info, indent=2).encode())


# --- Top-up: the plan holds for the published dataset, not only for the prompts -------------

def stored_coverage(store: Any, cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """The run's coverage measurement: measured at its first start and kept in
    ``plan/coverage.json``, so a resume plans the same prompts (no re-embedding)."""
    from hare.store import KeyNotFound
    from hare.store.layout import coverage_key
    from hare.tasks.coverage import measure_coverage

    try:
        return json.loads(store.get_bytes(coverage_key(run_id)))
    except KeyNotFound:
        coverage = measure_coverage(cfg)
        store.put_bytes(coverage_key(run_id), json.dumps(coverage, indent=2).encode())
        return coverage


def write_plan_partition(store: Any, run_id: str, pid: str, table: pa.Table) -> None:
    """Write one partition's prompt specs, unless the same bytes are there (a resume rewrites
    nothing; a half-written plan from an interrupted start is completed)."""
    key = plan_key(run_id, pid)
    data = to_parquet_bytes(table)
    if not store.exists(key) or sha256_bytes(store.get_bytes(key)) != sha256_bytes(data):
        store.put_bytes(key, data)


def kept_prompts(store: Any, cfg: RunConfig, run_id: str, partition_ids: list[str]) -> set[int]:
    """Prompt indices whose record survived the streamed record stages (the records dedup reads,
    or that publish reads when dedup is off)."""
    from hare.store.layout import records_key
    from hare.store.tables import from_parquet_bytes
    from hare.tasks.stages import records_source

    stage = records_source(cfg, "dedup" if cfg.dedup.enabled else "publish")
    out: set[int] = set()
    for pid in partition_ids:
        key = records_key(run_id, pid, stage)
        out.update(from_parquet_bytes(store.get_bytes(key), key).column("prompt_index").to_pylist())
    return out


def iter_top_up_rows(cfg: RunConfig, removed: Iterable[dict[str, Any]], first_index: int,
                     first_partition: int) -> Iterator[dict[str, Any]]:
    """One new prompt for every plan row in ``removed`` (rows whose record the stages removed),
    in the same stratum (leaf, audience, style, kind), with its own index and seed (so a new
    sample, not the same text again), cut into partitions numbered after the last. Deterministic
    from the rows, so a resume plans the same top-up partitions and finds them committed."""
    leaves = {leaf.path: leaf for leaf in load_taxonomy(cfg.topics.path, *cfg.topics.extra_paths)}
    per = cfg.plan.prompts_per_partition
    for n, row in enumerate(removed):
        yield _prompt_row(cfg, first_index + n, partition_id(first_partition + n // per), leaves[row["topic_path"]],
                          row["audience"], row["style"], row["kind"])


def top_up_rows(cfg: RunConfig, previous: Iterable[dict[str, Any]], kept: set[int], first_index: int,
                first_partition: int) -> list[dict[str, Any]]:
    """:func:`iter_top_up_rows` of the rows of ``previous`` whose prompt index is not in ``kept``."""
    return list(iter_top_up_rows(cfg, (r for r in previous if r["prompt_index"] not in kept),
                                 first_index, first_partition))


def _plan_rows(store: Any, run_id: str, pid: str) -> list[dict[str, Any]]:
    from hare.store.tables import from_parquet_bytes

    key = plan_key(run_id, pid)
    return from_parquet_bytes(store.get_bytes(key), key).to_pylist()


def _removed_rows(store: Any, cfg: RunConfig, run_id: str, partition_ids: list[str],
                  tally: Counter[str]) -> Iterator[dict[str, Any]]:
    """The plan rows of these partitions whose record the record stages removed, one partition
    read at a time; ``tally["checked"]`` counts the rows looked at."""
    for pid in partition_ids:
        kept = kept_prompts(store, cfg, run_id, [pid])
        rows = _plan_rows(store, run_id, pid)
        tally["checked"] += len(rows)
        yield from (r for r in rows if r["prompt_index"] not in kept)


def _next_prompt_index(store: Any, run_id: str, partition_ids: list[str]) -> int:
    """One past the largest prompt index of the run: indices grow with the partition number
    within each prefix (plan ``p*``, baseline ``b*``, top-up ``p*`` after the plan), so the last
    partition of each prefix holds its largest."""
    last = {p[0]: p for p in sorted(partition_ids, key=lambda p: (p[0], int(p[1:]))) if is_prompt_partition(p)}
    return max(r["prompt_index"] for pid in last.values() for r in _plan_rows(store, run_id, pid)) + 1


@task(name="plan-top-up")
def plan_top_up(cfg: RunConfig, run_id: str, round_no: int, previous_ids: list[str],
                all_ids: list[str]) -> list[str]:
    """Round ``round_no`` of the top-up (``plan.top_up_rounds``): measure what the record stages
    removed from the partitions of the round before (``previous_ids``; the base plan for round
    1), write top-up partitions for those strata (committed like any partition once generated)
    and record the round in the plan report (planned; generated and kept are added by
    :func:`record_top_up_outcome`). Returns the new partition ids (none: nothing to top up)."""
    previous_ids = [p for p in previous_ids if is_synthesized(p)]  # a corpus or rewrite source is not topped up
    if not previous_ids:
        return []
    store = open_store(cfg.store.url)
    first_index = _next_prompt_index(store, run_id, all_ids)
    first_partition = max(int(p[1:]) for p in all_ids if is_synthesized(p)) + 1
    tally: Counter[str] = Counter()
    deficit = PlanCounts()
    parts: list[str] = []
    rows = iter_top_up_rows(cfg, _removed_rows(store, cfg, run_id, previous_ids, tally), first_index, first_partition)
    for pid, table in by_partition_table(rows):  # written as each partition fills
        write_plan_partition(store, run_id, pid, table)
        deficit.add_table(table)
        parts.append(pid)
    report = json.loads(store.get_bytes(plan_report_key(run_id)))
    rounds = [r for r in report.get("top_up", []) if r["round"] < round_no]
    rounds.append({"round": round_no, "partitions": parts, "checked": tally["checked"], "planned": deficit.prompts,
                   "deficit": {axis: dict(deficit.counts[name]) for axis, name in
                               (("kind", "kinds"), ("audience", "audiences"), ("style", "styles"), ("leaf", "leaves"))}})
    report["top_up"] = rounds
    store.put_bytes(plan_report_key(run_id), json.dumps(report, indent=2).encode())
    if parts:
        add_run_partitions(store, run_id, parts)
        lineage.emit(store, run_id, f"synthesize.plan.top-up-{round_no}", "COMPLETE",
                     outputs=[lineage.dataset(store.uri(plan_key(run_id, p))) for p in parts],
                     facets={"stage": "plan", "top_up_round": round_no, "prompts": deficit.prompts})
    return list(parts)


@task(name="top-up-outcome")
def record_top_up_outcome(cfg: RunConfig, run_id: str, round_no: int, partition_ids: list[str]) -> dict[str, Any]:
    """Generated and kept records of a top-up round, into the plan report (and so the card)."""
    from hare.store.manifest import read_manifest

    store = open_store(cfg.store.url)
    generated = 0
    for pid in partition_ids:
        m = read_manifest(store, run_id, pid, "generate")
        generated += m.stats.get("prompts", 0) if m is not None else 0
    kept = len(kept_prompts(store, cfg, run_id, partition_ids)) if partition_ids else 0
    report = json.loads(store.get_bytes(plan_report_key(run_id)))
    for r in report.get("top_up", []):
        if r["round"] == round_no:
            r.update(generated=generated, kept=kept)
    store.put_bytes(plan_report_key(run_id), json.dumps(report, indent=2).encode())
    return {"round": round_no, "generated": generated, "kept": kept}
