"""Faults during a run: each ends with a complete dataset (with no manual step where the fault
is one the run rides out; else after one `hare rerun`), no record lost and none duplicated,
and a clear message in between.

Generation is the DeterministicFakeBackend (orchestration under test, not the model); its
``SLOW_ENGINE`` marker makes every partition take 2 s so a fault strikes mid-partition. The
engine kills use its gate instead (``GATE_ENGINE:<folder>``): every engine call announces
itself and waits, so the kill lands while a partition is provably in flight, never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from hare.backends.fake import GATE_MARKER, GATE_OPEN
from hare.cli.main import main
from hare.engines.engine import engine_name
from hare.flows.synthesize import run_rerun_failed, run_synthesize
from hare.store.layout import dataset_prefix, generated_key, manifest_key, plan_key
from hare.store.manifest import read_manifest
from hare.store import ObjectStore, open_store
from hare.store.tables import from_parquet_bytes, to_parquet_bytes
from tests.conftest import new_bucket, write_run_config
from tests.procs import TcpOutage, hare_env, hare_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

SLOW_TOPICS = {"version": 1, "domains": {"Mechanics": {"Machines": ["SLOW_ENGINE gears", "SLOW_ENGINE levers"]}}}
PARTITIONS, PER = 4, 2


def _slow_config(folder: Path, **overrides: object) -> Path:
    settings = {"topics_doc": SLOW_TOPICS, "plan": {"partitions": PARTITIONS, "prompts_per_partition": PER},
                "diversity": {"baseline_prompts": 0}, **overrides}
    return write_run_config(folder, **settings)


def dataset_ids(store: ObjectStore, run_id: str) -> list[str]:
    """The record ids (normalized-text hashes) a run published, one per row, in shard order."""
    ids: list[str] = []
    for key in store.list(dataset_prefix(run_id)):
        if key.endswith(".parquet"):
            ids += from_parquet_bytes(store.get_bytes(key), key).column("id").to_pylist()
    return ids


def assert_complete(store_url: str, run_id: str) -> list[str]:
    """Every partition committed, the dataset holds every prompt once, run.json says succeeded."""
    store = open_store(store_url)
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "succeeded", info.get("summary")
    for i in range(PARTITIONS):
        assert read_manifest(store, run_id, f"p{i:05d}").status == "succeeded"
    ids = dataset_ids(store, run_id)
    assert len(ids) == PARTITIONS * PER, "nothing lost"
    assert len(set(ids)) == len(ids), "nothing duplicated"
    return ids


def _gated_config(folder: Path, **overrides: object) -> tuple[Path, Path]:
    """A run whose every engine call waits at the fake backend's gate in ``folder/gate`` (one
    partition in flight per engine, so a kill strikes exactly one); the config and the gate."""
    gate = folder / "gate"
    topics = {"version": 1, "domains": {"Mechanics": {"Machines": [f"{GATE_MARKER}{gate} gears",
                                                                   f"{GATE_MARKER}{gate} levers"]}}}
    return _slow_config(folder, topics_doc=topics, ray={"partitions_in_flight_per_engine": 1}, **overrides), gate


def _in_flight(gate: Path) -> list[dict[str, Any]]:
    """The engine calls that reached the gate so far: pid, engine (Ray actor name), seeds, prompts."""
    return [json.loads(p.read_text()) for p in sorted(gate.glob("inflight-*.json"))]


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its raylet counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _run_killing_engine(cfg: Path, gate: Path, store_url: str, run_id: str, engine: int) -> dict[str, Any]:
    """Run the flow while a thread waits until engine ``engine`` holds a partition at the gate,
    SIGKILLs that engine's process, waits until it is gone, then opens the gate. The run must
    end by itself (no RunIncomplete, no rerun). Returns the killed call's marker."""
    killed: dict[str, Any] = {}

    def kill_engine() -> None:
        try:
            call = wait_for(lambda: next((c for c in _in_flight(gate) if c["engine"] == engine_name(run_id, engine)),
                                         None), 180, f"a partition in flight on engine {engine}", interval=0.05)
            os.kill(call["pid"], signal.SIGKILL)
            wait_for(lambda: _gone(call["pid"]), 30, "the killed engine process to exit", interval=0.05)
            killed.update(call)
        finally:
            (gate / GATE_OPEN).touch()  # also on a failure here: the run must not wait forever

    killer = threading.Thread(target=kill_engine, daemon=True)
    killer.start()
    run_synthesize(str(cfg), run_id=run_id)  # RunIncomplete here would mean a manual rerun was needed
    killer.join(timeout=5)
    assert killed, "the engine was killed while a partition was in flight on it"
    assert_complete(store_url, run_id)
    info = json.loads(open_store(store_url).get_bytes(f"runs/{run_id}/run.json"))
    assert "resumed_at" not in info, "the run completed in its first start, with no rerun"
    assert "failed_partitions" not in info["summary"]
    return killed


