"""The bubblewrap command that isolates one snippet: what it binds, what it unshares, and as whom.

Why these choices (docs/sandbox.md has the threat list):

- Namespaces: user, PID, mount, network, IPC, UTS and cgroup (``--unshare-all``), no further
  user namespaces inside (``--disable-userns``), a /proc of its own PID namespace, a minimal
  /dev, and ``--die-with-parent`` + ``--new-session``: when bwrap dies the namespace's init
  dies, and the kernel kills every process left in it, so nothing outlives the time limit.
- Files: only the interpreter, its standard library (site-packages masked by an empty tmpfs,
  so no hare, no credentials module of a venv) and the shared libraries they link against,
  all read-only. The working folder is a size-capped tmpfs; the snippet and the limit-setting
  stub are copied in from memory (memfd), so no host path of ours is visible.
- Who launches it: a worker running as root launches bwrap as ``nobody`` with an empty
  environment and no supplementary groups. Then the launcher holds no secret (its environ is
  empty, its uid owns nothing), the kernel counts the snippet's processes against RLIMIT_NPROC
  (root is exempt from it), and a file bound by mistake is still read as ``nobody``. That
  needs an interpreter ``nobody`` can read: the worker's own when it is world-readable, else
  the system's ``/usr/bin/python3``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hare.sandbox.seccomp import seccomp_bpf

NOBODY = 65534
WORKDIR = "/work"
STUB_PATH = "/opt/hare/child.py"
STUB_SOURCE = Path(__file__).resolve().parent / "child.py"
SYSTEM_PYTHON = "/usr/bin/python3"
NAMESPACES = ("user", "pid", "mount", "net", "ipc", "uts", "cgroup")

_QUERY = ("import json, sys, sysconfig; p = sysconfig.get_paths(); "
          "print(json.dumps({'stdlib': p['stdlib'], 'site': sorted({p['purelib'], p['platlib']}), "
          "'path': sys.path}))")


class SandboxUnavailable(RuntimeError):
    """No OS isolation can be had here; the message says why and what to install."""


@dataclass(frozen=True)
class Interpreter:
    """A Python the sandbox can run: its executable and what must be bound for it to start."""

    executable: str
    ro_paths: tuple[str, ...]           # stdlib folders and shared libraries, bound read-only
    masked: tuple[str, ...]             # site-packages folders inside them, hidden by a tmpfs


def launch_as_nobody() -> bool:
    """Whether bwrap is started as ``nobody`` (the worker is root; see the module docstring)."""
    return os.geteuid() == 0


def _others_can_read(path: str) -> bool:
    """Whether a user with no rights of its own can reach and read ``path`` (every parent +x)."""
    path = os.path.realpath(path)
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == os.path.dirname(parent):
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _shared_libraries(files: list[str]) -> list[str]:
    """Every library ``files`` load (ldd), at the path the loader looks for it and its real one."""
    if not files:
        return []
    out = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=60, env={"LC_ALL": "C"}).stdout
    libs: set[str] = set()
    for line in out.splitlines():
        parts = line.split()
        for token in parts:
            if token.startswith("/") and os.path.exists(token):
                libs.add(token)
                libs.add(os.path.realpath(token))
    return sorted(libs)


@functools.lru_cache(maxsize=4)
def _describe(executable: str) -> Interpreter:
    query = subprocess.run([executable, "-I", "-S", "-c", _QUERY], capture_output=True, text=True,
                           timeout=60, env={})
    if query.returncode != 0:
        raise SandboxUnavailable(f"{executable} does not start: {query.stderr.strip()[-200:]}")
    info = json.loads(query.stdout)
    stdlib = info["stdlib"]
    dirs = sorted({p for p in info["path"] if os.path.isdir(p)} | {stdlib})
    extensions = [str(f) for d in dirs for f in Path(d).glob("*.so")]
    masked = tuple(s for s in info["site"] if os.path.isdir(s) and any(s.startswith(d + os.sep) for d in dirs))
    real = os.path.realpath(executable)
    ro = sorted({executable, real, *dirs, *_shared_libraries([real, *extensions])})
    return Interpreter(executable=real, ro_paths=tuple(ro), masked=masked)


def interpreter() -> Interpreter:
    """The worker's own interpreter where the launcher can read it, else the system python3."""
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    candidates = [base] + ([SYSTEM_PYTHON] if os.path.realpath(SYSTEM_PYTHON) != base else [])
    for exe in candidates:
        if not os.path.exists(exe):
            continue
        if launch_as_nobody() and not _others_can_read(exe):
            continue
        described = _describe(exe)
        if not launch_as_nobody() or all(_others_can_read(p) for p in described.ro_paths):
            return described
    raise SandboxUnavailable(
        f"no Python that uid {NOBODY} can read (tried {', '.join(candidates)}): run the workers as a "
        "non-root user, or install Debian's python3")


