"""The driver of ``hare run`` and ``hare rerun``: what wraps a flow run in this process.

Before anything starts, a resume whose inputs changed or a run id another live driver holds is
one line (:func:`check_resumable`). While the flow runs: Ctrl-C and SIGTERM mark run.json
``interrupted`` and say how to complete the run (:func:`interruptible`), the terminal shows the
live progress view (hare/run/progress.py), and the runtime (the Prefect API, Ray) is up
(hare/run/runtime.py). The flow itself (flows/synthesize.py) knows none of this: a deployment runs
it without a driver.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from hare.config import RunConfig
from hare.tasks.estimate import plan_and_estimate, render_plan
from hare.store.layout import run_json
from hare.store.lease import LeaseHeld, read_lease, run_lease_key
from hare.run.progress import terminal_view
from hare.store.runs import finish_run
from hare.run.runtime import check_store, driver_runtime
from hare.store import open_store
from hare.tasks.plan import check_resume_inputs
from hare.tasks.stages import stage_names


class RunInterrupted(RuntimeError):
    """The driver was interrupted (Ctrl-C); what was committed stays, `hare rerun` completes it."""


def check_resumable(cfg: RunConfig, run_id: str, allow_changed_inputs: bool) -> None:
    """Before anything starts: a resume whose input files changed (RunError naming them), or a
    run id another live process holds (LeaseHeld naming it), is one line and exit 2."""
    check_store(cfg.store.url)  # first: an unreachable store is one line (short budget), not retries
    store = open_store(cfg.store.url)
    check_resume_inputs(store, cfg, run_id, allow_changed_inputs, write=False)
    holder = read_lease(store, run_lease_key(run_id))
    if holder is not None and holder.live():
        raise LeaseHeld(f"run {run_id} is held by {holder.describe()}; wait for it to finish, "
                        f"or if it crashed, start again after its lease expires", holder)


@contextlib.contextmanager
def driver(cfg: RunConfig, run_id: str, progress: bool) -> Iterator[None]:
    """What a driver command wraps a flow in: Ctrl-C handling, the terminal view, the runtime."""
    check_store(cfg.store.url)  # before anything starts: an unreachable store is one line, exit 2
    store = open_store(cfg.store.url)
    if progress:  # the dry run's figures first, as `hare plan` prints them
        from rich.console import Console

        Console().print(render_plan(*plan_and_estimate(cfg), compact=True))
    with (interruptible(cfg, run_id),
          terminal_view(store, run_id, stage_names(cfg)[1:], progress),
          driver_runtime(cfg)):
        yield


@contextlib.contextmanager
def interruptible(cfg: RunConfig, run_id: str) -> Iterator[None]:
    """Ctrl-C: mark run.json interrupted (if the run had started) and say how to complete it.
    Nothing committed is touched: partitions commit data first, manifest last.

    The KeyboardInterrupt can land anywhere, also inside a library that wraps it in its own
    error (pydantic serialising a task's context, seen here), so the SIGINT itself is noted and
    whatever error follows it counts as the interruption.
    """
    sigint = threading.Event()
    # SIGTERM (a Kubernetes pod stopped, `kill`) ends the driver the same way: run.json says
    # interrupted and the flow run ends, instead of the process vanishing mid-run.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()

    def note_sigint(signum: int, frame: Any) -> None:
        sigint.set()
        before = previous.get(signal.Signals(signum))
        if callable(before):
            before(signum, frame)
        else:
            raise KeyboardInterrupt

    if in_main:
        for sig in previous:
            signal.signal(sig, note_sigint)
    try:
        yield
    except BaseException as exc:
        if not (sigint.is_set() or caused_by_interrupt(exc)):
            raise
        store = open_store(cfg.store.url)
        started = store.exists(run_json(run_id))
        if started:
            finish_run(store, run_id, "interrupted", {"error": "interrupted (KeyboardInterrupt)"})
        raise RunInterrupted(
            f"interrupted: run {run_id}; committed partitions are kept"
            + (f"; complete it with: hare rerun {run_id} --store {store.url}" if started else "; nothing was started")
        ) from None
    finally:
        if in_main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def caused_by_interrupt(exc: BaseException | None) -> bool:
    """A KeyboardInterrupt, or an error some library raised from one (also when it kept only
    the name in its message), anywhere in the exception chain."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
