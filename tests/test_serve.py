"""`hare serve` against a real `prefect server`: deployments registered, runs triggered with
`prefect deployment run`, the UI pages rendered by headless Chromium.

What a user does (README): `prefect server start`, `hare serve CONFIG`, open the UI. Flow runs
started from a deployment execute in the serve process's runner, join a local Ray through
HareRayTaskRunner, and write to the config's store. Generation is the DeterministicFakeBackend.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from hare.store.layout import manifest_key
from hare.store.manifest import read_manifest
from hare.store import open_store
from tests.conftest import write_run_config
from tests.procs import ROOT, free_port, hare_env, hare_process, wait_for

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on a free port with its own PREFECT_HOME (SQLite); yields the UI URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The UI's JavaScript calls the API at PREFECT_UI_API_URL (default :4200): point it at this port.
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_API_URL": f"{url}/api"}
    env.pop("PREFECT_API_URL", None)
    exe = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/api/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 120, "prefect server health", interval=0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`hare serve` for a small config with a cron schedule, until the module's tests end."""
    folder = tmp_path_factory.mktemp("served")
    cfg = write_run_config(folder, plan={"partitions": 3, "prompts_per_partition": 2},
                           schedule={"cron": "0 3 * * *", "timezone": "UTC"})
    env = hare_env(PREFECT_API_URL=f"{prefect_server}/api", PREFECT_RUNNER_POLL_FREQUENCY="2",
                   PREFECT_HOME=str(folder / "prefect-client"))
    log = folder / "serve.log"
    proc = hare_process("serve", str(cfg), env=env, log=log)
    try:
        wait_for(lambda: _prefect(env, "deployment", "inspect", "rerun-failed/t").returncode == 0
                 or proc.poll() is not None, 120, "the deployments", interval=1)
        assert proc.poll() is None, log.read_text()[-3000:]
        yield {"log": log, "env": env, "store": f"file://{folder / 'store'}", "config": cfg, "api": f"{prefect_server}/api",
               "ui": prefect_server}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _prefect(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "prefect"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@contextlib.contextmanager
def _client(api: str) -> Iterator[Any]:
    """A sync Prefect client on this module's server (not the session's test harness)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def test_deployments_carry_schedule_defaults_and_descriptions(served: dict) -> None:
    with _client(served["api"]) as client:
        syn = client.read_deployment_by_name("synthesize/t")
        rerun = client.read_deployment_by_name("rerun-failed/t")
    assert [s.schedule.cron for s in syn.schedules] == ["0 3 * * *"]
    assert syn.parameters == {"config_path": str(served["config"]), "store_url": served["store"]}
    props = syn.parameter_openapi_schema["properties"]
    assert set(props) == {"config_path", "run_id", "store_url", "allow_changed_inputs"}
    for name, prop in props.items():
        assert prop.get("description"), f"synthesize parameter {name} has no description"
        assert "default" in prop, f"synthesize parameter {name} has no default"
    assert rerun.parameter_openapi_schema["required"] == ["run_id"]
    assert rerun.parameters == {"store_url": served["store"]}


def test_deployment_run_completes_and_rerun_failed_repairs(served: dict) -> None:
    env = served["env"]
    done = _prefect(env, "deployment", "run", "synthesize/t", "--watch", "--watch-timeout", "400", timeout=450)
    assert done.returncode == 0 and "Completed" in done.stdout, served["log"].read_text()[-4000:]
    store = open_store(served["store"])
    (run_id,) = {k.split("/")[1] for k in store.list("runs/") if k.endswith("/run.json")}
    assert json.loads(store.get_bytes(f"runs/{run_id}/run.json"))["status"] == "succeeded"

    store.delete(manifest_key(run_id, "p00001"))  # a lost commit, repaired from the UI's rerun-failed
    again = _prefect(env, "deployment", "run", "rerun-failed/t", "-p", f"run_id={run_id}",
                     "--watch", "--watch-timeout", "400", timeout=450)
    assert again.returncode == 0 and "Completed" in again.stdout, served["log"].read_text()[-4000:]
    assert read_manifest(store, run_id, "p00001").status == "succeeded"
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "succeeded" and len(info["resumed_at"]) == 1
    served["run_id"] = run_id


def test_prefect_retry_of_a_flow_run_resumes_the_same_run(served: dict) -> None:
    """The UI's Retry (`prefect flow-run retry`) re-executes the same flow run: its run id is
    derived from the flow run, so it resumes that hare run instead of starting another."""
    if "run_id" not in served:
        pytest.skip("needs the deployment run of test_deployment_run_completes_and_rerun_failed_repairs")
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType

    run_id, store = served["run_id"], open_store(served["store"])
    with _client(served["api"]) as client:
        (flow_run,) = client.read_flow_runs(deployment_filter=DeploymentFilter(
            name=DeploymentFilterName(any_=["t"])), flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["COMPLETED"]))),
            sort="START_TIME_ASC", limit=1)
    store.delete(manifest_key(run_id, "p00002"))
    retried = _prefect(served["env"], "flow-run", "retry", str(flow_run.id))
    assert retried.returncode == 0, retried.stdout + retried.stderr

    def finished_again() -> bool:
        with _client(served["api"]) as client:
            state = client.read_flow_run(flow_run.id).state
        return state is not None and state.is_final() and read_manifest(store, run_id, "p00002") is not None

    wait_for(finished_again, 300, "the retried flow run", interval=2)
    with _client(served["api"]) as client:
        assert client.read_flow_run(flow_run.id).state.is_completed()
    assert {k.split("/")[1] for k in store.list("runs/") if k.endswith("/run.json")} == {run_id}
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "succeeded" and len(info["resumed_at"]) == 2


def _chromium(url: str, out: Path, *extra: str) -> str:
    """Headless Chromium (flags from stack-notes): screenshot ``url`` into ``out``, return its DOM."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={out.parent / ('chromium-' + out.stem)}", "--virtual-time-budget=20000",
             "--run-all-compositor-stages-before-draw", "--window-size=1400,1000", *extra]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={out}", url], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True)
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (.ci/run installs it)")
def test_ui_shows_deployments_and_the_throughput_artifact(served: dict, tmp_path: Path) -> None:
    if "run_id" not in served:
        pytest.skip("needs the deployment run of test_deployment_run_completes_and_rerun_failed_repairs")
    shots = Path(os.environ.get("HARE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page = _chromium(f"{served['ui']}/deployments", shots / "deployments.png")
    assert "synthesize" in page and "rerun-failed" in page
    assert (shots / "deployments.png").stat().st_size > 10_000

    with _client(served["api"]) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["hare-partitions"])), limit=1,
            sort="CREATED_DESC")
    page = _chromium(f"{served['ui']}/artifacts/artifact/{artifact.id}", shots / "throughput-artifact.png")
    assert "hare-partitions" in page and "total 4/4" in page and "tokens_per_s" in page
    assert (shots / "throughput-artifact.png").stat().st_size > 10_000


