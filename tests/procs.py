"""Helpers for tests that drive real processes: `hare` as a subprocess, waiting, a TCP cut-off.

A `hare` subprocess is a real driver: its own local Ray, the test session's Prefect API, and
whatever environment the test gives it (an S3 endpoint behind a proxy, a fake secret).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def hare_env(**extra: str) -> dict[str, str]:
    """The test session's environment (Prefect API, cache, offline flags) plus ``extra``."""
    return {**os.environ, **extra}


def hare_process(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
                 log: Path | None = None) -> subprocess.Popen[str]:
    """Start ``python -m hare.cli ARGS`` (the `hare` command); output captured, or into ``log``
    for a long-lived process nobody reads from (a full pipe would block it)."""
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 - lives with the process
    return subprocess.Popen([sys.executable, "-m", "hare.cli", *args], cwd=cwd, env=env or hare_env(),
                            stdout=out, stderr=subprocess.STDOUT if log is not None else subprocess.PIPE, text=True)


class TcpOutage:
    """A TCP forwarder in front of an endpoint that can be taken down and brought back.

    Down: the listening socket is closed and every open connection is cut, so clients get
    connection refused/reset, as when an S3 endpoint goes away; up: it listens again on the
    same port. The endpoint behind it (moto) keeps its data, as a real S3 service would.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.up()

    def up(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def down(self) -> None:
        if self._listener is not None:
            try:  # wakes the accept() blocked in the kernel: close() alone would let one more in
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return  # listener closed: the endpoint is down
            if self._listener is not srv:  # accepted as it went down
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):  # ValueError: down() closed a socket under select()
            return
        finally:
            a.close()
            b.close()
