"""Live progress of a run in the terminal (``hare run``), read from the store's manifests.

Why the store and not the flow's futures: the manifests are the truth (a partition is done
when its manifest commits), they exist whatever runs the stages (this driver, a retry, a
deployment), and reading them needs nothing from Prefect or Ray. A thread polls them about
once a second and redraws a rich progress view: partitions generated / total, records kept so
far, output tokens/s (per endpoint, for a run against OpenAI-compatible endpoints: the rate is
the server's, and no GPU figure is shown, the GPUs being the server's), ETA, then each later
stage as it goes.

While the view is up, everything else the process and its children print (Prefect's log
lines, Ray's, vLLM's) goes to a log file instead of the terminal (:func:`output_to_file`),
so the bar is never mixed with log lines; ``hare run --verbose`` shows the logs instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from hare.store.manifest import PartitionManifest, kept_records
from hare.store.manifest_index import load_manifests
from hare.store.layout import dataset_manifest_key, diversity_key, run_json
from hare.store import KeyNotFound, ObjectStore, StoreError


@dataclass
class Snapshot:
    """What the view shows at one moment; every figure comes from committed manifests."""

    partitions: int = 0
    generated: int = 0          # generation commits (this driver's and earlier ones)
    generated_now: int = 0      # committed since this view started (they carry the tok/s)
    failed: list[str] = field(default_factory=list)
    output_tokens_now: int = 0
    endpoint_tokens_now: dict[str, int] = field(default_factory=dict)  # endpoint -> output tokens, same window
    records_kept: int = 0       # records of each dataset partition after its furthest stage
    stages: dict[str, int] = field(default_factory=dict)  # later stage -> partitions committed
    dataset_partitions: int = 0
    diversity_done: bool = False
    published: bool = False
    run_status: str = "starting"


class RunWatcher:
    """Reads a run's manifests through the manifest index (hare/store/manifest_index.py)."""

    def __init__(self, store: ObjectStore, run_id: str, later_stages: list[str],
                 index_every_s: float = 10.0) -> None:
        self.store, self.run_id, self.later_stages = store, run_id, later_stages
        self.started_at = time.time() - 1.0  # manifest times are cut to the millisecond
        self.index_every_s = index_every_s
        self._index_written = 0.0

    def _manifests(self) -> dict[str, PartitionManifest]:
        """One listing and the manifest index; GETs only for manifests new or changed since the
        index was written, which this driver refreshes every ``index_every_s``."""
        write = time.monotonic() - self._index_written >= self.index_every_s
        out = load_manifests(self.store, self.run_id, write_back=write)
        if write:
            self._index_written = time.monotonic()
        return out

    def snapshot(self) -> Snapshot:
        import json

        snap = Snapshot()
        try:
            info = json.loads(self.store.get_bytes(run_json(self.run_id)))
        except KeyNotFound:
            return snap
        snap.run_status = info.get("status", "?")
        planned = info.get("partitions", [])
        dataset = [p for p in planned if not p.startswith("b")]
        snap.partitions, snap.dataset_partitions = len(planned), len(dataset)
        by_stage: dict[str, dict[str, PartitionManifest]] = {}
        for m in self._manifests().values():
            by_stage.setdefault(m.stage, {})[m.partition_id] = m
        gen = by_stage.get("generate", {})
        for pid, m in gen.items():
            if m.status == "succeeded":
                snap.generated += 1
                if _epoch(m.finished_at) >= self.started_at:
                    snap.generated_now += 1
                    snap.output_tokens_now += int(m.stats.get("output_tokens", 0))
                    if m.stats.get("endpoint"):
                        key = str(m.stats["endpoint"])
                        snap.endpoint_tokens_now[key] = (snap.endpoint_tokens_now.get(key, 0)
                                                         + int(m.stats.get("output_tokens", 0)))
            else:
                snap.failed.append(pid)
        for st in self.later_stages:
            snap.stages[st] = sum(1 for m in by_stage.get(st, {}).values() if m.status == "succeeded")
        for pid in dataset:
            for st in ["generate", *self.later_stages][::-1]:
                m = by_stage.get(st, {}).get(pid)
                if m is not None and m.status == "succeeded":
                    snap.records_kept += kept_records(m.stats)
                    break
        snap.diversity_done = self._exists(diversity_key(self.run_id))
        snap.published = self._exists(dataset_manifest_key(self.run_id))
        return snap

    def _exists(self, key: str) -> bool:
        try:
            return self.store.exists(key)
        except StoreError:
            return False


