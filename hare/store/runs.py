"""A run's identity and its ``run.json``: config, config hash, code version, partitions, times.

A run id names one attempt at a config. Re-running with the same id resumes it (only
uncommitted partitions are redone); the config hash in run.json guards against resuming a run
with a different config, which would mix two datasets under one id.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hare.store.layout import run_json
from hare.clock import utc_now
from hare.store import KeyNotFound, ObjectStore, check_key_part
from hare.version import code_version

if TYPE_CHECKING:
    from hare.config import RunConfig


class RunError(RuntimeError):
    """The run cannot start or resume as asked."""


def new_run_id(cfg: RunConfig, when: datetime | None = None, suffix: str | None = None) -> str:
    """``<name>-<UTC time>-<6 hex>``: sortable by time, unique without coordination."""
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{cfg.name}-{stamp}-{suffix or secrets.token_hex(3)}"


def read_run(store: ObjectStore, run_id: str) -> dict[str, Any]:
    try:
        return json.loads(store.get_bytes(run_json(run_id)))
    except KeyNotFound:
        raise RunError(f"no run {run_id!r} in {store.url} (no {run_json(run_id)})") from None


def start_run(store: ObjectStore, cfg: RunConfig, run_id: str, partition_ids: list[str]) -> dict[str, Any]:
    """Write run.json for a new run, or check it and mark a resume for an existing one."""
    check_key_part(run_id, "run id")
    try:
        existing = json.loads(store.get_bytes(run_json(run_id)))
    except KeyNotFound:
        existing = None
    if existing is not None:
        if existing["config_hash"] != cfg.config_hash():
            raise RunError(
                f"run {run_id!r} was started with config hash {existing['config_hash'][:12]}, "
                f"this config hashes to {cfg.config_hash()[:12]}: use a new run id"
            )
        info = existing
        info["resumed_at"] = [*info.get("resumed_at", []), utc_now()]
    else:
        info = {
            "run_id": run_id,
            "name": cfg.name,
            "config": cfg.to_jsonable(),
            "config_hash": cfg.config_hash(),
            "code_version": code_version(),
            "started_at": utc_now(),
            "partitions": partition_ids,
        }
    info.update(status="running", finished_at=None)
    store.put_bytes(run_json(run_id), json.dumps(info, indent=2).encode())
    return info


def finish_run(store: ObjectStore, run_id: str, status: str, summary: dict[str, Any]) -> dict[str, Any]:
    info = read_run(store, run_id)
    info.update(status=status, finished_at=utc_now(), summary=summary)
    store.put_bytes(run_json(run_id), json.dumps(info, indent=2).encode())
    return info
