"""The ONE ordered list of record stages: the flow, status, the progress view, the viewer, the
card and the CLI all read it.

Per partition, streamed behind generation: cleanup -> validate -> quality -> pii -> decontam ->
features (each runs when its config section turns it on). After generation, over the whole
run: dedup (the decision over stored features, then applied per partition). Then diversity
and publish. Each stage is one object (hare/stages/base.py); adding one is its file, one line here
and its config class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import task

from hare.config import RunConfig
from hare.stages.base import RecordStage, run_record_stage
from hare.store import open_store
from hare.tasks.cleanup import Cleanup
from hare.tasks.decontam import Decontam
from hare.tasks.dedup import Dedup
from hare.tasks.features import Features
from hare.tasks.pii import Pii
from hare.tasks.quality import Quality
from hare.tasks.validate import Validate

STAGES: list[RecordStage] = [Cleanup(), Validate(), Quality(), Pii(), Decontam(), Features(), Dedup()]


def enabled_stages(cfg: RunConfig) -> list[RecordStage]:
    """The stages this config runs, in order."""
    return [s for s in STAGES if s.enabled(cfg)]


def streamed_stages(cfg: RunConfig) -> list[RecordStage]:
    """The stages each partition goes through as soon as it is generated."""
    return [s for s in enabled_stages(cfg) if s.streamed]


def stage_names(cfg: RunConfig) -> list[str]:
    """Every per-partition commit of a dataset partition, in order (generation first)."""
    return ["generate", *(s.name for s in enabled_stages(cfg))]


def records_source(cfg: RunConfig, stage: str) -> str:
    """The stage whose kept records ``stage`` reads ("publish": the records that are published)."""
    producing = ["generate", *(s.name for s in enabled_stages(cfg) if s.produces_records)]
    if stage == "publish":
        return producing[-1]
    names = stage_names(cfg)
    return [n for n in names[:names.index(stage)] if n in producing][-1]


def stage_named(name: str) -> RecordStage:
    return next(s for s in STAGES if s.name == name)


@dataclass(frozen=True)
class StageLookup:
    """For the wrapper, to redo the stage that made a corrupt source: a stage name -> (that
    stage, the stage whose records it reads) under this config. A value, so a task can carry it."""

    cfg: RunConfig

    def __call__(self, name: str) -> tuple[RecordStage, str]:
        return stage_named(name), records_source(self.cfg, name)


@task(name="record-stage", retries=1, retry_delay_seconds=2, task_run_name="{stage}-{partition_id}")
def run_stage(cfg: RunConfig, run_id: str, partition_id: str, stage: str) -> dict[str, Any]:
    """One streamed stage on one partition (skipped when its commit already exists)."""
    stats = run_record_stage(open_store(cfg.store.url), cfg, run_id, partition_id, stage_named(stage),
                             records_source(cfg, stage), StageLookup(cfg))
    return {"partition_id": partition_id, "stage": stage, "status": "succeeded", "stats": stats}
