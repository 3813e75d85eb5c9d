"""``hare serve``: the two Prefect deployments a user schedules and re-runs from the UI.

- ``synthesize/<name>``: the config's run; cron schedule from its ``schedule`` section, the
  config path and store URL as default parameters (editable per run in the UI);
- ``rerun-failed/<name>``: takes a run id and completes that run (what ``hare rerun`` does).

``prefect.serve`` keeps a runner polling the Prefect API; each flow run executes in its own
process and joins Ray at RAY_ADDRESS (or starts a local one) through
:class:`hare.runtime.HareRayTaskRunner`. The flows are loaded by module path
(``hare.flows.synthesize``), not file path: Ray workers must import the module the tasks were
pickled with. Stopping ``hare serve`` pauses the schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hare.config import load_config
from hare.store import absolute_store_url


class ServeError(RuntimeError):
    """``hare serve`` cannot register its deployments (no API to register them with)."""


def build_deployments(config_path: str, store_url: str | None = None, name: str | None = None) -> list[Any]:
    """The RunnerDeployments for one config; validates the config first (a bad one names the field)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from hare.flows.synthesize import rerun_failed, synthesize

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
        ),
        rerun_failed.to_deployment(
            name=name,
            parameters={"store_url": store},
            description=f"Complete a run in {store}: redo its missing, failed or altered partitions.",
            tags=["hare", cfg.name],
            entrypoint_type=EntrypointType.MODULE_PATH,
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


def serve_deployments(config_path: str, store_url: str | None = None, name: str | None = None) -> None:
    """Register the deployments and serve them until interrupted.

    The API is PREFECT_API_URL, else a `prefect server start` on this machine's default port, so
    the README's three commands work without exporting anything.
    """
    import os

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
    deployments = build_deployments(config_path, store_url, name)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(f"serving {names} against {api_url}; stop with Ctrl-C (pauses the schedule)", flush=True)
    with temporary_settings({PREFECT_API_URL: api_url}):
        serve(*deployments, print_starting_message=False)
