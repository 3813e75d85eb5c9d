"""The code sandbox: generated code runs in a child process with a time limit, a memory limit,
no network and a throwaway working directory, never in the test's (the worker's) process."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from hare.sandbox import count_asserts, run_code


def test_passing_asserts_pass_and_failing_ones_fail() -> None:
    ok = run_code("def f(x):\n    return x + 1\n\nassert f(1) == 2\n")
    assert ok.status == "passed" and ok.returncode == 0
    bad = run_code("assert 1 + 1 == 3, 'arithmetic'\n")
    assert bad.status == "failed" and bad.error == "AssertionError: arithmetic"
    assert run_code("import sys\nsys.exit(3)\n").returncode == 3
    assert run_code("def f(:\n").status == "syntax"


def test_network_call_is_refused() -> None:
    """Even to a server that listens on this machine's loopback."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        server.settimeout(5)
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    result = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n")
    t.join()
    server.close()
    assert result.status == "failed" and "refused" in result.error.lower()
    assert not accepted, "the sandboxed code reached a socket"
    blocked_dns = run_code("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)\n")
    assert blocked_dns.status == "failed"


def test_network_namespace_where_the_kernel_allows_it() -> None:
    """As root (this machine) the child has a network namespace of its own: no usable interface
    even below Python's audit hooks. Where namespaces are not permitted the hook still refuses."""
    result = run_code("pass\n")
    if os.geteuid() == 0:
        assert result.isolation["network_namespace"] is True
    assert "network_namespace" in result.isolation


def test_infinite_loop_is_killed_at_its_time_limit() -> None:
    started = time.monotonic()
    result = run_code("import os\nwhile True:\n    pass\n", time_limit_s=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert time.monotonic() - started < 10
    # a child that forks a grandchild to outlive it is refused (no new processes)
    spawn = run_code("import subprocess\nsubprocess.Popen(['sleep', '60'])\n", time_limit_s=2.0)
    assert spawn.status == "failed" and "refused" in spawn.error


def test_memory_limit_stops_a_huge_allocation() -> None:
    result = run_code("x = bytearray(4 * 1024 ** 3)\n", memory_mb=256)
    assert result.status == "memory"


def test_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')\n",
                 "open('../escaped.txt', 'w').write('x')\n",
                 f"import os\nos.rename('main.py', {str(target)!r})\n",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
                 f"import shutil\nshutil.copy('main.py', {str(target)!r})\n"):
        result = run_code(code)
        assert result.status == "failed" and "refused" in result.error, (code, result)
    assert not target.exists()
    inside = run_code("open('notes.txt', 'w').write('ok')\nassert open('notes.txt').read() == 'ok'\n")
    assert inside.status == "passed", "its own throwaway directory is writable"


def test_count_asserts() -> None:
    assert count_asserts("assert 1\nassert 2\n") == 2
    assert count_asserts("x = 1\n") == 0
    assert count_asserts("def (\n") is None
