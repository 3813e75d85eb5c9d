"""A run's outcome, recorded in one place: run.json's status and the run's lineage event.

The flow's body runs inside :func:`run_outcome`; whatever ends it decides the status, so no
step of the DAG records a failure itself:

- the body finishes and called :meth:`Outcome.succeeded`: ``succeeded`` with the run's totals;
- :class:`RunIncomplete` (some partitions failed, the others are committed): ``incomplete``,
  naming the failed partitions and why;
- any other error (engines that could not start, Ray gone, a global stage failing): ``failed``
  with the error; the manifests say which partition, and a resume redoes it.

A Ctrl-C is not an error of the run: it passes through, and the driver (flows/driver.py) marks
run.json ``interrupted``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hare.store import lineage
from hare.store.runs import finish_run
from hare.store import ObjectStore


class RunIncomplete(RuntimeError):
    """Some partitions failed; the run can be resumed with the same run id."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class Outcome:
    """What the body of a run reports at its end: its totals."""

    def __init__(self) -> None:
        self.totals: dict[str, Any] | None = None

    def succeeded(self, totals: dict[str, Any]) -> None:
        self.totals = totals


@contextlib.contextmanager
def run_outcome(store: ObjectStore, run_id: str) -> Iterator[Outcome]:
    """Record how the run inside ended (module docstring)."""
    outcome = Outcome()
    try:
        yield outcome
    except RunIncomplete as exc:
        _finish(store, run_id, "incomplete", exc.summary)
        raise
    except Exception as exc:
        _finish(store, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        raise
    if outcome.totals is None:
        raise RuntimeError(f"run {run_id}: the flow ended without its totals (Outcome.succeeded was not called)")
    finish_run(store, run_id, "succeeded", outcome.totals)
    lineage.emit(store, run_id, "synthesize", "COMPLETE", facets={"totals": outcome.totals})


def _finish(store: ObjectStore, run_id: str, status: str, summary: dict[str, Any]) -> None:
    finish_run(store, run_id, status, summary)
    lineage.emit(store, run_id, "synthesize", "FAIL", facets=summary)
