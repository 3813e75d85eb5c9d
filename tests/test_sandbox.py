"""The code sandbox, tried as an attacker would: every snippet goes through ``run_snippet``, the
very function the validate stage calls, and each test asserts that the *effect* did not happen
(the file is absent, the listener received nothing, the parent got no signal, nothing outlived
the limit), not only that the snippet failed. docs/sandbox.md lists the classes."""

from __future__ import annotations

import os
import platform
import pwd
import signal
import socket
import sys
import sysconfig
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from hare.config import CodeCheckConfig
from hare.sandbox.runner import count_asserts, isolation_problem
from hare.sandbox.bwrap import NOBODY
from hare.tasks.validate import run_snippet

LIMITS = CodeCheckConfig(time_limit_s=3.0)
SLACK_S = 1.0   # "the wall time stayed within the limit plus 1 s"


def run(code: str, **limits: Any) -> Any:
    return run_snippet(code, LIMITS.model_copy(update=limits))


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A host folder anyone may write: only the sandbox can keep a snippet out of it."""
    tmp_path.chmod(0o777)
    return tmp_path


@pytest.fixture()
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP listener on 127.0.0.1 that records whatever reaches it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            got.append(b"connected:" + conn.recv(100))
            conn.close()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield server.getsockname()[1], got
    stop.set()
    t.join()
    server.close()


def processes_with(marker: str) -> list[int]:
    """Host PIDs whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_the_machine_has_os_isolation() -> None:
    """CI and the README's commands install bubblewrap: without it every other test here is moot."""
    assert isolation_problem() is None
    result = run("pass\n")
    assert result.status == "passed"
    facts = result.isolation
    assert facts["isolation"] == "bwrap" and set(facts["namespaces"]) >= {"user", "pid", "mount", "net", "ipc", "uts"}


def test_passing_asserts_pass_and_failing_ones_fail() -> None:
    ok = run("def f(x):\n    return x + 1\n\nassert f(1) == 2\n")
    assert ok.status == "passed" and ok.returncode == 0
    bad = run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert bad.status == "failed" and bad.error == "AssertionError: arithmetic"
    assert run("import sys\nsys.exit(3)\n").returncode == 3
    assert run("def f(:\n").status == "syntax"
    scratch = run("open('notes.txt', 'w').write('ok')\nassert open('notes.txt').read() == 'ok'\n")
    assert scratch.status == "passed", "its own working folder is writable"


# -- reading: files outside, the parent's environment -------------------------------------------

def test_files_outside_and_hare_itself_cannot_be_read(outside: Path) -> None:
    secret = outside / "secret.txt"
    secret.write_text("s3cr3t-" + uuid.uuid4().hex)
    secret.chmod(0o644)
    import hare

    targets = [str(secret), hare.__file__, sysconfig.get_paths()["purelib"], "/etc/passwd", "/etc/hostname",
               os.path.expanduser("~")]
    code = ("import os\nseen = []\n"
            f"for p in {targets!r}:\n"
            "    try:\n        seen.append(open(p).read() if os.path.isfile(p) else os.listdir(p))\n"
            "    except OSError:\n        pass\n"
            "raise SystemExit(repr(seen))\n")
    result = run(code)
    assert result.error == "[]", result.error   # nothing outside the sandbox was there to read
    assert secret.read_text() not in result.error


def test_the_parent_environment_is_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", token)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)
    code = ("import os\nleaked = [k for k in os.environ]\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try:\n            leaked.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
            "        except OSError:\n            pass\n"
            f"for pid in (os.getppid(), {os.getpid()}, 1):\n"
            "    try:\n        leaked.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
            "    except OSError:\n        pass\n"
            "leaks = [x for x in leaked if x.strip(chr(0)) not in ('', 'PWD', 'PWD=/work')]\n"
            "assert not leaks, leaks\n")
    result = run(code)   # bwrap sets PWD after --chdir; nothing else is there
    assert token not in result.error and result.status == "passed", result.error


