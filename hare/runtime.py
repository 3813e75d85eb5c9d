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

from prefect_ray import RayTaskRunner

from hare.config import RunConfig
from hare.engine import RAY_NAMESPACE

log = logging.getLogger("hare")

# Settings every worker must share with the driver; secrets are deliberately absent: AWS
# credentials reach workers through the inherited environment, never through Ray/Prefect
# parameters or runtime envs (which are logged and shown in dashboards).
_FORWARDED = (
    "HARE_CACHE_DIR",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_LOGGING_LEVEL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)


@contextlib.contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL all processes use, starting a temporary server if none."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        os.environ["PREFECT_API_URL"] = url
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import temporary_settings

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def worker_env(api_url: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _FORWARDED if k in os.environ}
    env["PREFECT_API_URL"] = api_url
    return env


def ray_address(configured: str | None = None) -> str | None:
    """``ray.address`` of the config, else RAY_ADDRESS, else None (a local instance)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local Ray: no token file in ~/.ray
    return configured or os.environ.get("RAY_ADDRESS") or None


def ray_init_kwargs(api_url: str, local: bool, include_dashboard: bool = False) -> dict[str, object]:
    """What every hare driver passes to ``ray.init``: the namespace of the engine actors and the
    worker environment (the shared Prefect API); a dashboard only for a local instance."""
    kwargs: dict[str, object] = dict(namespace=RAY_NAMESPACE, runtime_env={"env_vars": worker_env(api_url)},
                                     log_to_driver=True)
    if local:
        kwargs["include_dashboard"] = include_dashboard
    return kwargs


@contextlib.contextmanager
def ray_connection(cfg: RunConfig, api_url: str) -> Iterator[None]:
    """Connect to ``ray.address`` / RAY_ADDRESS or start a local Ray; shut down what we start."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = ray_address(cfg.ray.address)
    ray.init(address=address, **ray_init_kwargs(api_url, address is None, cfg.ray.include_dashboard))
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
            self.address = ray_address()
            api_url = PREFECT_API_URL.value() or ""
            self.init_kwargs = {**self.init_kwargs, **ray_init_kwargs(api_url, self.address is None)}
        return super().__enter__()


@contextlib.contextmanager
def driver_runtime(cfg: RunConfig) -> Iterator[str]:
    """Prefect API + Ray, ready for a flow run; yields the API URL."""
    with prefect_api() as url, ray_connection(cfg, url):
        yield url
