"""Run generated code with its own asserts, away from the worker: the code kind's validation.

Why a child process and not ``exec``: generated code may loop forever, allocate without end,
write files, open sockets or call ``sys.exit``; in the worker's process any of that would take
the partition (or the Ray worker) with it. Each snippet runs in a fresh interpreter
(``python -I``, no user site, no environment of ours) in a throwaway temporary directory,
in its own session so the whole process group is killed at the time limit. The child
(hare/sandbox_child.py) applies the limits before the code runs: its own network namespace where
the kernel allows (root or a user namespace; tested here: `unshare -n` works as root), address
space / CPU / file-size limits, the ``nobody`` uid where that user can run the interpreter, and a
PEP 578 audit hook that refuses sockets, new processes, ctypes and writes outside its folder
(the layer that holds everywhere, also where namespaces are not permitted).

This contains accidents of a small model's snippets (loops, huge lists, stray writes, a
``requests.get``); it is not a boundary for hostile code, which wants a container or gVisor.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHILD = Path(__file__).resolve().parent / "sandbox_child.py"


@dataclass
class SandboxResult:
    """What running one snippet came to; ``status`` is ``passed``, ``failed``, ``timeout``,
    ``memory`` or ``syntax``."""

    status: str
    returncode: int | None
    seconds: float
    error: str = ""                      # the last line of stderr (the exception), or why
    isolation: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def count_asserts(code: str) -> int | None:
    """``assert`` statements in ``code`` (its own checks), or None when it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return None
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


def run_code(code: str, time_limit_s: float = 5.0, memory_mb: int = 512, file_mb: int = 16) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a sandboxed child process and report how it went.

    ``passed``: exit code 0 (its asserts held). ``timeout``: still running at ``time_limit_s``
    (the process group is SIGKILLed). ``memory``: a MemoryError under the address-space limit.
    ``syntax``: it does not parse (nothing is run). Else ``failed`` with the last stderr line."""
    started = time.perf_counter()
    if count_asserts(code) is None:
        return SandboxResult("syntax", None, 0.0, "SyntaxError: the code does not parse")
    limits = {"memory_mb": memory_mb, "cpu_s": max(1, int(time_limit_s) + 1), "file_mb": file_mb}
    with tempfile.TemporaryDirectory(prefix="hare-sandbox-") as workdir:
        Path(workdir, "main.py").write_text(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONHASHSEED": "0", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-I", str(CHILD), json.dumps(limits)], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=time_limit_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, err = proc.communicate()
            timed_out = True
        isolation = _read_isolation(Path(workdir))
    seconds = round(time.perf_counter() - started, 3)
    last = next((ln for ln in reversed(err.decode("utf-8", "replace").splitlines()) if ln.strip()), "")[:300]
    if timed_out:
        return SandboxResult("timeout", None, seconds, f"killed after {time_limit_s:g} s", isolation)
    if proc.returncode == 0:
        return SandboxResult("passed", 0, seconds, "", isolation)
    if last.startswith("MemoryError") or proc.returncode == -signal.SIGKILL and "Memory" in last:
        return SandboxResult("memory", proc.returncode, seconds, last, isolation)
    if proc.returncode == -signal.SIGXCPU:
        return SandboxResult("timeout", proc.returncode, seconds, "CPU time limit", isolation)
    return SandboxResult("failed", proc.returncode, seconds, last or f"exit code {proc.returncode}", isolation)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_isolation(workdir: Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / "_sandbox.json").read_text())
    except (OSError, ValueError):
        return {}