def _epoch(iso: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _bar(done: int, total: int, width: int = 24) -> str:
    filled = int(width * done / total) if total else 0
    return "[green]" + "━" * filled + "[/green][grey37]" + "━" * (width - filled) + "[/grey37]"


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rates(snap: Snapshot, elapsed: float, unit: str = "output tok/s") -> str:
    """Output tokens/s since the view started: one figure, or one per endpoint (``12.5 tok/s at
    http://host:8000/v1``) when the partitions name the endpoints they were sent to."""
    def rate(tokens: int) -> float:
        return tokens / elapsed if elapsed > 0 else 0.0

    if snap.endpoint_tokens_now:
        return ", ".join(f"{rate(n):,.1f} tok/s at {k}" for k, n in sorted(snap.endpoint_tokens_now.items()))
    return f"{rate(snap.output_tokens_now):,.1f} {unit}"


def render(snap: Snapshot, elapsed: float, title: str) -> Table:
    """The view: one row per stage; generation carries the throughput and the ETA."""
    table = Table.grid(padding=(0, 2))
    table.title = title
    left = snap.partitions - snap.generated - len(snap.failed)
    eta = (elapsed / snap.generated_now * left) if snap.generated_now and left > 0 else None
    if not snap.partitions:
        gen_note = "planning, starting Ray and the engines…"
    else:
        gen_note = (f"{snap.records_kept} records kept so far · {_rates(snap, elapsed)} · "
                    + (f"ETA {_clock(eta)}" if eta is not None else ("done" if left == 0 else "ETA …")))
    if snap.failed:
        gen_note += f" · [red]{len(snap.failed)} failed[/red]"
    table.add_row("generate", _bar(snap.generated, snap.partitions),
                  f"{snap.generated}/{snap.partitions} partitions", gen_note)
    for st, done in snap.stages.items():
        table.add_row(st, _bar(done, snap.dataset_partitions), f"{done}/{snap.dataset_partitions} partitions", "")
    for name, done in (("diversity", snap.diversity_done), ("publish", snap.published)):
        table.add_row(name, _bar(int(done), 1), "done" if done else "waiting", "")
    table.add_row("", "", f"elapsed {_clock(elapsed)}", f"run {snap.run_status}")
    return table


def plain_line(snap: Snapshot, elapsed: float) -> str:
    """One line for a terminal that is not interactive (CI logs): printed when something changes."""
    later = " ".join(f"{st} {n}/{snap.dataset_partitions}" for st, n in snap.stages.items())
    extra = " diversity done" if snap.diversity_done else ""
    extra += " published" if snap.published else ""
    failed = f" ({len(snap.failed)} failed)" if snap.failed else ""
    return (f"[{_clock(elapsed)}] generate {snap.generated}/{snap.partitions}{failed} · "
            f"{snap.records_kept} kept · {_rates(snap, elapsed, 'tok/s')} · {later}{extra}").rstrip()


class ProgressView:
    """A thread that redraws :func:`render` (or prints :func:`plain_line`) until stopped."""

    def __init__(self, watcher: RunWatcher, console: Console, interval_s: float = 1.0) -> None:
        self.watcher, self.console, self.interval_s = watcher, console, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hare-progress", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> "ProgressView":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _snap(self) -> Snapshot | None:
        try:
            return self.watcher.snapshot()
        except StoreError:
            return None  # a store hiccup: the run's own retries deal with it; show the last view

    def _loop(self) -> None:
        title = f"hare run {self.watcher.run_id} (log lines: {log_path(self.watcher.run_id)})"
        if self.console.is_terminal:  # transient: the final status table replaces the view
            with Live(render(Snapshot(), 0.0, title), console=self.console, refresh_per_second=4,
                      transient=True) as live:
                while True:
                    stopping = self._stop.wait(self.interval_s)
                    snap = self._snap()
                    if snap is not None:
                        live.update(render(snap, time.monotonic() - self._started, title))
                    if stopping:
                        return
        last: tuple[Any, ...] = ()
        while True:
            stopping = self._stop.wait(self.interval_s)
            snap = self._snap()
            if snap is not None and snap.partitions:  # nothing to say before the plan exists
                counts = (snap.generated, len(snap.failed), tuple(snap.stages.values()), snap.diversity_done,
                          snap.published)
                if counts != last:  # a line when a commit lands, not every second
                    self.console.print(plain_line(snap, time.monotonic() - self._started), highlight=False,
                                       soft_wrap=True)
                    last = counts
            if stopping:
                return


@contextlib.contextmanager
def output_to_file(path: Path) -> Iterator[IO[str]]:
    """Send this process's stdout/stderr (file descriptors 1 and 2, so also what Prefect, Ray
    and every child process print) to ``path``; yield a stream to the real terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log_fd):
            os.close(fd)
        terminal.close()


def log_path(run_id: str) -> Path:
    """Where ``hare run`` writes its log lines: $HARE_LOG_DIR or .hare/logs, one file a run."""
    return Path(os.environ.get("HARE_LOG_DIR", ".hare/logs")).resolve() / f"{run_id}.log"


@contextlib.contextmanager
def terminal_view(store: ObjectStore, run_id: str, later_stages: list[str], enabled: bool) -> Iterator[None]:
    """The progress view, with every log line (the driver's, and the Ray workers' that Ray
    forwards to the driver) in a file, when ``enabled``. The log file is copied into the run
    folder of the store at the end (``runs/<run_id>/logs/hare-run.log``)."""
    if not enabled:
        yield
        return
    from hare.store.layout import run_log_key

    path = log_path(run_id)
    with output_to_file(path) as terminal:
        console = Console(file=terminal)
        console.width = max(console.width, 100)
        try:
            with ProgressView(RunWatcher(store, run_id, later_stages), console):
                yield
        finally:  # only into a run that exists: a start-up failure leaves the store untouched
            with contextlib.suppress(StoreError, OSError):
                if store.exists(run_json(run_id)):
                    store.put_bytes(run_log_key(run_id), path.read_bytes())
