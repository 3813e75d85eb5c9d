"""The sandbox's child process: set the limits, then run the generated code (hare/sandbox.py).

Run as a script (``python -I sandbox_child.py LIMITS_JSON``) in a fresh single-threaded process,
never imported by a worker: the generated code runs only here. Before the code runs, in this
order: a network namespace of its own (no interface but a down loopback; needs CAP_SYS_ADMIN,
so root or a user namespace), resource limits (address space, CPU seconds, file size, open
files, no core files), the uid of ``nobody`` when that user can run this interpreter, and a
PEP 578 audit hook that refuses sockets, new processes, native libraries (ctypes) and any write,
rename or delete outside the working directory. The code then runs as ``__main__`` from
``main.py`` in the working directory. What was applied is written to ``_sandbox.json`` there first.
"""

from __future__ import annotations

import json
import os
import sys

CLONE_NEWNET = 0x40000000
NOBODY = 65534
REPORT = "_sandbox.json"


def _unshare_net() -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.unshare(CLONE_NEWNET) == 0
    except Exception:  # noqa: BLE001 - no libc unshare, or not permitted: the audit hook still refuses
        return False


def _limits(limits: dict) -> None:
    import resource

    mem = int(limits["memory_mb"]) * 1024 * 1024
    cpu = int(limits["cpu_s"])
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                       (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * 1024 * 1024),
                       (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))


def _others_can_read(path: str) -> bool:
    """Whether a user with no rights of its own (``nobody``) can reach and read ``path``."""
    import stat

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


def _drop_uid(workdir: str) -> bool:
    """Become ``nobody`` when running as root and that user can still run this interpreter
    and read its standard library and site-packages (not where Python lives under /root)."""
    import sysconfig

    needed = [sys.executable, sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
    if os.geteuid() != 0 or not all(_others_can_read(p) for p in needed):
        return False
    try:
        os.chown(workdir, NOBODY, NOBODY)
        for name in os.listdir(workdir):
            os.chown(os.path.join(workdir, name), NOBODY, NOBODY)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        return True
    except OSError:
        return False


def _guard(workdir: str) -> None:
    """Refuse what a snippet has no business doing, whatever module it goes through."""
    root = os.path.realpath(workdir)
    refused_prefixes = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                        "os.forkpty", "os.system", "pty.", "ctypes.", "webbrowser.", "urllib.Request")
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod",
                   "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "os.removexattr",
                   "os.setxattr"}

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an fd opened earlier (already checked when it was opened)
            return True
        try:
            p = os.fsdecode(path)  # type: ignore[arg-type]
        except TypeError:
            return False
        full = os.path.realpath(os.path.join(root, p))
        return full == root or full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(refused_prefixes):
            raise PermissionError(f"sandbox: {event} refused")
        if event == "open" and args and args[0] is not None:
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and not inside(args[0]):
                raise PermissionError(f"sandbox: writing {args[0]!r} outside the working directory refused")
        elif event in path_events:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the working directory refused")

    sys.addaudithook(hook)


def main() -> None:
    limits = json.loads(sys.argv[1])
    workdir = os.getcwd()
    applied = {"network_namespace": _unshare_net()}
    _limits(limits)
    applied["uid_nobody"] = _drop_uid(workdir)
    with open(os.path.join(workdir, REPORT), "w") as report:
        report.write(json.dumps(applied))
    import runpy

    sys.argv = ["main.py"]
    sys.path.insert(0, workdir)
    _guard(workdir)
    runpy.run_path(os.path.join(workdir, "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
