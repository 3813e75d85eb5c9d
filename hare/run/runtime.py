"""The driver's runtime: one Prefect API for every process, and a Ray connection.

Without a server Prefect starts a temporary API *per process*, so every Ray worker would boot
its own (10-13 s each, SQLite lock noise). The driver therefore makes sure one API exists -
the configured PREFECT_API_URL, the test harness's, or one temporary server it starts itself -
and hands its URL to every Ray worker through the job's runtime env. Ray is initialised here,
before the flow starts; prefect-ray's RayTaskRunner then reuses this connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from prefect_ray import RayTaskRunner

from hare.config import RunConfig
from hare.engines import RAY_NAMESPACE
from hare.errors import StartupError
from hare.engines.vllm_build import check_vllm_build
from hare.process_tree import descendants, tie_to_this_process

log = logging.getLogger("hare")

# Settings every worker must share with the driver; secrets are deliberately absent: AWS
# credentials reach workers through the inherited environment, never through Ray/Prefect
# parameters or runtime envs (which are logged and shown in dashboards).
# HARE_CACHE_DIR is not forwarded: every node keeps its own cache (converted models, vLLM and
# torch compile caches), set where that node's `ray start` runs; a driver's path may not exist
# on a worker node. A local Ray inherits the driver's environment anyway.
_FORWARDED = (
    "HARE_STORE_RETRY_SECONDS",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_LOGGING_LEVEL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


# The first start of the temporary API migrates a new SQLite database: 19.9 s on a quiet
# 2-core machine, longer on a busy one, while Prefect waits 20 s by default. hare migrates
# first (no timeout) and then waits this long for the server itself.
SERVER_STARTUP_TIMEOUT_S = 300


def prefect_database_path() -> Path | None:
    """The SQLite file the temporary API would use, or None for another database."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME

    url = PREFECT_API_DATABASE_CONNECTION_URL.value() or ""
    if url and not url.startswith("sqlite"):
        return None
    if url:
        return Path(url.split("///", 1)[-1]).expanduser()
    return Path(PREFECT_HOME.value()) / "prefect.db"


def migrate_prefect_database() -> None:
    """Create / upgrade Prefect's database in a subprocess before the temporary server starts,
    so the server's own start never races Prefect's 20 s startup wait on a slow first run."""
    import subprocess
    import sys

    db = prefect_database_path()
    if db is None or db.exists():
        return  # an existing database: the server's own migration check is quick
    db.parent.mkdir(parents=True, exist_ok=True)
    log.info("first start: creating Prefect's database %s (once; 20-60 s on 2 cores)", db)
    proc = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StartupError(f"Prefect API: could not create its database {db}: {last[0]} "
                           f"(check PREFECT_HOME, or run `prefect server database upgrade -y`)")


def check_prefect_api(url: str, timeout_s: float = 10.0) -> None:
    """Fail with one line unless ``url`` answers as a Prefect API (GET /health -> 200)."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise StartupError(f"Prefect API at {url} is not reachable ({type(exc).__name__}): start it with "
                           f"`prefect server start`, or unset PREFECT_API_URL to use a temporary one") from None
    if response.status_code != 200:
        raise StartupError(f"Prefect API at {url} answered {response.status_code} to /health: the port is "
                           f"held by something else, or the URL lacks /api; fix PREFECT_API_URL") from None


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL all processes use, starting a temporary server if none."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    url = PREFECT_API_URL.value()
    if url:
        check_prefect_api(url)
        os.environ["PREFECT_API_URL"] = url
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import temporary_settings

    migrate_prefect_database()
    server = SubprocessASGIServer()
    wait_s = max(SERVER_STARTUP_TIMEOUT_S, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
    try:
        server.start(timeout=wait_s)
    except Exception as exc:  # noqa: BLE001 - Prefect raises RuntimeError with the server's output
        server.stop()
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise StartupError(f"Prefect API: the temporary server did not come up in {wait_s} s ({first}); "
                           f"start one with `prefect server start` and set PREFECT_API_URL") from None
    if server.server_process is not None:  # Prefect's Popen: no parent-death signal of its own
        tie_to_this_process({server.server_process.pid})
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_api_logs()  # else Prefect sends the last log lines at exit, to a server that is gone
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def mark_flow_run_crashed(flow_run_id: str, message: str) -> bool:
    """Set a flow run whose driver died (no final state) to Crashed with ``message``; False when
    the API does not know it or it had ended. A dead driver never reports its own end, so the
    next start of the same run, which finds its lease, says it for it."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return False
            client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)
            return True
    except Exception as exc:  # noqa: BLE001 - another API, a deleted run: the run itself goes on
        log.warning("could not mark flow run %s crashed: %s", flow_run_id, exc)
        return False


def _drain_api_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=5)


