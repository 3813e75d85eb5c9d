"""A driver that dies: SIGKILL of `hare run` while a partition is provably in flight (the fake
backend's gate). Nothing the driver started outlives it, committed partitions stay committed,
the next start takes the run over at once (its lease names a dead process of this machine),
ends the dead driver's Prefect flow run as Crashed, and completes the run with every record
once (DeterministicFakeBackend: orchestration under test, not a model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hare.backends.fake import GATE_MARKER, GATE_OPEN
from hare.store.lease import acquire, read_lease, run_lease_key
from hare.process_tree import descendants
from hare.store import open_store
from tests.conftest import write_run_config
from tests.procs import hare_env, hare_process, wait_for
from tests.test_faults import PARTITIONS, PER, assert_complete

RUN = "driver-dies"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_driver_leaves_nothing_running_and_the_next_start_takes_over(tmp_path: Path,
                                                                              prefect_api: str) -> None:
    gate = tmp_path / "gate"
    topics = {"version": 1, "domains": {"Mechanics": {"Machines": ["gears", f"{GATE_MARKER}{gate} levers"]}}}
    cfg = write_run_config(tmp_path, topics_doc=topics, plan={"partitions": PARTITIONS, "prompts_per_partition": PER},
                           diversity={"baseline_prompts": 0}, ray={"partitions_in_flight_per_engine": 1})
    store_url = f"file://{tmp_path}/store"
    store = open_store(store_url)
    # The driver starts its own temporary Prefect API (no PREFECT_API_URL): the server it starts
    # must die with it too. The Prefect database is the session's (already migrated).
    env = {k: v for k, v in hare_env().items() if k != "PREFECT_API_URL"}
    driver = hare_process("run", str(cfg), "--run-id", RUN, env=env, log=tmp_path / "driver.log")
    try:
        wait_for(lambda: list(gate.glob("inflight-*.json")) or driver.poll() is not None, 300,
                 "a partition in flight at the gate")
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        started = descendants(driver.pid)
        committed = {k: store.get_bytes(k) for k in store.list(f"runs/{RUN}/partitions/") if k.endswith(".json")}
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert started, "the driver had started its Prefect API and Ray"
    try:
        wait_for(lambda: not any(_running(p) for p in started), 30, "everything the driver started to end")
    except TimeoutError:
        left = {p: _cmdline(p) for p in started if _running(p)}
        raise AssertionError(f"still running after the driver's SIGKILL: {left}") from None

    lease = read_lease(store, run_lease_key(RUN))
    assert lease is not None and not lease.expired(), "the dead driver's lease has not expired yet"
    assert lease.holder_gone() and not lease.live()
    (gate / GATE_OPEN).touch()

    # The next start: at once (no wait for the lease to expire), against the session's Prefect API.
    started_at = time.monotonic()
    rerun = hare_process("rerun", RUN, "--store", store_url, env=hare_env(PREFECT_API_URL=prefect_api))
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, (out + err)[-3000:]
    assert "is held by" not in err and time.monotonic() - started_at < lease.expires_at - time.time() + 600
    ids = assert_complete(store_url, RUN)
    assert len(ids) == PARTITIONS * PER
    for key, body in committed.items():   # committed before the kill: not redone
        assert store.get_bytes(key) == body, key
    info = json.loads(store.get_bytes(f"runs/{RUN}/run.json"))
    assert info["status"] == "succeeded"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_dead_drivers_flow_run_is_ended_as_crashed(tmp_path: Path, prefect_api: str) -> None:
    """The run's lease names a dead process of this machine and its flow run: the next start
    ends that flow run as Crashed, saying which driver died."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from hare.flows.synthesize import run_synthesize

    cfg = write_run_config(tmp_path, plan={"partitions": 1, "prompts_per_partition": 1},
                           diversity={"baseline_prompts": 0})
    store = open_store(f"file://{tmp_path}/store")
    with get_client(sync_client=True) as client:
        from prefect import flow

        @flow(name="hare-dead-driver")
        def dead_driver() -> None:
            pass

        flow_id = client.create_flow(dead_driver)
        old = client.create_flow_run(dead_driver, state=Running())
    # a driver process that took the lease inside that flow run, then died (SIGKILL)
    child = subprocess.run(
        [sys.executable, "-c",
         "import sys, hare.store.lease as L; from hare.store import open_store\n"
         "L._flow_run_id = lambda: sys.argv[3]\n"
         "L.acquire(open_store(sys.argv[1]), sys.argv[2], 'r', ttl_s=3600)\n"
         "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n",
         store.url, run_lease_key(RUN), str(old.id)], env=hare_env(PREFECT_API_URL=prefect_api))
    assert child.returncode == -signal.SIGKILL
    run_synthesize(str(cfg), run_id=RUN)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(old.id).state
    assert state is not None and state.is_crashed() and "died holding run" in (state.message or ""), state
    assert flow_id


def test_a_live_holder_on_this_machine_is_not_taken_over(tmp_path: Path) -> None:
    """The mechanism's other side: a holder process that lives keeps its lease; one that died
    (its pid gone) is taken over before its expiry."""
    store = open_store(str(tmp_path))
    key = "locks/x.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, hare.store.lease as L; from hare.store import open_store\n"
         "L.acquire(open_store(sys.argv[1]), sys.argv[2], 'x', ttl_s=3600); print('held', flush=True)\n"
         "time.sleep(60)\n", str(tmp_path), key], stdout=subprocess.PIPE, text=True, env=hare_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match="is held by"):
            acquire(store, key, "x", owner="second")
    finally:
        holder.kill()
        holder.wait()
    taken = acquire(store, key, "x", owner="second")
    assert taken.previous is not None and taken.previous.holder["pid"] == holder.pid
    assert os.getpid() == taken.holder["pid"]


def test_the_temporary_prefect_server_is_tied_to_its_driver(tmp_path: Path) -> None:
    """tie_to_this_process: a child the driver started is stopped when the driver is SIGKILLed."""
    marker = f"hare-tied-{os.getpid()}-{time.monotonic_ns()}"
    driver = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\nfrom hare.process_tree import tie_to_this_process\n"
         "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', sys.argv[1]],"
         " start_new_session=True)\n"
         "tie_to_this_process({child.pid})\nprint(child.pid, flush=True)\ntime.sleep(120)\n", marker],
        stdout=subprocess.PIPE, text=True, env=hare_env())
    assert driver.stdout is not None
    child_pid = int(driver.stdout.readline())
    time.sleep(0.5)
    assert _running(child_pid)
    driver.kill()
    driver.wait()
    wait_for(lambda: not _running(child_pid), 30, "the tied child to stop")
