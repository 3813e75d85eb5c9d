"""The terminal progress view of `hare run`: figures from the manifests, logs kept off the bar."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from hare.store.layout import dataset_manifest_key, run_json
from hare.store.manifest import PartitionManifest, commit_partition, record_failure, utc_now
from hare.run.progress import RunWatcher, output_to_file, plain_line, render
from hare.store.schema import RECORD_SCHEMA
from hare.store import open_store


def _run(store, run_id: str, partitions: list[str]) -> None:  # noqa: ANN001
    store.put_bytes(run_json(run_id), json.dumps({"run_id": run_id, "status": "running",
                                                  "partitions": partitions}).encode())


def _commit(store, run_id: str, pid: str, stage: str, records: int, tokens: int = 0) -> None:  # noqa: ANN001
    commit_partition(store, run_id, pid, stage, {}, {"records": records, "output_tokens": tokens}, 1)


def test_watcher_counts_what_the_manifests_commit(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    run = "r1"
    _run(store, run, ["p00000", "p00001", "p00002", "b00000"])
    # p00000 was committed by an earlier attempt: it counts as generated but carries no rate now
    old = PartitionManifest(run, "p00000", "generate", "succeeded", 1, stats={"records": 5, "output_tokens": 500},
                            finished_at="2020-01-01T00:00:00.000+00:00")
    store.put_bytes(f"runs/{run}/partitions/p00000.json", old.to_json())
    watcher = RunWatcher(store, run, ["quality", "dedup"], index_every_s=0)
    _commit(store, run, "p00001", "generate", 4, tokens=300)
    _commit(store, run, "p00001", "quality", 3)
    _commit(store, run, "b00000", "generate", 2, tokens=100)
    record_failure(store, run, "p00002", "generate", "boom", 1)

    snap = watcher.snapshot()
    assert (snap.partitions, snap.generated, snap.generated_now) == (4, 3, 2)
    assert snap.failed == ["p00002"]
    assert snap.output_tokens_now == 400, "only partitions committed since the view started"
    assert snap.stages == {"quality": 1, "dedup": 0}
    assert snap.records_kept == 5 + 3, "each dataset partition counts after its furthest stage; b* never"
    assert not snap.published

    # a later commit of the failed partition is seen; committed manifests are not read again
    _commit(store, run, "p00002", "generate", 6, tokens=200)
    store.put_bytes(dataset_manifest_key(run), b"{}")
    reads: list[str] = []
    real_get = store.get_bytes
    store.get_bytes = lambda key: reads.append(key) or real_get(key)  # type: ignore[method-assign]
    snap = watcher.snapshot()
    assert snap.failed == [] and snap.generated == 4 and snap.published
    assert [k for k in reads if "/partitions/" in k] == [f"runs/{run}/partitions/_index.parquet",
                                                         f"runs/{run}/partitions/p00002.json"], \
        "the index, then only the manifest that changed"

    text = io.StringIO()
    Console(file=text, width=140).print(render(snap, 10.0, "hare run r1"))
    out = text.getvalue()
    assert "4/4 partitions" in out and "quality" in out and "1/3 partitions" in out
    assert "60.0 output tok/s" in out  # 600 tokens in 10 s
    assert plain_line(snap, 10.0).endswith("generate 4/4 · 14 kept · 60.0 tok/s · quality 1/3 dedup 0/3 published")


def test_output_to_file_catches_children_and_keeps_the_terminal(tmp_path: Path) -> None:
    """Everything this process and its children print goes to the log; the yielded stream
    still reaches the real stdout."""
    code = f"""
import subprocess, sys
from pathlib import Path
from hare.run.progress import output_to_file
with output_to_file(Path({str(tmp_path / 'run.log')!r})) as term:
    print("from python")
    print("to stderr", file=sys.stderr)
    subprocess.run([sys.executable, "-c", "print('from a child')"])
    term.write("progress line\\n")
print("after")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "progress line\nafter\n" and proc.stderr == ""
    log = (tmp_path / "run.log").read_text()
    assert "from python" in log and "to stderr" in log and "from a child" in log
    assert "progress line" not in log


def test_epoch_of_manifest_times() -> None:
    from hare.run.progress import _epoch

    assert abs(_epoch(utc_now()) - time.time()) < 5
    assert _epoch("garbage") == 0.0
    assert RECORD_SCHEMA is not None and sys.version_info >= (3, 11)