def test_the_launcher_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen from the host while the snippet runs: the bwrap process has an empty environment
    and (the worker being root) runs as nobody."""
    token = "tok-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", token)
    seen: list[tuple[int, bytes]] = []
    done = threading.Event()

    def watch() -> None:
        me = str(os.getpid())
        while not done.is_set() and not seen:
            for entry in Path("/proc").iterdir():
                try:
                    stat = (entry / "stat").read_text()
                    if entry.name.isdigit() and stat.split(") ", 1)[1].split()[1] == me \
                            and (entry / "exe").resolve().name == "bwrap":
                        seen.append((entry.stat().st_uid, (entry / "environ").read_bytes()))
                except (OSError, IndexError):
                    continue
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    run("import time\ntime.sleep(1.5)\n")
    done.set()
    t.join()
    assert seen, "the launcher was not observed"
    uid, environ = seen[0]
    assert environ == b""
    if os.geteuid() == 0:
        assert uid == NOBODY


# -- writing outside its folder, by every route ------------------------------------------------

WRITE_ROUTES = {
    "open": "open(T + '/open.txt', 'w').write('x')",
    "chdir": "os.chdir(T); open('chdir.txt', 'w').write('x')",
    "dir_fd": "fd = os.open(T, os.O_RDONLY); os.close(os.open('dirfd.txt', os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))",
    "rename": "open('r.txt', 'w').write('x'); os.rename('r.txt', T + '/rename.txt')",
    "mknod": "os.mknod(T + '/mknod.txt')",
    "symlink": "os.symlink('/etc/passwd', T + '/link.txt')",
    "pth": "open(PURELIB + '/zz_evil.pth', 'w').write('import os')",
    "stdlib": "open(STDLIB + '/zz_evil.py', 'w').write('x = 1')",
}


@pytest.mark.parametrize("route", sorted(WRITE_ROUTES))
def test_writes_outside_its_folder_do_not_land(outside: Path, route: str) -> None:
    purelib, stdlib = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]
    code = (f"import os\nT = {str(outside)!r}\nPURELIB = {purelib!r}\nSTDLIB = {stdlib!r}\n"
            f"try:\n    {WRITE_ROUTES[route]}\nexcept OSError:\n    pass\n")
    run(code)
    assert list(outside.iterdir()) == []
    assert not Path(purelib, "zz_evil.pth").exists() and not Path(stdlib, "zz_evil.py").exists()


def test_fchmod_cannot_change_the_interpreter() -> None:
    exe = os.path.realpath("/usr/bin/python3" if os.geteuid() == 0 else sys._base_executable)
    before = os.stat(exe).st_mode
    run("import os, sys\nfd = os.open(sys.executable, os.O_RDONLY)\nos.fchmod(fd, 0o777)\n")
    assert os.stat(exe).st_mode == before


def test_the_folder_is_a_capped_tmpfs() -> None:
    result = run("open('big', 'wb').write(b'x' * (40 * 1024 * 1024))\n", tmpfs_mb=8)
    assert result.status == "failed" and ("No space" in result.error or "File too large" in result.error)


# -- processes, sockets and the kernel ------------------------------------------------------------

PROCESS_ROUTES = {
    "subprocess": "import subprocess, sys; subprocess.run([sys.executable, '-c', CHILD], timeout=5)",
    "fork_exec": ("import _posixsubprocess, os, sys\n"
                  "    r, w = os.pipe()\n"
                  "    pid = _posixsubprocess.fork_exec([sys.executable, '-c', CHILD], [sys.executable.encode()], True, (),"
                  " None, None, -1, -1, -1, -1, -1, -1, r, w, True, False, None, None, None, -1, None, False)\n"
                  "    os.waitpid(pid, 0)"),
    "spawn": ("import multiprocessing as mp\n"
              "    ctx = mp.get_context('spawn'); p = ctx.Process(target=exec, args=(CHILD,)); p.start(); p.join(5)"),
    "fork": "import os\n    pid = os.fork()\n    if pid == 0:\n        exec(CHILD); os._exit(0)\n    os.waitpid(pid, 0)",
    "system": "import os; os.system('python3 -c \"' + CHILD + '\"')",
}


@pytest.mark.parametrize("route", sorted(PROCESS_ROUTES))
def test_child_processes_are_as_contained_as_the_snippet(outside: Path, listener: tuple[int, list[bytes]],
                                                         route: str) -> None:
    """A process started by any route (subprocess, _posixsubprocess.fork_exec, a multiprocessing
    spawn child, fork, os.system) writes nothing outside and reaches no listener of the host."""
    port, got = listener
    child = (f"import socket\\ntry:\\n    open({str(outside)!r} + '/child.txt', 'w').write('x')\\nexcept OSError:\\n    pass\\n"
             f"try:\\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'child')\\n"
             "except OSError:\\n    pass\\n")
    code = f"CHILD = '{child}'\nif __name__ == '__main__':\n    {PROCESS_ROUTES[route]}\n"
    run(code)
    time.sleep(0.3)
    assert got == [] and list(outside.iterdir()) == []


def test_sockets_reach_no_listener_of_the_host(listener: tuple[int, list[bytes]]) -> None:
    port, got = listener
    for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n",
                 f"import socket\ns = socket.socket(socket.AF_INET6)\ns.connect(('::1', {port}))\n",
                 "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n"):
        assert run(code).status == "failed"
    time.sleep(0.3)
    assert got == []


SYSCALLS = {"x86_64": {"ptrace": 101, "setns": 308, "unshare": 272, "mount": 165, "bpf": 321, "keyctl": 250,
                       "perf_event_open": 298},
            "aarch64": {"ptrace": 117, "setns": 268, "unshare": 97, "mount": 40, "bpf": 280, "keyctl": 219,
                        "perf_event_open": 241}}


def test_the_seccomp_filter_denies_namespace_and_kernel_calls(listener: tuple[int, list[bytes]]) -> None:
    """Through ctypes, below any Python-level guard: each call answers EPERM (ptrace of its own
    child and a keyring would work in a user namespace without the filter), and a new network
    namespace (which could then be wired up) is refused, so the listener hears nothing."""
    nrs = SYSCALLS[platform.machine()]
    port, got = listener
    code = f"""
