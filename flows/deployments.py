"""``hare serve``: the two Prefect deployments a user schedules and re-runs from the UI.

- ``synthesize/<name>``: the config's run; cron schedule from its ``schedule`` section, the
  config path and store URL as default parameters (editable per run in the UI);
- ``rerun-failed/<name>``: takes a run id and completes that run (what ``hare rerun`` does).

``prefect.serve`` keeps a runner polling the Prefect API; each flow run executes in its own
process and joins Ray at RAY_ADDRESS (or starts a local one) through
:class:`hare.run.runtime.HareRayTaskRunner`. The flows are loaded by module path
(``hare.flows.synthesize``), not file path: Ray workers must import the module the tasks were
pickled with. Stopping ``hare serve`` pauses the schedule.

Each deployment runs one flow run at a time by default (a Prefect deployment concurrency limit,
enforced by the server): a manual run started while the nightly one is running waits in the
queue (``AwaitingConcurrencySlot``) instead of fighting it for the GPUs. ``concurrency_limit``
(or ``HARE_DEPLOYMENT_CONCURRENCY``) sets another limit; 0 lifts it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hare.config import load_config
from hare.store import absolute_store_url


class ServeError(RuntimeError):
    """``hare serve`` cannot register its deployments (no API to register them with)."""


CONCURRENCY_ENV = "HARE_DEPLOYMENT_CONCURRENCY"
DEFAULT_CONCURRENCY = 1  # flow runs of one deployment at a time


def deployment_concurrency(limit: int | None = None) -> Any:
    """The concurrency limit every hare deployment gets: ``limit``, else $HARE_DEPLOYMENT_CONCURRENCY,
    else 1; 0 means no limit (None). Runs over the limit wait (ENQUEUE), they are not cancelled."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if limit is None:
        raw = os.environ.get(CONCURRENCY_ENV, "").strip()
        try:
            limit = int(raw) if raw else DEFAULT_CONCURRENCY
        except ValueError:
            raise ServeError(f"{CONCURRENCY_ENV}={raw!r}: expected a whole number of flow runs per deployment "
                             f"(0: no limit)") from None
    if limit < 0:
        raise ServeError(f"deployment concurrency limit {limit}: expected 0 (no limit) or more")
    if limit == 0:
        return None
    return ConcurrencyLimitConfig(limit=limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def build_deployments(config_path: str, store_url: str | None = None, name: str | None = None,
                      concurrency_limit: int | None = None) -> list[Any]:
    """The RunnerDeployments for one config; validates the config first (a bad one names the field).

    ``concurrency_limit``: flow runs of each deployment at a time (default: $HARE_DEPLOYMENT_CONCURRENCY,
    else 1; 0: no limit)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from hare.flows.synthesize import rerun_failed, synthesize

    concurrency = deployment_concurrency(concurrency_limit)
    cfg = load_config(config_path, store_url=store_url)
    config_file = str(Path(config_path).resolve())
    store = absolute_store_url(cfg.store.url)
    name = name or cfg.name
    schedule = Cron(cfg.schedule.cron, timezone=cfg.schedule.timezone) if cfg.schedule.cron else None
    return [
        synthesize.to_deployment(
            name=name,
            schedule=schedule,
            parameters={"config_path": config_file, "store_url": store},
            description=f"hare run of {config_file} into {store}. Leave run_id empty for a new run.",
            tags=["hare", cfg.name],
            entrypoint_type=EntrypointType.MODULE_PATH,
            concurrency_limit=concurrency,
        ),
        rerun_failed.to_deployment(
            name=name,
            parameters={"store_url": store},
            description=f"Complete a run in {store}: redo its missing, failed or altered partitions.",
            tags=["hare", cfg.name],
            entrypoint_type=EntrypointType.MODULE_PATH,
            concurrency_limit=concurrency,
        ),
    ]


LOCAL_SERVER = "http://127.0.0.1:4200/api"  # where `prefect server start` listens by default


def _local_server_up(api_url: str = LOCAL_SERVER) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serve_deployments(config_path: str, store_url: str | None = None, name: str | None = None,
                      concurrency_limit: int | None = None) -> None:
    """Register the deployments and serve them until interrupted.

    The API is PREFECT_API_URL, else a `prefect server start` on this machine's default port, so
    the README's three commands work without exporting anything.
    """
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = PREFECT_API_URL.value()
    if not api_url:
        if not _local_server_up():
            raise ServeError(
                "hare serve needs a Prefect server to register deployments with: run `prefect server start` "
                f"(it listens on {LOCAL_SERVER}) or set PREFECT_API_URL to your server's API"
            )
        api_url = os.environ["PREFECT_API_URL"] = LOCAL_SERVER  # the flow-run processes inherit it
    deployments = build_deployments(config_path, store_url, name, concurrency_limit)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    limit = deployments[0].concurrency_limit
    runs = f"{limit} flow run(s) of each at a time, others wait" if limit else "no concurrency limit"
    print(f"serving {names} against {api_url} ({runs}); stop with Ctrl-C (pauses the schedule)", flush=True)
    with temporary_settings({PREFECT_API_URL: api_url}):
        serve(*deployments, print_starting_message=False)
