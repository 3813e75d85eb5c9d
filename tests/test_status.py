"""`hare status` reads only the store: GPU figures appear when manifests carry them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from hare.store.layout import generated_key, run_json
from hare.store.manifest import commit_partition
from hare.store.schema import RECORD_SCHEMA
from hare.run.status import render_status
from hare.store import open_store


def _status_text(tmp_path: Path, gpu_stats: dict) -> str:
    store = open_store(f"file://{tmp_path}")
    store.put_bytes(run_json("r1"), json.dumps({"status": "running", "partitions": ["p00000", "p00001"]}).encode())
    stats = {"records": 0, "rejects": 0, "output_tokens": 900, "output_tokens_per_s": 450.0, **gpu_stats}
    commit_partition(store, "r1", "p00000", "generate",
                     {generated_key("r1", "p00000"): pa.Table.from_pylist([], schema=RECORD_SCHEMA)}, stats, 1)
    console = Console(record=True, width=200)
    rows = render_status(store, "r1", console)
    assert [r["status"] for r in rows] == ["committed", "pending"]
    return console.export_text()


def test_gpu_busy_column_when_manifests_have_nvml_figures(tmp_path: Path) -> None:
    text = _status_text(tmp_path, {"gpu_busy_fraction": 0.87, "gpu_util_mean": 80.0})
    assert "gpu busy" in text and "87%" in text and "1/2 committed" in text


def test_no_gpu_column_on_cpu_runs(tmp_path: Path) -> None:
    text = _status_text(tmp_path, {})
    assert "gpu busy" not in text and "450.0" in text