# Offline flags a hub model source leaves to each engine node: the driver needs no hub (and is
# often offline, e.g. HF_HUB_OFFLINE=1 from the Makefile), the engine nodes download.
_HUB_OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def worker_env(api_url: str, model_source: str | None = None) -> dict[str, str]:
    """What every Ray worker gets from the driver: the forwarded settings and the Prefect API;
    for a hub ``model_source`` not the driver's offline flags (each node keeps its own)."""
    from hare.engines.models import is_hub_source

    skip = _HUB_OFFLINE_FLAGS if model_source and is_hub_source(model_source) else ()
    env = {k: os.environ[k] for k in _FORWARDED if k in os.environ and k not in skip}
    env["PREFECT_API_URL"] = api_url
    return env


def ray_address(configured: str | None = None) -> str | None:
    """``ray.address`` of the config, else RAY_ADDRESS, else None (a local instance).

    Only a local instance gets ``RAY_AUTH_MODE=disabled`` (no token file in ~/.ray); a cluster's
    auth mode is the cluster's (Ray 2.61 turns token auth on by default)."""
    address = configured or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    return address


# ``ray.init(address=None)`` joins "the latest cluster started on this machine" when Ray's temp
# folder names one (ray_current_cluster), and retries a dead one for minutes; "local" always
# starts a new instance, which is what a run without an address means.
LOCAL_RAY = "local"


def ray_init_kwargs(api_url: str, local: bool, include_dashboard: bool = False,
                    model_source: str | None = None) -> dict[str, object]:
    """What every hare driver passes to ``ray.init``: the namespace of the engine actors and the
    worker environment (the shared Prefect API; ``model_source``: see :func:`worker_env`); a
    dashboard only for a local instance."""
    kwargs: dict[str, object] = dict(namespace=RAY_NAMESPACE, log_to_driver=True,
                                     runtime_env={"env_vars": worker_env(api_url, model_source)})
    if local:
        kwargs["include_dashboard"] = include_dashboard
    return kwargs


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail with one line when nothing listens at a ``host:port`` / ``ray://host:port`` address:
    ``ray.init`` would otherwise retry the GCS for minutes before giving up."""
    import socket

    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" or another form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise StartupError(f"Ray: nothing answers at {address} ({exc.strerror or type(exc).__name__}); "
                           f"start the cluster (`ray start --head`) or fix ray.address / RAY_ADDRESS, "
                           f"or leave both unset for a local Ray") from None


@contextlib.contextmanager
def ray_connection(cfg: RunConfig, api_url: str) -> Iterator[None]:
    """Connect to ``ray.address`` / RAY_ADDRESS or start a local Ray; shut down what we start."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = ray_address(cfg.ray.address)
    if address:
        check_ray_address(address)
    try:
        ray.init(address=address or LOCAL_RAY, **ray_init_kwargs(api_url, address is None, cfg.ray.include_dashboard,
                                                                  cfg.model.source))
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError...: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        fix = ("check ray.address / RAY_ADDRESS and that the cluster is up (`ray status`)" if address
               else "check free memory and /tmp space, or `ray stop` a stale local instance")
        raise StartupError(f"Ray: could not connect to {where}: {first}; {fix}") from None
    if address is None:  # a local Ray: its agents outlive a SIGKILLed driver unless tied to it
        tie_to_this_process(descendants(os.getpid()))
    try:
        yield
    finally:
        ray.shutdown()


class HareRayTaskRunner(RayTaskRunner):
    """prefect-ray's runner, joining Ray the way ``hare run`` does when a flow starts on its own.

    ``hare run`` initialises Ray before the flow (:func:`driver_runtime`) and this runner reuses
    it. A flow run started by a deployment (``hare serve``, the Prefect UI) has no such driver:
    then Ray is joined here, at flow start, at RAY_ADDRESS (a cluster) or locally, with the
    worker environment pointing every Ray worker at the same Prefect API.
    """

    def __enter__(self) -> "HareRayTaskRunner":
        import ray
        from prefect.settings import PREFECT_API_URL

        if not ray.is_initialized():
            self.address = ray_address() or LOCAL_RAY
            api_url = PREFECT_API_URL.value() or ""
            self.init_kwargs = {**self.init_kwargs, **ray_init_kwargs(api_url, self.address is None)}
        return super().__enter__()


def check_store(url: str) -> None:
    """Fail with one line unless the store answers (a list of ``runs/``), before anything starts.
    A probe: it retries for 10 s, quietly, not for the store's whole retry budget."""
    import logging

    from hare.store.layout import RUNS_PREFIX
    from hare.store import RetryPolicy, StoreError, open_store

    try:
        open_store(url, RetryPolicy(max_elapsed_s=10.0, log_level=logging.DEBUG)).list(RUNS_PREFIX)
    except StoreError as exc:
        raise StartupError(f"store {url} is not reachable: {str(exc).splitlines()[0][:200]}; check the URL, "
                           f"the endpoint (AWS_ENDPOINT_URL) and credentials") from None


@contextlib.contextmanager
def driver_runtime(cfg: RunConfig) -> Iterator[str]:
    """Prefect API + Ray, ready for a flow run; yields the API URL.

    A local Ray runs the engines in this environment, so its vLLM build is checked here, before
    anything starts; on a cluster each engine checks its own node's build as it starts."""
    if ray_address(cfg.ray.address) is None:
        check_vllm_build(cfg.model, gpu_node=True)
    with prefect_api() as url, ray_connection(cfg, url):
        yield url
