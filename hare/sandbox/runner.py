"""Run generated code with its own asserts under OS isolation: the code kind's validation.

The code is the model's, so it is treated as hostile. Each snippet runs in a fresh interpreter
inside bubblewrap (hare/sandbox/bwrap.py: user, PID, mount, network, IPC, UTS and cgroup
namespaces; a seccomp filter, hare/sandbox/seccomp.py; the interpreter and standard library
read-only and nothing else of the host; an empty environment; a size-capped tmpfs as its
folder), with rlimits on memory, CPU, file size and process count set before its first line
(hare/sandbox/child.py). At the time limit bwrap is killed and with it the whole namespace;
stdout and stderr are read up to a byte cap (more kills it); the isolation facts in the result
come from this process, which built the command, never from the child.

``isolation="none"`` (``validation.code.isolation: none``, on purpose only) runs the same stub in
a plain child process with the same rlimits and no other isolation: for a machine you throw away.
Python's audit hooks are not a sandbox (their own docs say so) and are not used.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hare.sandbox.bwrap import STUB_SOURCE, SandboxUnavailable, bwrap_launch, namespace_init_pid
from hare.sandbox.seccomp import SeccompUnavailable


@dataclass
class SandboxResult:
    """What running one snippet came to; ``status`` is ``passed``, ``failed``, ``timeout``,
    ``memory``, ``output_limit`` or ``syntax``."""

    status: str
    returncode: int | None
    seconds: float
    error: str = ""                      # the last line of stderr (the exception), or why
    isolation: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def count_asserts(code: str) -> int | None:
    """``assert`` statements in ``code`` (its own checks), or None when it does not parse.

    A pathological snippet (100k nested operators) exhausts the parser's recursion or memory:
    that is "does not parse" too, never an exception out of the validate stage."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    return sum(isinstance(node, ast.Assert) for node in ast.walk(tree))


@functools.lru_cache(maxsize=1)
def isolation_problem() -> str | None:
    """None when snippets can run under bwrap here, else one phrase saying why and what to
    install. Tried for real (a snippet that does nothing), once per process."""
    try:
        result = run_code("pass\n", time_limit_s=30.0)
    except (SandboxUnavailable, SeccompUnavailable) as exc:
        return str(exc)
    if result.status != "passed":
        return f"bubblewrap cannot isolate code here ({result.error or result.status}): user namespaces must be allowed"
    return None


def run_code(code: str, time_limit_s: float = 5.0, memory_mb: int = 512, file_mb: int = 16, *,
             isolation: str = "bwrap", max_processes: int = 16, tmpfs_mb: int = 64,
             output_kb: int = 64) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox and report how it went.

    ``passed``: exit code 0 (its asserts held). ``timeout``: still running at ``time_limit_s``
    (the namespace is killed) or out of CPU seconds. ``memory``: a MemoryError under the
    address-space limit. ``output_limit``: more than ``output_kb`` on stdout or stderr (killed).
    ``syntax``: it does not parse (nothing is run). Else ``failed`` with the last stderr line.
    Raises :class:`SandboxUnavailable` / ``SeccompUnavailable`` when bwrap cannot be set up at
    all (a machine problem, refused at config load), never for anything the snippet does."""
    started = time.perf_counter()
    if count_asserts(code) is None:
        return SandboxResult("syntax", None, 0.0, "SyntaxError: the code does not parse")
    limits = {"memory_mb": memory_mb, "cpu_s": max(1, int(time_limit_s) + 1), "file_mb": file_mb,
              "max_processes": max_processes}
    with tempfile.TemporaryDirectory(prefix="hare-sandbox-") as scratch:
        if isolation == "none":
            Path(scratch, "main.py").write_text(code, encoding="utf-8", errors="surrogatepass")
            argv = [os.path.realpath(sys._base_executable), "-I", "-S", str(STUB_SOURCE), json.dumps(limits), scratch]
            fds: list[int] = []
            user, info_fd = None, None
            report = {"isolation": "none", "limits": limits}
        else:
            launch = bwrap_launch(code, limits, tmpfs_mb)
            argv, fds, user, report, info_fd = launch.argv, launch.fds, launch.user, launch.report, launch.info_fd
        try:
            proc = subprocess.Popen(argv, cwd=scratch, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True,
                                    **({"user": user, "group": user, "extra_groups": []} if user is not None else {}))
        finally:
            for fd in fds:
                os.close(fd)
        try:
            _, err, ended = _collect(proc, started + time_limit_s, output_kb * 1024, info_fd)
        finally:
            if info_fd is not None:
                os.close(info_fd)
    seconds = round(time.perf_counter() - started, 3)
    last = next((ln for ln in reversed(err.decode("utf-8", "replace").splitlines()) if ln.strip()), "")[:300]
    if ended == "timeout":
        return SandboxResult("timeout", None, seconds, f"killed after {time_limit_s:g} s", report)
    if ended == "output_limit":
        return SandboxResult("output_limit", None, seconds, f"more than {output_kb} KB of output: killed", report)
    rc = proc.returncode
    if rc == 0:
        return SandboxResult("passed", 0, seconds, "", report)
    if last.startswith("MemoryError"):
        return SandboxResult("memory", rc, seconds, last, report)
    if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxResult("timeout", rc, seconds, "CPU time limit", report)
    return SandboxResult("failed", rc, seconds, last or f"exit code {rc}", report)


def _collect(proc: subprocess.Popen, deadline: float, cap: int, info_fd: int | None) -> tuple[bytes, bytes, str]:
    """Read the child's stdout and stderr until both close, keeping at most ``cap`` bytes of
    each. Returns (stdout, stderr, how it ended: ``exited``, ``timeout`` or ``output_limit``).
    At the deadline or past the cap the whole sandbox is killed (bwrap, and with it every
    process of its namespace), so a grandchild holding the pipe cannot keep us waiting."""
    assert proc.stdout is not None and proc.stderr is not None
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    seen = {proc.stdout: 0, proc.stderr: 0}
    ended = "exited"
    with selectors.DefaultSelector() as sel:
        for stream in kept:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                ended = "timeout"
                break
            for key, _ in sel.select(timeout=min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = kept[key.fileobj]  # type: ignore[index]
                buf += chunk[: max(0, cap - len(buf))]
                seen[key.fileobj] += len(chunk)  # type: ignore[index]
                if seen[key.fileobj] > cap:  # type: ignore[index]
                    ended = "output_limit"
            if ended != "exited":
                break
    if ended != "exited":
        _kill(proc, info_fd)
    else:
        try:
            proc.wait(timeout=max(0.1, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            ended = "timeout"
            _kill(proc, info_fd)
    for stream in kept:
        stream.close()
    return bytes(kept[proc.stdout]), bytes(kept[proc.stderr]), ended


def _kill(proc: subprocess.Popen, info_fd: int | None) -> None:
    """Kill the whole sandbox and return only when nothing of it runs any more.

    bwrap: SIGKILL the namespace's init (its host PID from --info-fd); the kernel then kills
    every process in the namespace, and bwrap exits once its init is gone, so waiting for bwrap
    is waiting for the last of them. Killing bwrap first would return while they still die.
    ``none`` mode, or a bwrap that never started its init: SIGKILL the process group."""
    init_pid = namespace_init_pid(info_fd) if info_fd is not None else None
    if init_pid is not None:
        try:
            os.kill(init_pid, signal.SIGKILL)
            proc.wait(timeout=5)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.kill()
    proc.wait()
