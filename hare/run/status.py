"""``hare status``: a run's partitions and totals, read only from the store (the truth).

Cheap at scale: the manifests come from ``load_manifests`` (one listing, the run's manifest
index, GETs only of manifests newer than the index), and a committed partition is trusted with
a size/existence check of its outputs (HEADs, in parallel), not a re-hash. An object altered
after its commit without changing its size is found by ``hare verify RUN`` (re-hashes
everything), and ``hare rerun`` re-hashes before it trusts a partition.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hare.store.layout import manifest_key, parse_manifest_key
from hare.store.manifest import PartitionManifest, check_outputs, kept_records, rejected_records
from hare.store.manifest_index import load_manifests
from hare.store.runs import read_run
from hare.store import ObjectStore

def later_stages() -> list[str]:
    """The per-partition commits after generation, in DAG order, from the one stage list."""
    from hare.tasks.stages import STAGES

    return [s.name for s in STAGES]


# (manifest key, finished_at, attempts) -> problem: outputs already checked, for --watch refreshes
CheckCache = dict[tuple[str, str, int], "str | None"]


def _shallow_problems(store: ObjectStore, manifests: dict[str, PartitionManifest],
                      cache: CheckCache | None) -> dict[str, str | None]:
    """Size/existence of each manifest's outputs (HEADs in parallel); with ``cache``, a manifest
    checked at an earlier refresh is not checked again."""
    ident = {k: (k, m.finished_at, m.attempts) for k, m in manifests.items()}
    todo = {k: m for k, m in manifests.items() if cache is None or ident[k] not in cache}
    found = check_outputs(store, todo)
    if cache is None:
        return found
    cache.update({ident[k]: p for k, p in found.items()})
    return {k: cache[ident[k]] for k in manifests}


def partition_rows(store: ObjectStore, run_id: str, cache: CheckCache | None = None) -> list[dict[str, Any]]:
    """One row per planned partition; ``committed`` only for a succeeded manifest whose outputs
    all exist with their recorded sizes (``corrupt`` otherwise). No per-partition GET: see the
    module docstring. ``cache`` (``watch_status``) skips outputs already checked."""
    info = read_run(store, run_id)
    manifests = load_manifests(store, run_id)
    committed = {parse_manifest_key(k)[1] for k in manifests}
    stages = [st for st in later_stages() if st in committed]
    pids = info.get("partitions", [])
    generated = {manifest_key(run_id, pid): pid for pid in pids}
    succeeded = {k: m for k, m in manifests.items() if k in generated and m.status == "succeeded"}
    problems = _shallow_problems(store, succeeded, cache)
    rows = []
    for pid in pids:
        mkey = manifest_key(run_id, pid)
        m = manifests.get(mkey)
        if m is None:
            status, stats, attempts, error = "pending", {}, 0, ""
        else:
            stats, attempts, error = m.stats, m.attempts, m.error or ""
            status = m.status
            if status == "succeeded":
                problem = problems[mkey]
                status, error = ("committed", "") if problem is None else ("corrupt", problem)
        later = []
        for st in stages:
            lm = manifests.get(manifest_key(run_id, pid, st))
            if lm is not None:
                later.append(st if lm.status == "succeeded" else f"{st}:{lm.status}")
        rows.append({"partition": pid, "status": status, "attempts": attempts, "stages": ",".join(later),
                     "records": kept_records(stats), "rejects": rejected_records(stats),
                     "output_tokens": stats.get("output_tokens", 0),
                     "tokens_per_s": stats.get("output_tokens_per_s", 0.0),
                     "seconds": stats.get("seconds", 0.0), "gpu_busy": stats.get("gpu_busy_fraction"),
                     "error": error})
    return rows


def watch_status(store: ObjectStore, run_id: str, interval: float = 5.0, max_seconds: float | None = None) -> str:
    """Redraw the table every ``interval`` s while run.json says running; returns the final status.

    Each refresh is the cheap path (listing + index + new manifests) and HEADs only the outputs
    of manifests committed since the previous refresh."""
    import time

    from rich.live import Live

    cache: CheckCache = {}
    started = time.monotonic()
    with Live(status_table(store, run_id, cache=cache), refresh_per_second=1, transient=True) as live:
        while read_run(store, run_id).get("status") == "running":
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
            time.sleep(interval)
            live.update(status_table(store, run_id, cache=cache))
    return read_run(store, run_id).get("status", "?")


def render_status(store: ObjectStore, run_id: str, console: Console | None = None) -> list[dict[str, Any]]:
    if console is None:
        console = Console()
        console.width = max(console.width, 120)  # a piped/CI console defaults to 80 columns
    rows = partition_rows(store, run_id)
    console.print(status_table(store, run_id, rows=rows))
    return rows


def status_table(store: ObjectStore, run_id: str, rows: list[dict[str, Any]] | None = None,
                 cache: CheckCache | None = None) -> Table:
    info = read_run(store, run_id)
    rows = partition_rows(store, run_id, cache) if rows is None else rows
    table = Table(title=f"run {run_id} ({info.get('status')}) in {store.url}")
    on_gpu = any(r["gpu_busy"] is not None for r in rows)  # NVML figures only exist on a GPU
    columns = ["partition", "status", "attempts", "records", "rejects", "output tokens", "tokens/s",
               *(["gpu busy"] if on_gpu else []), "later stages", "error"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("partition", "status", "later stages", "error") else "right")
    for r in rows:
        gpu = [f"{r['gpu_busy']:.0%}" if r["gpu_busy"] is not None else ""] if on_gpu else []
        table.add_row(r["partition"], r["status"], str(r["attempts"]), str(r["records"]), str(r["rejects"]),
                      str(r["output_tokens"]), f"{r['tokens_per_s']:.1f}", *gpu, r["stages"], r["error"][:60])
    tokens = sum(r["output_tokens"] for r in rows)
    gen_s = sum(
        r["output_tokens"] / r["tokens_per_s"] for r in rows if r["tokens_per_s"]
    )
    committed = sum(r["status"] == "committed" for r in rows)
    table.add_section()
    table.add_row("total", f"{committed}/{len(rows)} committed", "", str(sum(r["records"] for r in rows)),
                  str(sum(r["rejects"] for r in rows)), str(tokens),
                  f"{tokens / gen_s:.1f}" if gen_s else "0.0", *([""] if on_gpu else []), "", "")
    return table
