"""``hare status``: a run's partitions and totals, read only from the store (the truth)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hare.manifest import read_manifest, verify_outputs
from hare.runs import read_run
from hare.store import ObjectStore


def partition_rows(store: ObjectStore, run_id: str) -> list[dict[str, Any]]:
    """One row per planned partition; ``committed`` only for a manifest whose objects verify."""
    info = read_run(store, run_id)
    stages = [st for st in ("quality", "decontam", "dedup")
              if any(k.endswith(f".{st}.json") for k in store.list(f"runs/{run_id}/partitions/"))]
    rows = []
    for pid in info.get("partitions", []):
        m = read_manifest(store, run_id, pid)
        if m is None:
            status, stats, attempts, error = "pending", {}, 0, ""
        else:
            stats, attempts, error = m.stats, m.attempts, m.error or ""
            status = m.status
            if status == "succeeded":
                problem = verify_outputs(store, m)
                status, error = ("committed", "") if problem is None else ("corrupt", problem)
        later = []
        for st in stages:
            lm = read_manifest(store, run_id, pid, st)
            if lm is not None:
                later.append(st if lm.status == "succeeded" else f"{st}:{lm.status}")
        rows.append({"partition": pid, "status": status, "attempts": attempts, "stages": ",".join(later),
                     "records": stats.get("records", 0), "rejects": stats.get("rejects", 0),
                     "output_tokens": stats.get("output_tokens", 0),
                     "tokens_per_s": stats.get("output_tokens_per_s", 0.0),
                     "seconds": stats.get("seconds", 0.0), "gpu_busy": stats.get("gpu_busy_fraction"),
                     "error": error})
    return rows


def watch_status(store: ObjectStore, run_id: str, interval: float = 5.0, max_seconds: float | None = None) -> str:
    """Redraw the table every ``interval`` s while run.json says running; returns the final status."""
    import time

    from rich.live import Live

    started = time.monotonic()
    with Live(status_table(store, run_id), refresh_per_second=1, transient=True) as live:
        while read_run(store, run_id).get("status") == "running":
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
            time.sleep(interval)
            live.update(status_table(store, run_id))
    return read_run(store, run_id).get("status", "?")


def render_status(store: ObjectStore, run_id: str, console: Console | None = None) -> list[dict[str, Any]]:
    if console is None:
        console = Console()
        console.width = max(console.width, 120)  # a piped/CI console defaults to 80 columns
    console.print(status_table(store, run_id))
    return partition_rows(store, run_id)


def status_table(store: ObjectStore, run_id: str) -> Table:
    info = read_run(store, run_id)
    rows = partition_rows(store, run_id)
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
