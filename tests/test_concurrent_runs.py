"""Two `hare run` processes at once, one store, the same texts: the store's index lease
(hare/stages/dedup/index.py: ``hold_index``, taken by the flow around the dedup decision and publish)
lets one run at a time decide and publish, so no text is published twice.

Both runs are real `hare run` subprocesses (each its own local Ray, the session's Prefect API)
on the DeterministicFakeBackend (orchestration under test, not the model): the same config
makes the same texts, under different run ids. Timing alone rarely puts both runs between
their decision and their publish at once, so the flow's test gate (``HARE_TEST_DECISION_GATE``,
``decision_gate``) holds each run right after its decision until the test opens the gate, and
the test opens it only once the other run is either waiting for the lease (the lease works) or
has decided too (no lease: both publish everything). Without the lease this test fails every
time, not only when the two runs happen to meet.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hare.stages.dedup.index import DECISION_GATE_ENV
from hare.store.layout import rejects_key
from hare.store import open_store
from hare.store.tables import from_parquet_bytes
from tests.conftest import write_run_config
from tests.procs import hare_env, hare_process, wait_for
from tests.test_faults import dataset_ids

pytestmark = pytest.mark.slow

RUNS = ("twin-a", "twin-b")
PARTITIONS, PER = 2, 3
WAITING = "waiting for the dedup index"


def _decided(gate: Path) -> list[str]:
    """Runs the gate holds right after their dedup decision, in the order they got there."""
    return [p.stem for p in sorted(gate.glob("*.decided"), key=lambda p: p.stat().st_mtime_ns)]


def _log(logs: Path, run_id: str) -> str:
    """The run's log so far (the flow's log lines: `hare run` writes them to $HARE_LOG_DIR)."""
    path = logs / f"{run_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _ended(procs: dict[str, subprocess.Popen[str]]) -> list[str]:
    return [r for r, p in procs.items() if p.poll() is not None]


def test_two_runs_at_once_publish_each_text_once(tmp_path: Path, store_url: str, prefect_api: str) -> None:
    """Both runs end well, the first to decide publishes every text, the other waits for the
    index, says so naming the holder, then decides against what the first published and drops
    it all as already published."""
    cfg = write_run_config(tmp_path, plan={"partitions": PARTITIONS, "prompts_per_partition": PER},
                           diversity={"baseline_prompts": 0}, dedup={"enabled": True, "semantic": False})
    gate, logs = tmp_path / "gate", tmp_path / "logs"
    env = hare_env(PREFECT_API_URL=prefect_api, HARE_LOG_DIR=str(logs), **{DECISION_GATE_ENV: str(gate)})
    procs = {r: hare_process("run", str(cfg), "--store", store_url, "--run-id", r, env=env,
                             log=tmp_path / f"{r}.out") for r in RUNS}

    def output(run_id: str) -> str:
        return (tmp_path / f"{run_id}.out").read_text(errors="replace")[-3000:] + _log(logs, run_id)[-3000:]

    try:
        wait_for(lambda: _decided(gate) or _ended(procs), 600, "a run's dedup decision")
        assert not _ended(procs), {r: output(r) for r in _ended(procs)}
        first = _decided(gate)[0]
        (second,) = set(RUNS) - {first}
        # the first run is held inside its critical section: the second either waits for the
        # lease (and says so) or, with no lease, decides against the same empty index
        wait_for(lambda: second in _decided(gate) or WAITING in _log(logs, second) or _ended(procs), 600,
                 f"{second} to wait for the index or to decide")
        (gate / "open").touch()
        for proc in procs.values():
            proc.wait(timeout=600)
    finally:
        (gate / "open").touch()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()

    store = open_store(store_url)
    ids = {r: dataset_ids(store, r) for r in RUNS}
    twice = sorted(i for i, n in Counter(ids[first] + ids[second]).items() if n > 1)
    assert not twice, (f"{len(twice)} text(s) published by both runs ({first}: {len(ids[first])} records, "
                       f"{second}: {len(ids[second])}): {twice}")
    for run_id, proc in procs.items():
        assert proc.returncode == 0, output(run_id)
        assert json.loads(store.get_bytes(f"runs/{run_id}/run.json"))["status"] == "succeeded"
    assert len(ids[first]) == len(set(ids[first])) == PARTITIONS * PER and ids[second] == []

    said = _log(logs, second)
    assert f"run {second}: {WAITING}" in said and f"held by run {first} (" in said, said[-3000:]
    assert f"run {second}: took the dedup index after waiting" in said
    assert WAITING not in _log(logs, first), "the first run took the index at once"
    report = json.loads(store.get_bytes(f"runs/{second}/dedup.json"))
    assert report["dropped_as_already_published"] == PARTITIONS * PER, report
    dropped: list[dict[str, Any]] = []
    for key in (rejects_key(second, "dedup", f"p{p:05d}") for p in range(PARTITIONS)):
        dropped += from_parquet_bytes(store.get_bytes(key), key).to_pylist()
    assert {r["duplicate_of_run"] for r in dropped} == {first}
    assert sorted(r["id"] for r in dropped) == sorted(ids[first]), "each text dropped as the first run's"
