"""Credentials never leak, and ids cannot escape their store prefix.

A real `hare run` subprocess writes to S3 (moto) with a recognisable fake access key and secret
in its environment; then every output is searched for them: every object in the bucket (run.json,
manifests, lineage, card, data), the process's stdout and stderr (log lines), the Prefect API's
flow-run parameters, logs and artifacts, and Ray's session logs.
"""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import boto3
import pytest

from hare.cli import main
from tests.conftest import new_bucket, write_run_config
from tests.procs import hare_env, hare_process

pytestmark = pytest.mark.slow


def test_fake_secret_appears_in_no_output(tmp_path: Path, moto_endpoint: str, prefect_api: str) -> None:
    from prefect.client.orchestration import get_client

    key_id = f"AKIAHARE{secrets.token_hex(6).upper()}"
    secret = f"hare-fake-secret-{secrets.token_hex(12)}"
    bucket = new_bucket()
    ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # short: Ray's socket paths have a length limit
    cfg = write_run_config(tmp_path, plan={"partitions": 2, "prompts_per_partition": 3})
    env = hare_env(PREFECT_API_URL=prefect_api, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret,
                   RAY_TMPDIR=str(ray_tmp), PREFECT_LOGGING_LEVEL="DEBUG")
    proc = hare_process("run", str(cfg), "--store", f"s3://{bucket}/sec", env=env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    outputs: dict[str, str] = {"stdout": out, "stderr": err}
    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert any(k.endswith("run.json") for k in keys) and any(k.endswith(".parquet") for k in keys)
    for k in keys:
        outputs[f"s3://{bucket}/{k}"] = s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode("latin-1")
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(limit=200):
            outputs[f"flow run {run.id} parameters"] = repr(run.parameters)
        outputs["prefect logs"] = "\n".join(log.message for log in client.read_logs(limit=200))
        outputs["prefect artifacts"] = "\n".join(repr(a.data) for a in client.read_artifacts(limit=200))
    ray_files = [p for p in ray_tmp.rglob("*") if p.is_file() and p.suffix in {".log", ".out", ".err", ".json", ""}]
    assert ray_files, "the subprocess's Ray wrote its session under RAY_TMPDIR"
    for p in ray_files:
        try:
            outputs[str(p)] = p.read_text(errors="replace")
        except OSError:
            continue

    leaks = [where for where, text in outputs.items() if secret in text or key_id in text]
    assert not leaks, f"credentials found in: {leaks}"
    assert len(outputs) > 20


@pytest.mark.parametrize("run_id", ["../other", "/etc", "a/b", ".."])
def test_run_ids_cannot_escape_the_store(tmp_path: Path, run_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_run_config(tmp_path)
    assert main(["status", "--store", str(tmp_path / "store"), run_id]) == 2
    assert "unsafe" in capsys.readouterr().err
    assert main(["rerun", run_id, "--store", str(tmp_path / "store")]) == 2
    assert "unsafe" in capsys.readouterr().err
    assert main(["run", str(cfg), "--run-id", run_id]) == 2
    assert "unsafe run id" in capsys.readouterr().err
    assert not (tmp_path / "other").exists() and not (tmp_path / "store").exists()