def _partition_of(store: ObjectStore, run_id: str, seeds: list[int]) -> str:
    """The partition planned with exactly these per-prompt seeds (a prompt's text may recur in
    another partition; its seed does not)."""
    found = [f"p{i:05d}" for i in range(PARTITIONS)
             if sorted(from_parquet_bytes(store.get_bytes(k := plan_key(run_id, f"p{i:05d}")), k)
                       .column("seed").to_pylist()) == sorted(seeds)]
    assert len(found) == 1, f"one partition holds the killed call's prompts, found {found}"
    return found[0]


def test_engine_worker_killed_mid_partition(tmp_path: Path) -> None:
    """SIGKILL the engine actor's process while a partition is in flight on it: Ray restarts
    the actor, the partition's engine call waits until the engine answers again and sends the
    same partition once more to the new process; the run completes with no rerun, and that
    partition's manifest (and only its) records the restart."""
    cfg, gate = _gated_config(tmp_path)
    store_url = f"file://{tmp_path}/store"
    killed = _run_killing_engine(cfg, gate, store_url, "fault-kill", engine=0)
    resent = [c for c in _in_flight(gate) if c["seeds"] == killed["seeds"] and c["pid"] != killed["pid"]]
    assert [c["engine"] for c in resent] == [engine_name("fault-kill", 0)], "re-sent once, to the restarted engine"
    store = open_store(store_url)
    hit = _partition_of(store, "fault-kill", killed["seeds"])
    manifests = {f"p{i:05d}": read_manifest(store, "fault-kill", f"p{i:05d}") for i in range(PARTITIONS)}
    assert {p: m.stats.get("engine_restarts", 0) for p, m in manifests.items()} == \
        {p: int(p == hit) for p in manifests}, "the partition in flight waited for one restart; no other did"
    assert all(m.attempts == 1 for m in manifests.values()), "no task-level retry or rerun was needed"


def test_an_engine_that_stays_dead_leaves_the_pool(tmp_path: Path) -> None:
    """Two engines, no restarts allowed: SIGKILL one while a partition is in flight on it; that
    partition goes to the other engine, the run completes with no rerun, and run.json names
    the engine that left."""
    cfg, gate = _gated_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 0, "replicas": 2,
                                               "max_restarts": 0})
    store_url = f"file://{tmp_path}/store"
    killed = _run_killing_engine(cfg, gate, store_url, "fault-gone", engine=1)
    resent = [c["engine"] for c in _in_flight(gate) if c["seeds"] == killed["seeds"] and c["pid"] != killed["pid"]]
    assert resent == [engine_name("fault-gone", 0)], "the killed engine's partition went to the other engine"
    store = open_store(store_url)
    info = json.loads(store.get_bytes("runs/fault-gone/run.json"))
    assert info["summary"]["generation"]["engines_retired"] == [engine_name("fault-gone", 1)]
    hit = _partition_of(store, "fault-gone", killed["seeds"])
    assert read_manifest(store, "fault-gone", hit).stats["engine"] == engine_name("fault-gone", 0)