import ctypes, errno, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
NR = {nrs!r}
pid = os.fork()
if pid == 0:
    time.sleep(3); os._exit(0)
calls = {{
    "ptrace": (16, pid, 0, 0),                     # PTRACE_ATTACH to its own child
    "setns": (0, 0x40000000),
    "unshare": (0x40000000,),                       # CLONE_NEWNET
    "mount": (b"none", b"/work", b"tmpfs", 0, 0),
    "bpf": (0, 0, 0),
    "keyctl": (0, -3, 1),                           # KEYCTL_GET_KEYRING_ID, session keyring, create
    "perf_event_open": (0, 0, -1, -1, 0),
}}
allowed = []
for name, args in calls.items():
    ctypes.set_errno(0)
    rc = libc.syscall(NR[name], *args)
    if rc != -1 or ctypes.get_errno() != errno.EPERM:
        allowed.append((name, rc, ctypes.get_errno()))
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"x")
except OSError:
    pass
os.kill(pid, 9)
assert not allowed, allowed
"""
    result = run(code)
    assert result.status == "passed", result.error
    time.sleep(0.3)
    assert got == []


def test_signals_reach_neither_the_parent_nor_the_hosts_processes() -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    canary_kw = {"user": NOBODY, "group": NOBODY} if os.geteuid() == 0 else {}
    import subprocess

    canary = subprocess.Popen(["sleep", "30"], **canary_kw)  # same uid as the sandbox's launcher
    try:
        code = (f"import os, signal\nfor pid in ({os.getpid()}, {canary.pid}, os.getppid(), 1):\n"
                "    for sig in (signal.SIGUSR1, signal.SIGKILL):\n"
                "        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\n"
                "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError:\n    pass\n")
        run(code)
        time.sleep(0.2)
        assert got == [] and canary.poll() is None
    finally:
        signal.signal(signal.SIGUSR1, previous)
        canary.kill()
        canary.wait()


# -- limits: time, survivors, output, processes, memory -------------------------------------------

def test_a_grandchild_in_its_own_session_does_not_outlive_the_snippet() -> None:
    marker = "hare-grandchild-" + uuid.uuid4().hex
    code = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],"
            " start_new_session=True)\n"
            "print('parent done')\n")
    started = time.monotonic()
    result = run(code, time_limit_s=2.0)
    assert time.monotonic() - started < 2.0 + SLACK_S
    assert result.status == "passed"
    assert processes_with(marker) == []   # checked at once: run() returns when the namespace is gone


def test_an_endless_loop_is_killed_at_its_limit_with_every_process() -> None:
    marker = "hare-loop-" + uuid.uuid4().hex
    code = ("import subprocess, sys\n"
            f"subprocess.Popen([sys.executable, '-c', 'while True: pass', {marker!r}], start_new_session=True)\n"
            "while True:\n    pass\n")
    started = time.monotonic()
    result = run(code, time_limit_s=2.0)
    assert result.status == "timeout" and time.monotonic() - started < 2.0 + SLACK_S
    assert processes_with(marker) == []


def test_huge_output_is_cut_and_killed() -> None:
    started = time.monotonic()
    result = run("import sys\nwhile True:\n    sys.stdout.write('x' * 1_000_000)\n", output_kb=64)
    assert result.status == "output_limit" and time.monotonic() - started < LIMITS.time_limit_s + SLACK_S
    assert len(result.error) < 300


def test_a_fork_bomb_stays_within_its_process_limit() -> None:
    """Counted from the host while it runs: never more than ``max_processes`` processes of the
    sandbox's user (plus bwrap and the namespace's init), none left after the limit."""
    uid = NOBODY if os.geteuid() == 0 else os.geteuid()
    peak = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            n = 0
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and entry.stat().st_uid == uid:
                        n += 1
                except OSError:
                    continue
            peak[0] = max(peak[0], n)
            time.sleep(0.05)

    before = sum(1 for e in Path("/proc").iterdir() if e.name.isdigit() and _uid(e) == uid)
    t = threading.Thread(target=count)
    t.start()
    started = time.monotonic()
    result = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                 time_limit_s=2.0, max_processes=8)
    elapsed = time.monotonic() - started
    done.set()
    t.join()
    assert result.status == "timeout" and elapsed < 2.0 + SLACK_S
    assert peak[0] - before <= 8 + 2, peak[0] - before
    assert sum(1 for e in Path("/proc").iterdir() if e.name.isdigit() and _uid(e) == uid) <= before


def _uid(entry: Path) -> int:
    try:
        return entry.stat().st_uid
    except OSError:
        return -1


def test_memory_is_capped() -> None:
    assert run("x = bytearray(4 * 1024 ** 3)\n", memory_mb=256).status == "memory"


# -- what is reported, and inputs that would break the parser -------------------------------------

def test_the_isolation_report_comes_from_the_parent() -> None:
    forged = "{'isolation': 'forged'}"
    code = (f"import json\nopen('_sandbox.json', 'w').write(json.dumps({forged}))\n"
            f"print(json.dumps({forged}))\n")
    result = run(code)
    assert result.isolation["isolation"] == "bwrap"
    assert result.isolation["launcher_uid"] == (NOBODY if os.geteuid() == 0 else os.geteuid())
    assert result.isolation["environment"] == "empty"


def test_a_snippet_that_breaks_the_parser_is_syntax_not_an_exception() -> None:
    poison = "x = " + "(" * 100_000 + ")" * 100_000 + "\nassert x\n"
    assert count_asserts(poison) is None
    assert run(poison).status == "syntax"


def test_isolation_none_runs_without_namespaces_and_says_so() -> None:
    result = run("import os\nassert os.path.exists('/proc/1/environ')\n", isolation="none")
    assert result.status == "passed" and result.isolation["isolation"] == "none"
    assert pwd.getpwuid(os.geteuid())  # the plain child ran as us: nothing was claimed about it
