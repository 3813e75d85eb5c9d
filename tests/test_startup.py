"""A new user's first command: the Prefect API comes up on a new database however long its
migration takes, and every start-up failure is one line on stderr with exit code 2."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_run_config
from tests.procs import ROOT, free_port


def _hare(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hare.cli", *args], env=env, cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's environment: no Prefect API, an empty PREFECT_HOME, nothing of the session's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "RAY_ADDRESS"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HARE_LOG_DIR=str(tmp_path / "logs"), PYTHONPATH=str(ROOT), **extra)
    return env


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("hare: error: "), lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def busy_cpus() -> Iterator[None]:
    """Both cores kept busy, as on a loaded laptop or a shared CI runner."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_temporary_api_starts_on_a_new_database_while_the_cpu_is_busy(tmp_path: Path, busy_cpus: None) -> None:
    """Prefect's own wait is cut to 1 s: the API only comes up because hare migrates the new
    database first (no timeout) and then waits long enough for the server."""
    env = _clean_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")
    code = ("import httpx\nfrom hare.run.runtime import prefect_api\n"
            "with prefect_api() as url:\n    print('health', httpx.get(url + '/health').status_code)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, text=True, capture_output=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "health 200" in proc.stdout
    assert (tmp_path / "prefect-home" / "prefect.db").is_file()


@pytest.mark.slow
def test_no_ray_at_the_configured_address(tmp_path: Path) -> None:
    cfg = write_run_config(tmp_path, ray={"address": f"127.0.0.1:{free_port()}"})
    proc = _hare(["run", str(cfg)], _clean_env(tmp_path), tmp_path)
    _assert_one_line_exit_2(proc, "Ray:", "ray.address")


class _NotPrefect(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_prefect_api_port_held_by_something_else(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotPrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _clean_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{server.server_port}/api")
        proc = _hare(["run", str(write_run_config(tmp_path))], env, tmp_path)
    finally:
        server.shutdown()
    _assert_one_line_exit_2(proc, "Prefect API", "404")
    assert not (tmp_path / "store" / "runs").exists(), "nothing was started or written"


def test_prefect_api_not_running(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    proc = _hare(["run", str(write_run_config(tmp_path))], env, tmp_path)
    _assert_one_line_exit_2(proc, "Prefect API", "not reachable", "prefect server start")


def test_store_unreachable(tmp_path: Path) -> None:
    env = _clean_env(tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="x",
                     AWS_SECRET_ACCESS_KEY="y", AWS_DEFAULT_REGION="us-east-1")
    proc = _hare(["run", str(write_run_config(tmp_path)), "--store", "s3://nowhere/prefix"], env, tmp_path)
    _assert_one_line_exit_2(proc, "store s3://nowhere/prefix is not reachable", "AWS_ENDPOINT_URL")


@pytest.mark.slow
def test_engine_cannot_load_the_model(tmp_path: Path) -> None:
    """A model folder vLLM cannot load (its config.json names no architecture it knows)."""
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    cfg = write_run_config(tmp_path, model={"name": "broken", "source": str(model), "backend": "vllm",
                                            "num_cpus": 1, "replicas": 1})
    proc = _hare(["run", str(cfg)], _clean_env(tmp_path), tmp_path, timeout=600)
    line = _assert_one_line_exit_2(proc, "engine: could not load model 'broken'")
    assert str(model) in line
    info = yaml.safe_load(next((tmp_path / "store" / "runs").glob("*/run.json")).read_text())
    assert info["status"] == "failed", "run.json says the run failed"
