"""Integrity (issue 14): a run's dataset is exactly what its inputs say.

- content, not paths: a resume whose topics file changed is refused naming the file, and with
  ``--allow-changed-inputs`` redoes what the change touches (recorded in run.json and lineage);
- every stage commit records the sha256 of what it read: a regenerated partition redoes every
  stage after it, the other partitions keep their commits byte for byte;
- a corrupt stage output or features object is named, moved to ``quarantine/`` and recomputed;
- the card says which backend and model generated the records, the measured language, and the
  settings in force;
- the same run id started twice: the second start is refused, naming the holder.

On real Prefect (the test harness), Ray (local) and moto S3 where the store matters.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from hare.cli.main import main
from hare.config import load_config
from hare.flows.synthesize import run_rerun_failed, run_synthesize
from hare.store.layout import card_key, features_key, generated_key, lineage_key, manifest_key, plan_key, records_key
from hare.store.lease import run_lease_key
from hare.store.manifest import output_sha256, read_manifest
from hare.store.quarantine import list_quarantined
from hare.store import open_store, sha256_bytes
from hare.store.tables import from_parquet_bytes
from hare.tasks.plan import build_plan
from tests.conftest import TOPICS, new_bucket, write_run_config
from tests.procs import hare_env, hare_process, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

PIDS = ["p00000", "p00001", "p00002"]


def _dataset(store, run_id: str) -> "list[dict]":  # noqa: ANN001
    rows: list[dict] = []
    for key in store.list(f"runs/{run_id}/dataset/"):
        if key.endswith(".parquet"):
            rows += from_parquet_bytes(store.get_bytes(key), key).to_pylist()
    return rows


def test_resume_with_a_changed_topics_file_is_refused_then_redone_when_allowed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_run_config(tmp_path, diversity={"baseline_prompts": 0})
    url = f"file://{tmp_path}/store"
    run_synthesize(str(cfg_path), run_id="inputs")
    store = open_store(url)
    info = json.loads(store.get_bytes("runs/inputs/run.json"))
    assert info["inputs"]["topics.path"]["sha256"] == sha256_bytes((tmp_path / "topics.yaml").read_bytes())
    plans_before = {p: sha256_bytes(store.get_bytes(plan_key("inputs", p))) for p in PIDS}
    generated_before = {p: store.get_bytes(manifest_key("inputs", p)) for p in PIDS}

    topics = copy.deepcopy(TOPICS)
    topics["domains"]["Sciences"]["Biology"] = ["Cell respiration"]  # same path, other contents
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(topics))
    capsys.readouterr()
    assert main(["run", str(cfg_path), "--run-id", "inputs"]) == 2
    err = capsys.readouterr().err
    assert "input file(s) changed since the run started: topics.path" in err and str(tmp_path / "topics.yaml") in err
    assert "--allow-changed-inputs" in err
    assert main(["rerun", "inputs", "--store", url]) == 2, "hare rerun refuses it too"
    assert "topics.path" in capsys.readouterr().err
    assert store.get_bytes(manifest_key("inputs", "p00000")) == generated_before["p00000"], "nothing was touched"

    run_synthesize(str(cfg_path), run_id="inputs", allow_changed_inputs=True)
    info = json.loads(store.get_bytes("runs/inputs/run.json"))
    assert info["status"] == "succeeded"
    assert list(info["input_changes"][0]["files"]) == ["topics.path"]
    assert info["config_hash"] == load_config(cfg_path).config_hash()
    assert store.exists(lineage_key("inputs", "synthesize.inputs-changed.complete"))
    new_prompts = set(build_plan(load_config(cfg_path)).column("prompt").to_pylist())
    published = _dataset(store, "inputs")
    assert len(published) == 12 and {r["prompt"] for r in published} <= new_prompts, "only the new plan is published"
    assert any("Cell respiration" in r["prompt"] for r in published)
    assert not any("Photosynthesis" in r["prompt"] for r in published)
    redone = 0
    for p in PIDS:
        plan_sha = sha256_bytes(store.get_bytes(plan_key("inputs", p)))
        m = read_manifest(store, "inputs", p)
        assert m.inputs == {plan_key("inputs", p): plan_sha}
        if plan_sha == plans_before[p]:
            assert store.get_bytes(manifest_key("inputs", p)) == generated_before[p], f"{p}'s plan is unchanged: kept"
        else:
            assert m.attempts == 2, f"{p}'s plan changed: generated again"
            redone += 1
    assert redone >= 1


STAGES = ["generate", "quality", "decontam", "features", "dedup"]


def test_regenerated_partition_redoes_downstream_and_corrupt_objects_are_quarantined(
        tmp_path: Path, moto_endpoint: str) -> None:
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": "How many apples does Tom have if he buys seven more?",
                                 "answer": "He has twelve apples."}) + "\n")
    cfg_path = write_run_config(
        tmp_path, diversity={"baseline_prompts": 0}, quality={"enabled": True, "min_words": {"default": 1}},
        dedup={"enabled": True, "semantic": False},
        decontamination={"benchmarks": [{"name": "tiny", "source": str(bench)}], "paraphrase": False})
    url = f"s3://{new_bucket()}/integrity"
    run_synthesize(str(cfg_path), run_id="integ", store_url=url)
    store = open_store(url)
    before = {(p, st): store.get_bytes(manifest_key("integ", p, st)) for p in PIDS for st in STAGES}
    records_before = sorted(r["id"] for r in _dataset(store, "integ"))
    assert records_before

    card = store.get_bytes(card_key("integ")).decode()
    assert "the **deterministic-fake** backend (a test stand-in, not a language model; " in card
    generated_by = next(line for line in card.splitlines() if line.startswith("Synthetic text generated by"))
    assert "SmolLM2" not in generated_by, "the card names the backend that ran, not the config's model name"
    assert "Language, measured with langid on " in card
    assert "## Settings in force" in card and "overlap > 0.5" in card and "MinHash Jaccard >= 0.8" in card

    store.delete(generated_key("integ", "p00001"))                        # p00001 is generated again
    store.put_bytes(records_key("integ", "p00002", "decontam"), b"not parquet")  # a stage output, corrupt
    store.put_bytes(features_key("integ", "p00000"), b"garbage")            # a features object, corrupt
    run_rerun_failed("integ", url)

    info = json.loads(store.get_bytes("runs/integ/run.json"))
    assert info["status"] == "succeeded"
    assert sorted(r["id"] for r in _dataset(store, "integ")) == records_before, "nothing lost, nothing duplicated"
    now = {(p, st): read_manifest(store, "integ", p, st) for p in PIDS for st in STAGES}
    # every stage commit records what it read, and it is what its source holds now
    for (p, st), m in now.items():
        assert m.status == "succeeded" and m.inputs, (p, st)
        if st != "generate":
            src = "decontam" if st in ("features", "dedup") else STAGES[STAGES.index(st) - 1]
            key = records_key("integ", p, src)
            assert m.inputs[key] == output_sha256(now[(p, src)], key), (p, st)
    # the regenerated partition: every stage after it redone
    assert all(now[("p00001", st)].attempts == 2 for st in STAGES), {st: now[("p00001", st)].attempts for st in STAGES}
    # the corrupt stage output: that stage redone, not what came before it
    assert now[("p00002", "decontam")].attempts == 2
    assert all(store.get_bytes(manifest_key("integ", "p00002", st)) == before[("p00002", st)]
               for st in ("generate", "quality"))
    # the corrupt features object: recomputed; generation and the record stages before it kept
    assert now[("p00000", "features")].attempts == 2
    assert all(store.get_bytes(manifest_key("integ", "p00000", st)) == before[("p00000", st)]
               for st in ("generate", "quality", "decontam"))
    moved = {q["key"]: q for q in list_quarantined(store)}
    assert set(moved) == {records_key("integ", "p00002", "decontam"), features_key("integ", "p00000")}
    for key, note in moved.items():
        assert note["reason"].startswith(f"sha256 mismatch for {key}") and note["expected_sha256"]
        assert store.exists(f"quarantine/{key}") and store.exists(key), "kept aside, and recomputed"


def test_the_same_run_id_started_twice_is_refused_naming_the_holder(
        tmp_path: Path, prefect_api: str, capsys: pytest.CaptureFixture[str]) -> None:
    slow = {"version": 1, "domains": {"Mechanics": {"Machines": ["SLOW_ENGINE gears", "SLOW_ENGINE levers"]}}}
    cfg_path = write_run_config(tmp_path, topics_doc=slow, plan={"partitions": 4, "prompts_per_partition": 2},
                                diversity={"baseline_prompts": 0})
    store = open_store(f"file://{tmp_path}/store")
    proc = hare_process("run", str(cfg_path), "--run-id", "twice", env=hare_env(PREFECT_API_URL=prefect_api))
    try:
        wait_for(lambda: read_manifest(store, "twice", "p00000") or proc.poll() is not None, 180, "the first commit")
        assert proc.poll() is None, proc.communicate()
        lease = json.loads(store.get_bytes(run_lease_key("twice")))
        assert f"pid {proc.pid}" in lease["owner"]
        capsys.readouterr()
        assert main(["run", str(cfg_path), "--run-id", "twice"]) == 2
        err = capsys.readouterr().err
        assert "run twice is held by " in err and f"pid {proc.pid}" in err and "lease expires" in err
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(store.get_bytes(run_lease_key("twice")))["expires_at"] == 0, "released at the end"
    assert json.loads(store.get_bytes("runs/twice/run.json"))["status"] == "succeeded"
