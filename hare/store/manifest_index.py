"""A run's manifests without one GET per partition: a compacted index next to them.

``runs/<run_id>/partitions/_index.parquet`` holds one row per manifest: its key, its size,
mtime and ETag as last listed, and the manifest's fields (stats and outputs as JSON text).
``load_manifests`` lists the partitions folder once (LIST pages of 1,000 keys, sizes and ETags
included), reads the index once, and GETs only the manifests that are new or whose listed
size/mtime/ETag differ from the index row. So a status of 10,000 partitions costs ~10 LIST
pages + 1 GET instead of 10,000 GETs.

The index is a cache, never a commit: the manifests stay the truth. A row is used only while
its manifest lists exactly as recorded; a missing, unreadable or foreign index is rebuilt from
the manifests; two writers racing only cost a re-read next time. Rows are recorded with the
stamp listed *before* the GET, so a manifest rewritten in between looks changed next time.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pyarrow as pa

from hare.store.layout import is_manifest_key, manifest_index_key, manifests_prefix, parse_manifest_key
from hare.store.manifest import OutputRef, PartitionManifest, parse_manifest
from hare.store import KeyNotFound, ObjectInfo, ObjectStore
from hare.store.tables import from_parquet_bytes, to_parquet_bytes

log = logging.getLogger("hare.manifest_index")

INDEX_VERSION = "1"
_META = b"hare_manifest_index"

INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("etag", pa.string()),
        ("run_id", pa.string()),
        ("partition_id", pa.string()),
        ("stage", pa.string()),
        ("status", pa.string()),
        ("attempts", pa.int64()),
        ("error", pa.string()),
        ("finished_at", pa.string()),
        ("stats", pa.string()),  # JSON text
        ("outputs", pa.string()),  # JSON text: [{key, sha256, bytes, rows}]
    ],
    metadata={_META: INDEX_VERSION.encode()},
)


def _stamp(info: ObjectInfo) -> tuple[int, float, str]:
    return (info.size, info.mtime, info.etag)


def _row(info: ObjectInfo, m: PartitionManifest) -> dict[str, object]:
    return {
        "key": info.key, "size": info.size, "mtime": info.mtime, "etag": info.etag,
        "run_id": m.run_id, "partition_id": m.partition_id, "stage": m.stage, "status": m.status,
        "attempts": m.attempts, "error": m.error, "finished_at": m.finished_at,
        "stats": json.dumps(m.stats, sort_keys=True),
        "outputs": json.dumps([asdict(o) for o in m.outputs]),
    }


def _manifest(row: dict[str, object]) -> PartitionManifest:
    return PartitionManifest(
        run_id=str(row["run_id"]), partition_id=str(row["partition_id"]), stage=str(row["stage"]),
        status=str(row["status"]), attempts=int(row["attempts"]),  # type: ignore[arg-type]
        error=row["error"],  # type: ignore[arg-type]
        outputs=[OutputRef(**o) for o in json.loads(str(row["outputs"]))],
        stats=json.loads(str(row["stats"])), finished_at=str(row["finished_at"]),
    )


IndexEntry = tuple[tuple[int, float, str], PartitionManifest, dict[str, object]]


def read_index(store: ObjectStore, run_id: str) -> dict[str, IndexEntry]:
    """The index by manifest key: (listed stamp, manifest, raw row). Missing or unreadable: empty."""
    key = manifest_index_key(run_id)
    try:
        data = store.get_bytes(key)
    except KeyNotFound:
        return {}
    try:
        table = from_parquet_bytes(data, key)
        if (table.schema.metadata or {}).get(_META) != INDEX_VERSION.encode():
            raise ValueError("not a hare manifest index of version " + INDEX_VERSION)
        out = {}
        for row in table.select(INDEX_SCHEMA.names).to_pylist():
            out[row["key"]] = ((int(row["size"]), float(row["mtime"]), str(row["etag"])), _manifest(row), row)
        return out
    except Exception as exc:  # noqa: BLE001 - a cache: whatever is wrong with it, rebuild
        log.warning("manifest index %s unreadable, rebuilding it from the manifests: %s", store.uri(key), exc)
        return {}


def write_index(store: ObjectStore, run_id: str, rows: list[dict[str, object]]) -> None:
    rows = sorted(rows, key=lambda r: str(r["key"]))
    store.put_bytes(manifest_index_key(run_id), to_parquet_bytes(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)))


def load_manifests(store: ObjectStore, run_id: str, write_back: bool = False,
                   workers: int = 16) -> dict[str, PartitionManifest]:
    """Every manifest of the run, by store key: one listing of ``runs/<id>/partitions/``, one GET
    of the index, and GETs (``workers`` in parallel) only of manifests that are new or changed
    since the index was written. ``write_back``: rewrite the index when anything changed (the
    driver does, periodically; readers such as ``hare status`` do not). An unreadable manifest
    comes back as a ``failed`` one, as ``read_manifest`` gives it."""
    index_key = manifest_index_key(run_id)
    listed = [i for i in store.list_info(manifests_prefix(run_id))
              if i.key != index_key and is_manifest_key(i.key)]
    index = read_index(store, run_id)

    manifests: dict[str, PartitionManifest] = {}
    rows: dict[str, dict[str, object]] = {}  # the index to write back: kept rows, new rows
    stale: list[ObjectInfo] = []
    for info in listed:
        hit = index.get(info.key)
        if hit is not None and hit[0] == _stamp(info):
            manifests[info.key] = hit[1]
            rows[info.key] = hit[2]
        else:
            stale.append(info)

    def fetch(info: ObjectInfo) -> PartitionManifest | None:
        try:
            data = store.get_bytes(info.key)
        except KeyNotFound:  # deleted since the listing
            return None
        pid, stage = parse_manifest_key(info.key)
        return parse_manifest(data, run_id, pid, stage)

    if stale:
        if len(stale) == 1 or workers <= 1:
            fetched = [fetch(i) for i in stale]
        else:
            with ThreadPoolExecutor(max_workers=min(workers, len(stale)), thread_name_prefix="hare-manifest") as pool:
                fetched = list(pool.map(fetch, stale))
        for info, m in zip(stale, fetched):
            if m is not None:
                manifests[info.key] = m
                if write_back:
                    rows[info.key] = _row(info, m)

    if write_back and (stale or len(rows) != len(index)):
        write_index(store, run_id, list(rows.values()))
    return dict(sorted(manifests.items()))
