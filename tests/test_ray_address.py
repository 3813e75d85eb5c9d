"""Which Ray a run joins: with no address, always a new local instance (a stale cluster file
left by an earlier `ray start` must not make `hare run` wait on a dead head), and the auth
mode is ours to set only for that local instance."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hare.run.runtime import LOCAL_RAY, ray_address
from tests.conftest import write_run_config
from tests.procs import free_port, hare_env, hare_process


def test_the_auth_mode_is_left_to_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address("ray-head:6379") == "ray-head:6379"
    import os

    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert ray_address(None) == "auto" and "RAY_AUTH_MODE" not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_address(None) is None and os.environ["RAY_AUTH_MODE"] == "disabled"
    assert LOCAL_RAY == "local"


@pytest.mark.slow
def test_a_stale_cluster_file_does_not_hang_a_local_run(tmp_path: Path, prefect_api: str) -> None:
    """Ray's temp folder names a head that is gone (an earlier `ray start`, then a reboot or a
    `kill`): `hare run` with no address starts its own Ray and completes."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))   # short: Ray's socket paths have a length cap
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        cfg = write_run_config(tmp_path, plan={"partitions": 1, "prompts_per_partition": 2},
                               diversity={"baseline_prompts": 0})
        env = {k: v for k, v in hare_env(PREFECT_API_URL=prefect_api, RAY_TMPDIR=str(ray_tmp)).items()
               if k != "RAY_ADDRESS"}
        proc = hare_process("run", str(cfg), env=env)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"hare run hung on the stale cluster file: {(out + err)[-2000:]}")
        assert proc.returncode == 0, (out + err)[-3000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
