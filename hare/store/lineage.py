"""OpenLineage run events for every job the DAG runs, stored under ``runs/<id>/lineage/``.

Events follow the OpenLineage RunEvent shape (eventType, eventTime, run, job, inputs,
outputs) so a Marquez or any OpenLineage consumer can ingest them as they are; datasets are
named by their store URI, and outputs carry their sha256 in a facet.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from hare.store.layout import lineage_key
from hare.clock import utc_now
from hare.store import ObjectStore
from hare.version import code_version

PRODUCER = "https://github.com/hare-data/hare"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent"
NAMESPACE = "hare"


def lineage_run_uuid(run_id: str, job: str) -> str:
    """OpenLineage wants a UUID per job run; derive it so re-emitting is idempotent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hare:{run_id}:{job}"))


def dataset(uri: str, sha256: str | None = None, rows: int | None = None) -> dict[str, Any]:
    ns, _, name = uri.partition("://")
    ds: dict[str, Any] = {"namespace": f"{ns}://", "name": name}
    if sha256 is not None:
        ds["facets"] = {"hare_object": {"_producer": PRODUCER, "sha256": sha256, "rows": rows}}
    return ds


def emit(
    store: ObjectStore,
    run_id: str,
    job: str,
    event_type: str,
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    facets: dict[str, Any] | None = None,
    key: str | None = None,
) -> str:
    """Write one event; returns its key. Job names look like ``synthesize.generate.p00001``.
    ``key``: where, for an event that belongs to no run (the store's index); default: the run's."""
    event = {
        "eventType": event_type,
        "eventTime": utc_now(),
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
        "run": {
            "runId": lineage_run_uuid(run_id, job),
            "facets": {"hare": {"_producer": PRODUCER, "run_id": run_id,
                                "code_version": code_version(), **(facets or {})}},
        },
        "job": {"namespace": NAMESPACE, "name": job},
        "inputs": inputs or [],
        "outputs": outputs or [],
    }
    key = key or lineage_key(run_id, f"{job}.{event_type.lower()}")
    store.put_bytes(key, json.dumps(event, indent=2).encode())
    return key