def test_driver_interrupted_then_rerun(tmp_path: Path, prefect_api: str) -> None:
    """Ctrl-C on `hare run`: exit 130, run.json says interrupted, the message says how to
    complete it; committed partitions are kept byte for byte and `hare rerun` completes it."""
    cfg = _slow_config(tmp_path)
    store_url = f"file://{tmp_path}/store"
    store = open_store(store_url)
    proc = hare_process("run", str(cfg), "--run-id", "fault-int", env=hare_env(PREFECT_API_URL=prefect_api))
    wait_for(lambda: read_manifest(store, "fault-int", "p00000") or proc.poll() is not None, 180, "the first commit")
    assert proc.poll() is None, proc.communicate()
    first = store.get_bytes(manifest_key("fault-int", "p00000"))
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"interrupted: run fault-int; committed partitions are kept; complete it with: hare rerun fault-int" in err
    assert json.loads(store.get_bytes("runs/fault-int/run.json"))["status"] == "interrupted"

    run_rerun_failed("fault-int", store_url)
    assert store.get_bytes(manifest_key("fault-int", "p00000")) == first, "a committed partition is not redone"
    assert_complete(store_url, "fault-int")


def test_s3_endpoint_down_mid_run(tmp_path: Path, moto_endpoint: str, prefect_api: str) -> None:
    """The S3 endpoint goes away for 8 s in the middle of a run (connections refused and cut),
    then comes back with its data: the store's retry budget (120 s) rides it out, so the run
    completes by itself, no rerun, and the retries show in the run's log."""
    bucket = new_bucket()
    store_url = f"s3://{bucket}/faults"
    outage = TcpOutage(int(moto_endpoint.rsplit(":", 1)[1]))
    cfg = _slow_config(tmp_path)
    env = hare_env(PREFECT_API_URL=prefect_api, AWS_ENDPOINT_URL=outage.url)
    env.pop("HARE_STORE_RETRY_SECONDS", None)  # the default budget
    proc = hare_process("run", str(cfg), "--store", store_url, "--run-id", "fault-s3", env=env)
    store = open_store(store_url)  # straight to moto, not through the proxy
    wait_for(lambda: read_manifest(store, "fault-s3", "p00000") or proc.poll() is not None, 180, "the first commit")
    assert proc.poll() is None, proc.communicate()
    outage.down()
    try:
        threading.Event().wait(8)
    finally:
        outage.up()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert_complete(store_url, "fault-s3")
    info = json.loads(store.get_bytes("runs/fault-s3/run.json"))
    assert "resumed_at" not in info, "no rerun"
    manifests = [read_manifest(store, "fault-s3", f"p{i:05d}") for i in range(PARTITIONS)]
    assert [m.attempts for m in manifests] == [1] * PARTITIONS, "zero failed attempts: no task retry, no rerun"
    # Whichever commit the outage met (generation's or a later stage's: it lasts 8 s of a run
    # whose stages stream behind generation), its manifest counts the requests it retried.
    from hare.config import load_config
    from hare.tasks.stages import stage_names

    commits = [read_manifest(store, "fault-s3", f"p{i:05d}", stage)
               for i in range(PARTITIONS) for stage in stage_names(load_config(cfg))]
    retried = sum(m.stats.get("store_retries", 0) for m in commits if m is not None)
    assert retried >= 1, "a commit during the outage counted the store requests it retried"
    log = store.get_bytes("runs/fault-s3/logs/hare-run.log").decode(errors="replace")
    assert "store: retry" in log + out + err, "the outage was met by retries"


