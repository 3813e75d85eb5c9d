"""The base every per-partition record stage shares, and the one wrapper that runs them.

A stage (cleanup, validate, quality, pii, decontam, features, dedup) is one object that owns
itself, as NeMo Curator's ``ProcessingStage`` and distilabel's steps do:

- one **name**: its config section, store folder, manifest suffix, report file, reject_stage,
  CLI verb and card section all use it (layout.py still reads the spellings of earlier runs);
- its **resources** (Ray CPUs, GPUs, memory per task): from its config section, overridable
  for one run with :meth:`RecordStage.with_`;
- :meth:`RecordStage.setup`: what it builds before its first partition (benchmark n-grams, an
  embedder), once per worker process and settings, not once per partition;
- :meth:`RecordStage.process`: one partition's records -> kept rows, rejects with reasons,
  other objects to commit and the stage's own figures (its *extras*);
- its report, card section, settings line and CLI summary.

The base counts for every stage what datatrove's ``BaseFilter`` counts for every filter:
records checked, kept and rejected, and rejects by reason (:func:`base_counts`). A stage's own
:meth:`RecordStage.merge` handles only its extras. :func:`run_record_stage` is the wrapper the
flow runs for every stage: it reads the partition's records from the stage before, skips the
work when the stage's own commit still holds, and else commits what ``process`` returned with
the manifest last (attempts, failures, counts and extras in its stats), so no stage writes
that code itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from hare.store.layout import records_key, rejects_key
from hare.store.manifest import (
    commit_partition,
    committed_manifest,
    output_sha256,
    previous_attempts,
    read_manifest,
    record_failure,
    records_output,
)
from hare.store.quarantine import CorruptObject, read_table_checked
from hare.store import ObjectStore, retry_count, sha256_bytes

if TYPE_CHECKING:
    from pydantic import BaseModel

    from hare.config import RunConfig, StageResources

log = logging.getLogger("hare.stage")


@dataclass
class StageResult:
    """What a stage made of one partition's records."""

    kept: pa.Table | None                 # None: the records pass through unchanged (features)
    rejects: pa.Table | None              # with reject_stage and reject_reason columns
    aggregate: dict[str, Any]             # the stage's own mergeable figures (the base adds the counts)
    extra: dict[str, pa.Table] = field(default_factory=dict)  # other objects to commit, by key


COUNTS = ("checked", "kept", "rejected", "reject_reasons")


def reject_reasons(rejects: pa.Table | None) -> dict[str, int]:
    """Rejects counted by reason."""
    if rejects is None or rejects.num_rows == 0:
        return {}
    counts = rejects.group_by("reject_reason").aggregate([("reject_reason", "count")])
    return dict(zip(counts.column("reject_reason").to_pylist(), counts.column("reject_reason_count").to_pylist()))


def base_counts(result: StageResult, rows_in: int) -> dict[str, Any]:
    """Checked, kept, rejected and rejects by reason of one partition (``rows_in``: the records
    it read, which a stage that passes them through keeps): the figures every stage has,
    counted here so that no stage counts them itself."""
    kept = result.kept.num_rows if result.kept is not None else rows_in
    rejected = result.rejects.num_rows if result.rejects is not None else 0
    return {"checked": kept + rejected, "kept": kept, "rejected": rejected,
            "reject_reasons": reject_reasons(result.rejects)}


def partition_stats(result: StageResult, rows_in: int) -> dict[str, Any]:
    """What a stage's commit keeps of one partition: the base counts and the stage's extras."""
    return {**base_counts(result, rows_in), "aggregate": result.aggregate}