def _serve_with_local_server_at(api_url: str, cfg: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`hare serve CFG` as the CLI runs it, with the default local server address (127.0.0.1:4200
    in hare.deployments) moved to ``api_url``, so the test never depends on what holds 4200."""
    code = ("import sys, hare.flows.deployments as d\n"
            f"d.LOCAL_SERVER = {api_url!r}\n"
            "d._local_server_up.__defaults__ = (d.LOCAL_SERVER,)\n"
            "from hare.cli import main\n"
            f"sys.argv = ['hare', 'serve', {str(cfg)!r}]\n"
            "sys.exit(main())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_serve_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    """No PREFECT_API_URL and nothing at the local server address (a free port here): exit 2,
    naming that address and how to start a server."""
    from hare.flows.deployments import LOCAL_SERVER

    assert LOCAL_SERVER == "http://127.0.0.1:4200/api"  # what the message tells a user by default
    api_url = f"http://127.0.0.1:{free_port()}/api"
    cfg = write_run_config(tmp_path)
    env = hare_env()
    env.pop("PREFECT_API_URL", None)
    proc = _serve_with_local_server_at(api_url, cfg, {**env, "PREFECT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "hare serve needs a Prefect server" in proc.stderr and "prefect server start" in proc.stderr
    assert api_url in proc.stderr, proc.stderr


def test_the_local_server_probe_sees_a_running_server(prefect_server: str) -> None:
    """The other side of the probe the test above relies on: a server that answers is seen (so
    'nothing there' above is the free port's doing, not a probe that never succeeds)."""
    from hare.flows.deployments import _local_server_up

    assert _local_server_up(f"{prefect_server}/api")
    assert not _local_server_up(f"http://127.0.0.1:{free_port()}/api")
