"""Small parts of the streamed stages: the mergeable score sketch, batch splitting, stage order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from hare.stages import sketch
from hare.backends.base import GenerationRequest, GenerationResult
from hare.backends.vllm_backend import split_on_failure


def test_merged_sketches_give_the_percentiles_of_all_values_within_the_accuracy() -> None:
    rng = random.Random(0)
    values = [rng.lognormvariate(0, 1) for _ in range(20_000)] + [0.0] * 500
    parts = [values[i:i + 997] for i in range(0, len(values), 997)]  # partitions of uneven size
    merged = sketch.merge(sketch.sketch(p) for p in parts)
    assert sketch.count(merged) == len(values)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(merged, q) - exact) <= sketch.ACCURACY * exact + 1e-12
    assert sketch.quantile(merged, 0.01) == 0.0, "zeros land in their own bucket"
    assert len(merged) < 1000, "bounded by the value range, not by the number of values"
    assert sketch.spread({}) == {} and np.isnan(sketch.quantile({}, 0.5))


def test_a_failed_batch_is_split_in_halves_until_the_bad_request_is_isolated() -> None:
    items = [(GenerationRequest(i, "", f"prompt {i}", i), [1, 2, 3]) for i in range(16)]
    calls: list[int] = []

    def run(batch):  # noqa: ANN001, ANN202 - vLLM fails the whole batch when one request is bad
        calls.append(len(batch))
        if any(r.prompt_index == 11 for r, _ in batch):
            raise RuntimeError("bad request in the batch")
        return [f"out {r.prompt_index}" for r, _ in batch]

    rejects: dict[int, GenerationResult] = {}
    pairs = split_on_failure(items, run, rejects)
    assert [r.prompt_index for (r, _), _ in pairs] == [i for i in range(16) if i != 11]
    assert list(rejects) == [11] and rejects[11].error.startswith("engine_error: bad request")
    assert len(calls) <= 1 + 2 * 4, "about log2(n) extra calls, not one per request"
    assert calls[0] == 16 and max(calls[1:]) == 8


@pytest.mark.parametrize("quality,benchmarks,dedup,expected", [
    (True, True, True, ["generate", "quality", "decontam", "features", "dedup"]),
    (False, False, True, ["generate", "features", "dedup"]),
    (True, False, False, ["generate", "quality"]),
])
def test_one_ordered_list_of_stages(quality: bool, benchmarks: bool, dedup: bool, expected: list[str]) -> None:
    from hare.config import RunConfig
    from hare.tasks.stages import records_source, stage_names

    cfg = RunConfig.model_validate({
        "name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1}, "quality": {"enabled": quality},
        "dedup": {"enabled": dedup},
        "decontamination": {"benchmarks": [{"name": "g", "source": "data/benchmarks/gsm8k_test.jsonl"}]
                            if benchmarks else []}})
    assert stage_names(cfg) == expected
    if dedup:  # features produces no records: dedup reads what the stage before features kept
        assert records_source(cfg, "dedup") == expected[-3]
        assert records_source(cfg, "publish") == "dedup"
    else:
        assert records_source(cfg, "publish") == expected[-1]


# --- the stage base (hare/stages/base.py) -------------------------------------------------------

class _Counting:
    """A stage whose setup is counted (a stand-in for decontam's benchmark index)."""

    def __new__(cls):  # noqa: ANN204 - built on the real base inside the test module's scope
        import pyarrow as pa
        import pyarrow.compute as pc

        from hare.stages.base import RecordStage, StageResult

        class Counting(RecordStage):
            name, title, section = "quality", "Counting", "quality"
            setups = 0

            def setup(self, cfg, run_id):  # noqa: ANN001, ANN201
                type(self).setups += 1
                return f"index for {run_id}"

            def process(self, cfg, run_id, partition_id, records):  # noqa: ANN001, ANN201
                assert self.ready(cfg, run_id) == f"index for {run_id}"
                short = pc.less(pc.utf8_length(records.column("text")), 5)
                rejects = records.filter(short)
                rejects = rejects.append_column("reject_reason", pa.array(["too_short"] * rejects.num_rows, pa.string()))
                return StageResult(records.filter(pc.invert(short)), rejects, {"seen": records.num_rows})

            def merge(self, aggregates):  # noqa: ANN001, ANN201
                return {"seen": sum(a["seen"] for a in aggregates)}

        return Counting()


def _cfg():  # noqa: ANN202
    from hare.config import RunConfig

    return RunConfig.model_validate({"name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1},
                                     "quality": {"resources": {"num_cpus": 2}}})


def test_setup_runs_once_per_worker_and_settings(tmp_path) -> None:  # noqa: ANN001
    """Every partition a worker serves reuses what setup built; other settings build anew."""
    import pyarrow as pa

    from hare.stages.base import RecordStage

    stage, cfg = _Counting(), _cfg()
    table = pa.table({"text": ["a long enough text", "tiny"]})
    for _ in range(3):
        stage.process(cfg, "run-a", "p00000", table)
    assert type(stage).setups == 1
    other = cfg.model_copy(update={"quality": cfg.quality.model_copy(update={"min_english_prob": 0.5})})
    stage.process(other, "run-a", "p00000", table)
    assert type(stage).setups == 2, "changed settings: set up again"
    assert isinstance(stage, RecordStage)


def test_resources_come_from_the_section_unless_set_for_the_run() -> None:
    from hare.config import StageResources

    stage, cfg = _Counting(), _cfg()
    assert stage.resources(cfg).num_cpus == 2
    more = stage.with_(resources=StageResources(num_cpus=4, memory_mb=512))
    assert more.resources(cfg).ray_options() == {"num_cpus": 4, "num_gpus": 0, "memory": 512 * 1024 * 1024}
    assert stage.resources(cfg).num_cpus == 2, "with_ gives a copy"


def test_the_base_counts_every_stage_and_merges_only_extras(tmp_path) -> None:  # noqa: ANN001
    """Run by the one wrapper: the commit holds checked / kept / rejected / reject_reasons
    counted by the base, the stage's extras beside them; the report adds both up."""
    import pyarrow as pa

    from hare.stages.base import run_record_stage
    from hare.store import open_store
    from hare.store.manifest import commit_partition

    store, stage, cfg = open_store(str(tmp_path / "s")), _Counting(), _cfg()
    texts = ["a long enough text", "tiny", "ok", "another long one"]
    commit_partition(store, "r", "p00000", "generate", {"runs/r/generated/p00000.parquet": pa.table({"text": texts})},
                     {}, 1)
    stats = run_record_stage(store, cfg, "r", "p00000", stage, "generate")
    assert {k: stats[k] for k in ("checked", "kept", "rejected", "reject_reasons", "aggregate")} == {
        "checked": 4, "kept": 2, "rejected": 2, "reject_reasons": {"too_short": 2}, "aggregate": {"seen": 4}}
    report = stage.report([stats, stats])
    assert report == {"checked": 8, "kept": 4, "rejected": 4, "reject_reasons": {"too_short": 4}, "seen": 8}
    assert stage.summary(report) == "quality 4 (too_short 4)"


def test_one_list_names_every_stage_once() -> None:
    """Names, folders and reports are one spelling each; every stage has a config section."""
    from hare.config import RunConfig
    from hare.tasks.stages import STAGES

    names = [s.name for s in STAGES]
    assert names == ["cleanup", "validate", "quality", "pii", "decontam", "features", "dedup"]
    assert all(s.config_section in RunConfig.model_fields for s in STAGES)
    assert [s.name for s in STAGES if s.config_section != s.name] == ["validate"]  # pydantic: no field 'validate'


def test_decontam_section_reads_its_earlier_spelling_and_hashes_as_before() -> None:
    from hare.config import RunConfig

    bench = {"benchmarks": [{"name": "g", "source": "data/benchmarks/gsm8k_test.jsonl"}], "overlap_threshold": 0.4}
    base = {"name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1}}
    new, old = RunConfig.model_validate({**base, "decontam": bench}), RunConfig.model_validate({**base, "decontamination": bench})
    assert new == old and new.decontam.overlap_threshold == 0.4
    assert new.config_hash() == old.config_hash()
    assert "decontamination.benchmarks.g" in new.input_files(), "input labels keep the spelling runs recorded"


def test_an_earlier_runs_reports_read_in_todays_counts(tmp_path) -> None:  # noqa: ANN001
    """Reports written under earlier names and counts (decontamination.json with
    records_checked / records_dropped, dedup.json with dropped, cleanup.json without rejected)
    are read in the base's counts: the CLI's summary and the card read them alike."""
    import json

    from hare.store import open_store
    from hare.tasks.publish import read_report
    from hare.tasks.stages import stage_named

    store = open_store(str(tmp_path / "s"))
    store.put_bytes("runs/old/decontamination.json", json.dumps(
        {"records_checked": 10, "records_dropped": 2, "benchmarks": {}}).encode())
    store.put_bytes("runs/old/dedup.json", json.dumps(
        {"checked": 6, "dropped": 6, "by_layer": {"exact": 6}, "against_published_records": 6,
         "dropped_as_already_published": 6}).encode())
    store.put_bytes("runs/old/cleanup.json", json.dumps(
        {"checked": 5, "kept": 4, "changed": 1, "stripped_by_pattern": {}, "reject_reasons": {"chatter_only": 1}}).encode())
    decontam, dedup, cleanup = (read_report(store, "old", n) for n in ("decontam", "dedup", "cleanup"))
    assert (decontam["checked"], decontam["kept"], decontam["rejected"]) == (10, 8, 2)
    assert (dedup["kept"], dedup["rejected"]) == (0, 6) and cleanup["rejected"] == 1
    assert stage_named("dedup").summary(dedup) == "dedup 6 (6 already published by earlier runs)"
    assert read_report(store, "old", "quality") is None
