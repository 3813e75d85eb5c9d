"""Processes as the kernel sees them (Linux /proc): who is alive, who started whom, and a
watchdog so that what a driver starts never outlives it.

Why: a SIGKILLed driver runs no ``finally``. Ray's core processes share its fate, but Prefect's
temporary API server and Ray's dashboard / runtime-env agents do not (measured: the server ran
on for minutes; the agents outlived the driver by more than 30 s on a busy machine). A lease
also needs to know whether its holder process still runs (hare/store/lease.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" when there is no such process):
    with the pid it names one process, so a reused pid is not mistaken for the one we knew."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` right now (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# Waits (pidfd, no polling) for the driver to end; then SIGTERMs each process it was handed that
# is still the same process (pid + start time), and SIGKILLs what is left after 5 s. It ends by
# itself once every one of them is gone.
_WATCHDOG = """
import os, select, signal, sys, time
def start(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
driver = int(sys.argv[1])
tied = [(int(p), s) for p, s in (a.split(":") for a in sys.argv[2:])]
try:
    select.select([os.pidfd_open(driver)], [], [])
except OSError:
    pass
for sig in (signal.SIGTERM, signal.SIGKILL):
    alive = [p for p, s in tied if start(p) == s]
    for p in alive:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    for _ in range(50):
        if not any(start(p) == s for p, s in tied):
            sys.exit(0)
        time.sleep(0.1)
"""


_WATCHDOGS: set[int] = set()   # ours: never handed to another watchdog, which would stop it first


def tie_to_this_process(pids: set[int] | list[int]) -> None:
    """Stop ``pids`` when this process ends, however it ends (a SIGKILL included), by a tiny
    watchdog in its own session (so a Ctrl-C of the driver's group does not stop it first)."""
    tied = [f"{p}:{s}" for p in sorted(set(pids) - _WATCHDOGS) if (s := process_start(p))]
    if not tied:
        return
    watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), *tied],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    _WATCHDOGS.add(watchdog.pid)
