"""Shared fixtures: a real moto S3 server, the Prefect test harness, a local Ray, run files.

Environment is pinned before anything imports Prefect/Ray/HF so tests run offline and share
the model cache with `make demo` (the checkout's .hare/cache unless HARE_CACHE_DIR is set).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.procs import free_port

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HARE_CACHE_DIR", str(ROOT / ".hare" / "cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

TOPICS = {
    "version": 1,
    "domains": {
        "Mathematics": {"Arithmetic": [{"Fractions": "adding fractions"}, "Percentages"]},
        "Sciences": {"Physics": ["Speed and velocity"], "Biology": ["Photosynthesis"]},
    },
}


def write_run_config(folder: Path, **overrides: Any) -> Path:
    """A small valid run file in ``folder``; ``overrides`` replace top-level sections (None drops one)."""
    (folder / "topics.yaml").write_text(yaml.safe_dump(overrides.pop("topics_doc", TOPICS)))
    cfg: dict[str, Any] = {
        "name": "t",
        "seed": 7,
        "topics": {"path": "topics.yaml"},
        "axes": {"audiences": ["a child", "an adult"], "styles": ["a Q&A"], "kinds": ["explanation", "math_word_problem"]},
        "plan": {"partitions": 3, "prompts_per_partition": 4},
        "model": {"backend": "deterministic-fake", "num_cpus": 0},
        "sampling": {"max_tokens": 16},
        "diversity": {"baseline_prompts": 2},
        "quality": {"enabled": False},  # the fake backend's text is not prose; quality has its own tests
        "dedup": {"enabled": False},  # dedup has its own tests
        "store": {"url": str(folder / "store")},
    }
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# --- under CI, a skip is a failure unless it is listed here ---------------------------------------
# (node id glob, text the skip reason must contain, why this skip is legitimate). Anything else
# that skips under CI=true (a missing browser, a busy port, a test whose prerequisite test did
# not run) fails the run: `.ci/run` installs what the suite needs and fails if it cannot.
CI_ALLOWED_SKIPS: tuple[tuple[str, str, str], ...] = (
    ("tests/test_engine_pool.py::test_sampler_without_a_gpu_reports_nothing", "a GPU machine",
     "checks the no-GPU path; on a GPU machine the sampler reports, and bench/gen_throughput.py records it"),
    ("tests/test_model_placement.py::test_hare_run_refuses_a_gpu_config_on_this_cpu_build", "the GPU build",
     "checks the CPU build's refusal; a .venv-gpu has no such refusal to check"),
)


def ci_allows_skip(nodeid: str, reason: str) -> bool:
    """Whether a skip of ``nodeid`` with ``reason`` is on CI_ALLOWED_SKIPS."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(nodeid, pattern) and needle in reason for pattern, needle, _ in CI_ALLOWED_SKIPS)


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_unlisted_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if ci_allows_skip(report.nodeid, reason):
        return
    report.outcome = "failed"
    report.longrepr = (f"{report.nodeid} skipped under CI=true ({reason}); a skip under CI fails the run unless "
                       "it is on CI_ALLOWED_SKIPS in tests/conftest.py with its reason")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_unlisted_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_unlisted_skip(outcome.get_result())


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's standalone S3 server: a real HTTP endpoint on 127.0.0.1, for the whole session."""
    port = free_port()
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


def new_bucket() -> str:
    import boto3

    name = f"hare-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests run against a local folder and a real HTTP S3 endpoint (moto)."""
    if request.param == "local":
        return f"file://{tmp_path / 'store'}"
    request.getfixturevalue("moto_endpoint")
    return f"s3://{new_bucket()}/prefix"


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def ray_local(moto_endpoint: str, prefect_api: str) -> Iterator[None]:
    """One local Ray for the session; workers get the harness API and the S3 endpoint."""
    import ray

    from hare.engines.engine import RAY_NAMESPACE
    from hare.run.runtime import worker_env

    ray.init(num_cpus=2, namespace=RAY_NAMESPACE, include_dashboard=False,
             runtime_env={"env_vars": worker_env(prefect_api)})
    yield
    ray.shutdown()