def bwrap_path() -> str:
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxUnavailable("bubblewrap is not installed (apt-get install bubblewrap libseccomp2)")
    return exe


@functools.lru_cache(maxsize=1)
def bwrap_version() -> str:
    out = subprocess.run([bwrap_path(), "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or "bubblewrap"


def _memfd(name: str, data: bytes) -> int:
    """A file in memory holding ``data``, read from its start by bwrap (--file, --seccomp)."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class BwrapLaunch:
    """One sandbox start: the argv, the memfds it reads (closed by the caller after Popen), the
    uid/gid to start it as (None: as we are) and the isolation facts the parent reports."""

    argv: list[str]
    fds: list[int]
    user: int | None
    report: dict
    info_fd: int          # read end of bwrap's --info-fd: the namespace init's host PID


def bwrap_launch(code: str, limits: dict[str, int], tmpfs_mb: int) -> BwrapLaunch:
    """Build the bwrap command for ``code`` under ``limits`` (see the module docstring)."""
    interp = interpreter()
    code_fd = _memfd("hare-snippet", code.encode("utf-8", "surrogatepass"))
    stub_fd = _memfd("hare-stub", STUB_SOURCE.read_bytes())
    seccomp_fd = _memfd("hare-seccomp", seccomp_bpf())
    info_r, info_w = os.pipe()
    argv = [bwrap_path(), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
            "--clearenv", "--proc", "/proc", "--dev", "/dev"]
    for path in interp.ro_paths:
        argv += ["--ro-bind", path, path]
    for path in interp.masked:
        argv += ["--tmpfs", path]
    argv += ["--size", str(tmpfs_mb * 1024 * 1024), "--tmpfs", WORKDIR,
             "--file", str(code_fd), f"{WORKDIR}/main.py",
             "--ro-bind-data", str(stub_fd), STUB_PATH,
             "--chdir", WORKDIR, "--seccomp", str(seccomp_fd), "--info-fd", str(info_w),
             "--", interp.executable, "-I", "-S", STUB_PATH, json.dumps(limits), WORKDIR]
    as_nobody = launch_as_nobody()
    report = {"isolation": "bwrap", "tool": bwrap_version(), "namespaces": list(NAMESPACES),
              "seccomp": "deny ptrace,setns,unshare,mount,bpf,keyctl,perf_event_open,... (hare/sandbox/seccomp.py)",
              "launcher_uid": NOBODY if as_nobody else os.geteuid(), "environment": "empty",
              "filesystem": f"interpreter + stdlib read-only, {tmpfs_mb} MB tmpfs at {WORKDIR}",
              "interpreter": interp.executable, "limits": {**limits, "tmpfs_mb": tmpfs_mb}}
    return BwrapLaunch(argv=argv, fds=[code_fd, stub_fd, seccomp_fd, info_w], user=NOBODY if as_nobody else None,
                       report=report, info_fd=info_r)


def namespace_init_pid(info_fd: int, wait_s: float = 1.0) -> int | None:
    """The host PID of the sandbox's PID-namespace init, from bwrap's --info-fd (None when bwrap
    never got that far). Killing it makes the kernel kill every process of the namespace."""
    import select

    chunks = b""
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0 and select.select([info_fd], [], [], left)[0]:
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        chunks += chunk
        try:
            return int(json.loads(chunks)["child-pid"])
        except (ValueError, KeyError):
            continue
    return None
