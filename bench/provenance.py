"""Where a benchmark figure comes from: the fields every ``bench/results/*.json`` carries.

``provenance()`` returns ``date`` (UTC, ISO), ``machine`` (host, CPU, cores, memory, GPU if
any), ``command`` (how this process was started, relative to the repository root) and
``git_revision`` (``HEAD``, with ``-dirty`` when tracked files differ from it). The docs quote
figures from these files only (tests/test_docs_figures.py checks the files the docs cite).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("date", "machine", "command", "git_revision")
ENV_PREFIXES = ("OMP_", "MKL_", "KMP_", "VLLM_CPU_", "CUDA_VISIBLE_DEVICES")


def git_revision(root: Path = ROOT) -> str:
    """``HEAD``'s hash, ``-dirty`` when tracked files are modified; ``unknown`` outside git."""
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
        return round(kib / 2 ** 20, 1)
    except (OSError, StopIteration):
        return None


def machine() -> dict[str, Any]:
    """The machine, in fields: host, cpu, cores, memory, load average at the start."""
    out: dict[str, Any] = {"host": platform.node(), "cpu": _cpu_name(), "cores": os.cpu_count(),
                           "memory_gib": _mem_gib(), "python": platform.python_version()}
    try:
        out["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return out


def command(argv: list[str] | None = None) -> str:
    """This process's command line, the way to type it again from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    exe = sys.executable
    try:
        exe = os.path.relpath(exe, ROOT) if Path(os.path.abspath(exe)).is_relative_to(ROOT) else exe
    except ValueError:
        pass
    first = argv[0] if argv else ""
    if first.endswith(".py") and Path(first).resolve().is_relative_to(ROOT / "bench"):
        mod = "bench." + Path(first).stem
        return " ".join(["PYTHONPATH=.", exe, "-m", mod, *map(shlex.quote, argv[1:])])
    return " ".join([exe, *map(shlex.quote, argv)])


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The four fields (see the module docstring), to be merged at the top of a results file."""
    out = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
           "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "command": command(argv), "git_revision": git_revision()}
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    if env:  # threading settings change speed, so they travel with the figures
        out["env"] = env
    return out
