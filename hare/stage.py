"""The shape every per-partition record stage shares, and the one wrapper that runs them.

A stage (quality, decontam, features) is one object: a name (keys, manifests, reports and the
CLI all use it), its config section, ``enabled(cfg)``, ``process(records) -> StageResult``
(kept rows, rejects with reasons, other objects to commit, and a small mergeable aggregate) and
``merge(aggregates) -> report``. :func:`run_record_stage` reads the partition's records from
the stage before, skips the work when the stage's own manifest already commits it, and else
commits what ``process`` returned with the manifest last (attempts counted, failures recorded,
the aggregate in the manifest's stats), so no stage writes that code itself (datatrove's
steps get their stats the same way).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from hare.layout import records_key, rejects_key
from hare.manifest import (
    commit_partition,
    committed_manifest,
    output_sha256,
    previous_attempts,
    read_manifest,
    record_failure,
)
from hare.quarantine import CorruptObject, read_table_checked
from hare.store import ObjectStore, retry_count, sha256_bytes

if TYPE_CHECKING:
    from hare.config import RunConfig

log = logging.getLogger("hare.stage")


@dataclass
class StageResult:
    """What a stage made of one partition's records."""

    kept: pa.Table | None                 # None: the records pass through unchanged (features)
    rejects: pa.Table | None              # with reject_stage and reject_reason columns
    aggregate: dict[str, Any]             # counts, reasons, sketches: merged into the run report
    extra: dict[str, pa.Table] = field(default_factory=dict)  # other objects to commit, by key


class RecordStage(Protocol):
    name: str              # "quality": its folder, manifest suffix, report and CLI verb
    section: str           # its config section (resources live there too)
    report: str | None     # run-level report file, runs/<id>/<report>, or None
    produces_records: bool  # False: the next stage reads the records this one read

    def enabled(self, cfg: "RunConfig") -> bool: ...
    def process(self, cfg: "RunConfig", run_id: str, partition_id: str, records: pa.Table) -> StageResult: ...
    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]: ...


def stage_params(cfg: "RunConfig", stage: RecordStage) -> str:
    """sha256 of what a stage's result depends on besides its records: its config section
    (resources aside) and the contents of the input files that section names (benchmarks)."""
    section = getattr(cfg, stage.section).model_dump(mode="json")
    section = {k: v for k, v in section.items() if k != "resources"} if isinstance(section, dict) else section
    files = {label: f["sha256"] for label, f in cfg.input_hashes().items() if label.startswith(f"{stage.section}.")}
    extra = stage.decided_by() if hasattr(stage, "decided_by") else None  # e.g. dedup's global verdicts
    return hashlib.sha256(json.dumps({"section": section, "files": files, **({"decided_by": extra} if extra else {})},
                                     sort_keys=True).encode()).hexdigest()


def stage_inputs(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str, stage: RecordStage,
                 source: str) -> dict[str, str] | None:
    """What a commit of ``stage`` must have been computed from to still hold: the sha256 of the
    source records as their own commit lists them now, and the stage's params. None when the
    source is not committed (nothing to compare: the stage is computed)."""
    src = records_key(run_id, partition_id, source)
    sha = output_sha256(read_manifest(store, run_id, partition_id, source), src)
    if sha is None:
        return None
    return {src: sha, f"params:{stage.section}": stage_params(cfg, stage)}


def run_record_stage(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str,
                     stage: RecordStage, source: str) -> dict[str, Any]:
    """The stats of ``stage`` on one partition (its aggregate included), computed now from the
    records ``source`` kept, or read from the stage's commit.

    The commit is reused only when it is intact (every output re-hashed; a corrupt one is moved
    to ``quarantine/``) and was computed from what the source holds now: its recorded inputs
    (the source object's sha256 and the stage's params) equal the current ones. So a partition
    regenerated on resume redoes every stage after it, each in turn, as its input changes."""
    expected = stage_inputs(store, cfg, run_id, partition_id, stage, source)
    done = committed_manifest(store, run_id, partition_id, stage.name, quarantine=True)
    # a commit of older code has no aggregate or no inputs: redo it
    if done is not None and "aggregate" in done.stats and expected is not None and done.inputs == expected:
        return done.stats
    attempts = previous_attempts(store, run_id, partition_id, stage.name) + 1
    retries_before = retry_count()
    started = time.perf_counter()
    try:
        src = records_key(run_id, partition_id, source)
        records, expected = _read_source(store, cfg, run_id, partition_id, stage, source, expected)
        result = stage.process(cfg, run_id, partition_id, records)
        outputs: dict[str, pa.Table] = {}
        if result.kept is not None:
            outputs[records_key(run_id, partition_id, stage.name)] = result.kept
        if result.rejects is not None:
            outputs[rejects_key(run_id, stage.name, partition_id)] = result.rejects
        outputs.update(result.extra)
        kept = result.kept.num_rows if result.kept is not None else records.num_rows
        stats = {"checked": records.num_rows, "records": kept,
                 "rejects": result.rejects.num_rows if result.rejects is not None else 0,
                 "seconds": round(time.perf_counter() - started, 3), "aggregate": result.aggregate}
        inputs = expected or {src: sha256_bytes(store.get_bytes(src)),
                              f"params:{stage.section}": stage_params(cfg, stage)}
        stats = commit_partition(store, run_id, partition_id, stage.name, outputs, stats, attempts, inputs,
                                 retries_since=retries_before).stats
    except Exception as exc:
        record_failure(store, run_id, partition_id, stage.name, f"{type(exc).__name__}: {exc}", attempts)
        raise
    return stats


def _read_source(store: ObjectStore, cfg: "RunConfig", run_id: str, partition_id: str, stage: RecordStage,
                 source: str, expected: dict[str, str] | None) -> tuple[pa.Table, dict[str, str] | None]:
    """The source records, checked against the sha256 their commit lists. A corrupt source
    object is quarantined; when a record stage made it, that stage is redone here and the
    records read again (a generated object needs the engines: the partition fails, naming it,
    and the next run regenerates it)."""
    src = records_key(run_id, partition_id, source)
    try:
        return read_table_checked(store, src, expected[src] if expected else None), expected
    except CorruptObject:
        if source == "generate":
            raise
    from hare.tasks.stages import records_source, stage_named

    log.warning("redoing stage %s of %s: its output %s was corrupt", source, partition_id, src)
    run_record_stage(store, cfg, run_id, partition_id, stage_named(source), records_source(cfg, source))
    expected = stage_inputs(store, cfg, run_id, partition_id, stage, source)
    return read_table_checked(store, src, expected[src] if expected else None), expected


def reject_reasons(rejects: pa.Table) -> dict[str, int]:
    """Rejects counted by reason (the aggregate every filtering stage keeps)."""
    if rejects.num_rows == 0:
        return {}
    counts = rejects.group_by("reject_reason").aggregate([("reject_reason", "count")])
    return dict(zip(counts.column("reject_reason").to_pylist(), counts.column("reject_reason_count").to_pylist()))


def add_counts(target: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for k, n in counts.items():
        target[k] = target.get(k, 0) + n
    return target