def _failed_generation_tasks() -> set[str]:
    """Ids of generate-partition task runs in state Failed (their retry used up), from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import (TaskRunFilter, TaskRunFilterName, TaskRunFilterState,
                                                TaskRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="generate-partition"),
            state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.FAILED]), name=None)))
    return {str(r.id) for r in runs}


def test_s3_outage_longer_than_the_retry_budget_fails_the_partition_then_rerun_completes(
        tmp_path: Path, moto_endpoint: str, prefect_api: str) -> None:
    """The endpoint goes away with a 1 s retry budget, and stays away until a partition's task
    has failed for good (its Prefect retry too): that partition fails with the store's message,
    the later ones commit, the run ends incomplete saying what to rerun, and `hare rerun`
    completes it with nothing lost or duplicated."""
    partitions = 8
    bucket = new_bucket()
    store_url = f"s3://{bucket}/faults"
    outage = TcpOutage(int(moto_endpoint.rsplit(":", 1)[1]))
    cfg = _slow_config(tmp_path, plan={"partitions": partitions, "prompts_per_partition": PER})
    env = hare_env(PREFECT_API_URL=prefect_api, AWS_ENDPOINT_URL=outage.url, HARE_STORE_RETRY_SECONDS="1")
    failed_before = _failed_generation_tasks()
    proc = hare_process("run", str(cfg), "--store", store_url, "--run-id", "fault-budget", env=env)
    store = open_store(store_url)
    wait_for(lambda: read_manifest(store, "fault-budget", "p00000") or proc.poll() is not None, 180,
             "the first commit")
    assert proc.poll() is None, proc.communicate()
    outage.down()
    try:
        wait_for(lambda: _failed_generation_tasks() - failed_before, 90, "a partition failed for good", interval=0.1)
    finally:
        outage.up()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-3000:]
    assert "partition(s) failed: p0000" in err and "(generate)" in err, err[-3000:]
    assert "redo these with: hare rerun fault-budget" in err
    info = json.loads(store.get_bytes("runs/fault-budget/run.json"))
    assert info["status"] == "incomplete"
    failed = info["summary"]["failed_partitions"]
    assert failed and len(failed) < partitions, "the partitions after the outage committed"
    assert all("StoreError" in info["summary"]["failures"][p] and "failed after" in
               info["summary"]["failures"][p] for p in failed), info["summary"]["failures"]

    assert main(["rerun", "fault-budget", "--store", store_url]) == 0
    info = json.loads(store.get_bytes("runs/fault-budget/run.json"))
    assert info["status"] == "succeeded"
    ids = dataset_ids(store, "fault-budget")
    assert len(ids) == len(set(ids)) == partitions * PER, "nothing lost, nothing duplicated"
    for p in failed:
        assert read_manifest(store, "fault-budget", p).status == "succeeded"


def test_object_corrupted_after_commit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A generated object altered after its commit no longer matches its manifest's sha256:
    `hare status` flags it, `hare rerun` redoes that partition alone and republishes."""
    cfg = _slow_config(tmp_path, topics_doc={"version": 1, "domains": {"M": {"M": ["gears", "levers"]}}})
    store_url = f"file://{tmp_path}/store"
    result = run_synthesize(str(cfg), run_id="fault-corrupt")
    store = open_store(store_url)
    before = assert_complete(store_url, "fault-corrupt")
    untouched = store.get_bytes(manifest_key("fault-corrupt", "p00000"))
    key = generated_key("fault-corrupt", "p00002")
    store.put_bytes(key, to_parquet_bytes(from_parquet_bytes(store.get_bytes(key)).slice(0, 1)))
    capsys.readouterr()
    assert main(["status", "--store", store_url, "fault-corrupt"]) == 3
    assert main(["rerun", "fault-corrupt", "--store", store_url]) == 0
    assert sorted(assert_complete(store_url, "fault-corrupt")) == sorted(before)
    assert store.get_bytes(manifest_key("fault-corrupt", "p00000")) == untouched
    assert read_manifest(store, "fault-corrupt", "p00002").attempts == 2
    assert result["records"] == PARTITIONS * PER


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_text("name: t\nplan: [unclosed\n"), "is not valid YAML"),
        (lambda p: (p.parent / "topics.yaml").unlink(), "topics.path: file not found"),
        (lambda p: p.write_text(p.read_text().replace("max_tokens: 16", "max_tokens: many")), "sampling.max_tokens"),
    ],
    ids=["malformed-yaml", "missing-seed-file", "wrong-type"],
)
def test_bad_config_runs_nothing_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    mutate, message: str) -> None:  # noqa: ANN001
    cfg = write_run_config(tmp_path)
    mutate(cfg)
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "store").exists(), "nothing runs, nothing is written"


def test_rerun_of_an_unknown_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rerun", "no-such-run", "--store", str(tmp_path / "store")]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_an_interrupt_wrapped_by_a_library_still_counts_as_one() -> None:
    from hare.flows.driver import caused_by_interrupt as _caused_by_interrupt

    class Wrapped(Exception):
        pass

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise Wrapped("Error calling function `_ser_model`") from inner
    except Wrapped as exc:
        assert _caused_by_interrupt(exc)
    assert _caused_by_interrupt(ValueError("Error calling function `_ser_model`: KeyboardInterrupt: "))
    assert not _caused_by_interrupt(ValueError("a plain failure"))
