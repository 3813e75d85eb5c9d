"""The ONE ordered list of record stages that the flow, status, the progress view and the card read.

Per partition, streamed behind generation: cleanup -> validate -> quality -> decontam -> features
(each a stage object; cleanup and validate run when their config section turns them on,
hare/stage.py). Global, over what those stored: dedup (the decision over stored features, then
applied per partition), diversity, publish. Adding a streamed stage is one file plus one line here.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from hare.config import RunConfig
from hare.stage import RecordStage, run_record_stage
from hare.store import open_store
from hare.tasks.cleanup import Cleanup
from hare.tasks.decontam import Decontam
from hare.tasks.features import Features
from hare.tasks.quality import Quality
from hare.tasks.validate import Validate

STREAMED: list[RecordStage] = [Cleanup(), Validate(), Quality(), Decontam(), Features()]
GLOBAL_RECORD_STAGE = "dedup"  # the last per-partition commit; its records are published


def streamed_stages(cfg: RunConfig) -> list[RecordStage]:
    return [s for s in STREAMED if s.enabled(cfg)]


def stage_names(cfg: RunConfig) -> list[str]:
    """Every per-partition commit of a dataset partition, in order (generation first)."""
    return ["generate", *(s.name for s in streamed_stages(cfg)), *([GLOBAL_RECORD_STAGE] if cfg.dedup.enabled else [])]


def records_source(cfg: RunConfig, stage: str) -> str:
    """The stage whose kept records ``stage`` reads ("publish": the records that are published)."""
    producing = ["generate", *(s.name for s in streamed_stages(cfg) if s.produces_records)]
    if stage == "publish":
        return GLOBAL_RECORD_STAGE if cfg.dedup.enabled else producing[-1]
    names = stage_names(cfg)
    before = names[:names.index(stage)]
    return [n for n in before if n in producing][-1]


def stage_named(name: str) -> RecordStage:
    return next(s for s in STREAMED if s.name == name)


@task(name="record-stage", retries=1, retry_delay_seconds=2, task_run_name="{stage}-{partition_id}")
def run_stage(cfg: RunConfig, run_id: str, partition_id: str, stage: str) -> dict[str, Any]:
    """One streamed stage on one partition (skipped when its commit already exists)."""
    stats = run_record_stage(open_store(cfg.store.url), cfg, run_id, partition_id, stage_named(stage),
                             records_source(cfg, stage))
    return {"partition_id": partition_id, "stage": stage, "status": "succeeded", "stats": stats}