def merge_counts(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The base counts of many partitions, added up (reasons most frequent first)."""
    reasons: dict[str, int] = {}
    for st in stats:
        add_counts(reasons, st.get("reject_reasons", {}))
    return {"checked": sum(st["checked"] for st in stats), "kept": sum(st["kept"] for st in stats),
            "rejected": sum(st["rejected"] for st in stats),
            "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))}


# How earlier runs' reports spelled the base counts (decontamination.json, dedup.json).
_EARLIER_COUNTS = {"records_checked": "checked", "records_dropped": "rejected", "dropped": "rejected"}


def with_base_counts(report: dict[str, Any]) -> dict[str, Any]:
    """A run report in the base's vocabulary: an earlier run's (``records_checked``,
    ``records_dropped``, ``dropped``; cleanup's without ``rejected``) read as checked / kept /
    rejected / reject_reasons; a current one as it is."""
    out = {_EARLIER_COUNTS.get(k, k): v for k, v in report.items()}
    if "checked" in out:
        out.setdefault("rejected", out["checked"] - out.get("kept", out["checked"]))
        out.setdefault("kept", out["checked"] - out["rejected"])
    out.setdefault("reject_reasons", {})
    return out


def add_counts(target: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for k, n in counts.items():
        target[k] = target.get(k, 0) + n
    return target


# What stages set up, per worker process: (stage name, params digest, run id) -> state. A few
# at most (a worker may serve two runs or settings); the oldest is torn down beyond that.
_SETUPS: OrderedDict[tuple[str, str, str], tuple["RecordStage", Any]] = OrderedDict()
_SETUPS_KEPT = 2


class RecordStage:
    """The base of every per-partition record stage (module docstring). A subclass sets
    ``name`` and ``title`` and implements :meth:`process`; the rest has defaults."""

    name: ClassVar[str]                    # the one name (see the module docstring)
    title: ClassVar[str]                   # its card section's heading
    section: ClassVar[str | None] = None   # its config section when that is not ``name`` (validation)
    produces_records: ClassVar[bool] = True  # False: the next stage reads the records this one read
    streamed: ClassVar[bool] = True        # False: run after generation, over the whole run (dedup)
    has_report: ClassVar[bool] = True      # False: no run report or card section (features)
    params_fields: ClassVar[tuple[str, ...] | None] = None  # its section's fields its result depends on (None: all)
    file_help: ClassVar[str | None] = None  # set: ``hare <name> FILE`` runs :meth:`on_table` on any file

    def __init__(self, resources: "StageResources | None" = None) -> None:
        self._resources = resources

    # --- what it is configured with --------------------------------------------------------------

    @property
    def config_section(self) -> str:
        return self.section or self.name

    def settings(self, cfg: "RunConfig") -> "BaseModel":
        """Its config section."""
        return getattr(cfg, self.config_section)

    def enabled(self, cfg: "RunConfig") -> bool:
        return bool(getattr(self.settings(cfg), "enabled", True))

    def resources(self, cfg: "RunConfig") -> "StageResources":
        """What one of its partition tasks asks Ray for: its section's ``resources``, unless
        :meth:`with_` set them for this run."""
        return self._resources or self.settings(cfg).resources  # type: ignore[attr-defined]

    def with_(self, *, resources: "StageResources") -> "RecordStage":
        """The same stage with other resources (NeMo Curator's ``with_``): e.g. more CPUs for
        one run's decontamination, without editing the config section."""
        other = copy.copy(self)
        other._resources = resources
        return other

    def params(self, cfg: "RunConfig") -> dict[str, Any]:
        """What its result depends on besides its records: its section's settings (where and how
        many aside: ``resources``), the contents of the input files the section names, and
        ``decided_by`` (dedup's verdicts). Part of every commit's inputs: a changed setting
        redoes exactly the stage it belongs to (distilabel's signature-keyed cache)."""
        from hare.config import hashed_as

        section = self.settings(cfg).model_dump(mode="json", exclude={"resources"})
        if self.params_fields is not None:
            section = {k: section[k] for k in self.params_fields}
        prefix = f"{hashed_as(self.config_section)}."
        files = {label: f["sha256"] for label, f in cfg.input_hashes().items() if label.startswith(prefix)}
        decided = self.decided_by()
        return {"section": section, "files": files, **({"decided_by": decided} if decided else {})}

    def decided_by(self) -> str | None:
        """A digest of what a global decision told this stage (dedup's verdicts); None for most."""
        return None

    # --- what it does ------------------------------------------------------------------------

    def setup(self, cfg: "RunConfig", run_id: str) -> Any:
        """What it builds once before its first partition (distilabel's ``load``); the default
        builds nothing. :meth:`ready` calls it once per worker process and settings."""
        return None

    def teardown(self, state: Any) -> None:
        """Let go of what :meth:`setup` built (distilabel's ``unload``); the default does nothing."""

    def ready(self, cfg: "RunConfig", run_id: str) -> Any:
        """What :meth:`setup` built for these settings and run, set up on first use in this
        process (so every partition a worker serves reuses it)."""
        key = (self.name, params_digest(self, cfg), run_id)
        if key in _SETUPS:
            _SETUPS.move_to_end(key)
            return _SETUPS[key][1]
        state = self.setup(cfg, run_id)
        _SETUPS[key] = (self, state)
        while len(_SETUPS) > _SETUPS_KEPT:
            stage, old = _SETUPS.popitem(last=False)[1]
            stage.teardown(old)
        return state

    def process(self, cfg: "RunConfig", run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        """One partition's records -> kept, rejects, extras. Default: :meth:`on_table` with its
        section (a stage whose work needs nothing else)."""
        return self.on_table(records, self.settings(cfg))

    def on_table(self, records: pa.Table, settings: Any) -> StageResult:
        """The stage on any table of records with a ``text`` column, given its section's settings
        (what ``hare <name> FILE`` runs)."""
        raise NotImplementedError(f"stage {self.name} runs only inside a run")

    # --- what it reports ---------------------------------------------------------------------

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        """The run-level figures of its extras, from every partition's; the base counts are
        merged by :meth:`report`. Default: no extras."""
        return {}

    def report(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        """Its run report from its partitions' commit stats: the base counts, then its extras."""
        return {**merge_counts(stats), **self.merge([st.get("aggregate", {}) for st in stats])}

    def card_section(self, report: dict[str, Any], cfg: "RunConfig") -> list[str]:
        """Its section of the dataset card (Markdown lines, under :meth:`heading`); default: the
        counts and reasons."""
        return [self.heading(), "", counts_line(report, self.name), "", *reasons_table(report)]

    def heading(self) -> str:
        """Its card section's heading: the title, and the one name the section goes by."""
        return f"## {self.title} (`{self.name}`)"

    def settings_row(self, cfg: "RunConfig") -> tuple[str, str]:
        """(state, thresholds) of its row in the card's "Settings in force" table."""
        return ("enabled" if self.enabled(cfg) else "off", "")

    def summary(self, report: dict[str, Any]) -> str:
        """Its part of the CLI's ``dropped:`` line."""
        reasons = ", ".join(f"{k} {v}" for k, v in report.get("reject_reasons", {}).items())
        return f"{self.name} {report['rejected']}" + (f" ({reasons})" if reasons else "")


def counts_line(report: dict[str, Any], stage: str) -> str:
    return (f"{report['kept']} of {report['checked']} records kept, {report['rejected']} rejected; every reject "
            f"keeps its reason in `rejects/{stage}/`.")


def reasons_table(report: dict[str, Any]) -> list[str]:
    reasons = report.get("reject_reasons", {})
    if not reasons:
        return []
    return ["| reject reason | records |", "|---|---|", *(f"| {k} | {v} |" for k, v in reasons.items()), ""]


def params_digest(stage: RecordStage, cfg: "RunConfig") -> str:
    return hashlib.sha256(json.dumps(stage.params(cfg), sort_keys=True).encode()).hexdigest()


def params_input(stage: RecordStage) -> str:
    """The key of a commit's inputs that holds the stage's params digest."""
    return f"params:{stage.name}"


# --- the one wrapper that runs any stage on one partition -------------------------------------------

MakerOf = Callable[[str], tuple[RecordStage, str]]  # a stage name -> (the stage, the stage it reads)


def stage_inputs(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str, stage: RecordStage,
                 source: str) -> dict[str, str] | None:
    """What a commit of ``stage`` must have been computed from to still hold: the sha256 of the
    source records as their own commit lists them now, and the stage's params. None when the
    source is not committed (nothing to compare: the stage is computed)."""
    src_manifest = read_manifest(store, run_id, partition_id, source)
    src = records_output(src_manifest, run_id, partition_id, source)
    sha = output_sha256(src_manifest, src)
    if sha is None:
        return None
    return {src: sha, params_input(stage): params_digest(stage, cfg)}


def run_record_stage(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str,
                     stage: RecordStage, source: str, lookup: MakerOf | None = None) -> dict[str, Any]:
    """The stats of ``stage`` on one partition (its counts and extras), computed now from the
    records ``source`` kept, or read from the stage's commit.

    The commit is reused only when it is intact (every output re-hashed; a corrupt one is moved
    to ``quarantine/``) and was computed from what the source holds now: its recorded inputs
    (the source object's sha256 and the stage's params) equal the current ones. So a partition
    regenerated on resume redoes every stage after it, each in turn, as its input changes.
    ``lookup``: how to find the stage that made a corrupt source, to redo it."""
    expected = stage_inputs(store, cfg, run_id, partition_id, stage, source)
    done = committed_manifest(store, run_id, partition_id, stage.name, quarantine=True)
    # a commit of older code has no base counts or no inputs: redo it
    if done is not None and "kept" in done.stats and expected is not None and done.inputs == expected:
        return done.stats
    attempts = previous_attempts(store, run_id, partition_id, stage.name) + 1
    retries_before = retry_count()
    started = time.perf_counter()
    try:
        records, expected, src = _read_source(store, cfg, run_id, partition_id, stage, source, expected, lookup)
        result = stage.process(cfg, run_id, partition_id, records)
        outputs: dict[str, pa.Table] = {}
        if result.kept is not None:
            outputs[records_key(run_id, partition_id, stage.name)] = result.kept
        if result.rejects is not None:
            outputs[rejects_key(run_id, stage.name, partition_id)] = result.rejects
        outputs.update(result.extra)
        stats = {**partition_stats(result, records.num_rows), "seconds": round(time.perf_counter() - started, 3)}
        inputs = expected or {src: sha256_bytes(store.get_bytes(src)), params_input(stage): params_digest(stage, cfg)}
        stats = commit_partition(store, run_id, partition_id, stage.name, outputs, stats, attempts, inputs,
                                 retries_since=retries_before).stats
    except Exception as exc:
        record_failure(store, run_id, partition_id, stage.name, f"{type(exc).__name__}: {exc}", attempts)
        raise
    return stats


def _source_key(inputs: dict[str, str] | None) -> str | None:
    """The records object among a commit's inputs (the other entry is the params digest)."""
    return next((k for k in inputs or {} if not k.startswith("params:")), None)


def _read_source(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str, stage: RecordStage,
                 source: str, expected: dict[str, str] | None,
                 lookup: MakerOf | None) -> tuple[pa.Table, dict[str, str] | None, str]:
    """The source records (and their key), checked against the sha256 their commit lists. A
    corrupt source object is quarantined; when a record stage made it, that stage is redone
    here and the records read again (a generated object needs the engines: the partition
    fails, naming it, and the next run regenerates it)."""
    src = _source_key(expected) or records_key(run_id, partition_id, source)
    try:
        return read_table_checked(store, src, expected[src] if expected else None), expected, src
    except CorruptObject:
        if source == "generate" or lookup is None:
            raise
    log.warning("redoing stage %s of %s: its output %s was corrupt", source, partition_id, src)
    maker, maker_source = lookup(source)
    run_record_stage(store, cfg, run_id, partition_id, maker, maker_source, lookup)
    expected = stage_inputs(store, cfg, run_id, partition_id, stage, source)
    src = _source_key(expected) or records_key(run_id, partition_id, source)
    return read_table_checked(store, src, expected[src] if expected else None), expected, src
