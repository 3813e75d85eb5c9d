"""Record stages stream behind generation; a failed partition stops only its own stages.

Generation is the DeterministicFakeBackend (orchestration under test): ``SLOW_ENGINE`` makes
each partition take 2 s on the one engine, so there is time for stages to run meanwhile.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from hare.flows.synthesize import RunIncomplete, run_rerun_failed, run_synthesize
from hare.store.manifest import read_manifest
from hare.store import open_store
from tests.conftest import write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_stages_of_an_early_partition_finish_before_the_last_generation_starts(tmp_path: Path) -> None:
    topics = {"version": 1, "domains": {"Mechanics": {"Machines": ["SLOW_ENGINE gears", "SLOW_ENGINE levers"]}}}
    cfg = write_run_config(tmp_path, topics_doc=topics, plan={"partitions": 6, "prompts_per_partition": 2},
                           diversity={"baseline_prompts": 0}, quality={"enabled": True, "min_words": {"default": 1}},
                           dedup={"enabled": True, "semantic": False},
                           ray={"partitions_in_flight_per_engine": 1})
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    run_id = result["run_id"]
    last = read_manifest(store, run_id, "p00005")
    last_started = _t(last.finished_at) - last.stats["seconds"]
    for stage in ("quality", "features"):
        first = read_manifest(store, run_id, "p00000", stage)
        assert first.status == "succeeded"
        assert _t(first.finished_at) < last_started, f"{stage} of p00000 finished before p00005 began generating"
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    streaming = info["summary"]["streaming"]
    assert streaming["stage_tasks"] == 6 * 2 and streaming["finished_while_generating"] >= 2
    quality = json.loads(store.get_bytes(f"runs/{run_id}/quality.json"))
    assert quality["checked"] == 12 and quality["scores"]["words"]["n"] == quality["kept"]


def test_a_failed_partition_stops_only_its_own_stages_and_rerun_finishes(tmp_path: Path) -> None:
    marker = tmp_path / "engine-is-broken"
    marker.write_text("x")
    topics = {"version": 1, "domains": {"Mechanics": {"Machines": ["gears", "levers", "pulleys",
                                                                   f"CRASH_ENGINE_WHILE:{marker} wedges"]}}}
    path = write_run_config(tmp_path, topics_doc=topics, plan={"partitions": 4, "prompts_per_partition": 1},
                            diversity={"baseline_prompts": 0}, quality={"enabled": True, "min_words": {"default": 1}})
    with pytest.raises(RunIncomplete, match=r"1 partition\(s\) failed: p\d+ \(generate\)") as err:
        run_synthesize(str(path), run_id="stream-fail")
    store = open_store(f"file://{tmp_path}/store")
    info = json.loads(store.get_bytes("runs/stream-fail/run.json"))
    (doomed,) = info["summary"]["failed_partitions"]
    assert doomed in str(err.value) and info["status"] == "incomplete"
    for pid in ("p00000", "p00001", "p00002", "p00003"):
        q = read_manifest(store, "stream-fail", pid, "quality")
        if pid == doomed:
            assert q is None, "no stage ran behind the failed generation"
        else:
            assert q is not None and q.status == "succeeded", f"{pid}'s stages went on to the end"
    before = {pid: read_manifest(store, "stream-fail", pid, "quality").finished_at
              for pid in ("p00000", "p00001", "p00002", "p00003") if pid != doomed}

    marker.unlink()  # the fault is over
    result = run_rerun_failed("stream-fail", f"file://{tmp_path}/store")
    kept = sum(read_manifest(store, "stream-fail", f"p0000{i}", "quality").stats["kept"] for i in range(4))
    assert result["records"] == kept > 0
    assert json.loads(store.get_bytes("runs/stream-fail/run.json"))["status"] == "succeeded"
    after = {pid: read_manifest(store, "stream-fail", pid, "quality").finished_at for pid in before}
    assert after == before, "the rerun redid only the failed partition"
    assert read_manifest(store, "stream-fail", doomed, "quality").status == "succeeded"
