"""The synthesize flow on real Prefect (test harness) and real local Ray, both stores.

Generation here is the DeterministicFakeBackend (named as such in every record): these tests
check orchestration, the commit protocol, resume and lineage, not the model. The real model
runs in test_generation_vllm.py.
"""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hare.cli.main import main
from hare.flows.synthesize import run_synthesize
from hare.store.layout import generated_key, manifest_key
from hare.store.manifest import read_manifest
from hare.store import open_store
from hare.store.tables import from_parquet_bytes, to_parquet_bytes
from tests.conftest import TOPICS, write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]

POISONED = {"version": 1, "domains": {**TOPICS["domains"], "Trap": {"Trap": ["POISON topic"]}}}


def _dataset(store, result) -> list[dict]:
    rows = []
    for key in result["shards"]:
        rows += from_parquet_bytes(store.get_bytes(key), key).to_pylist()
    return rows


def test_flow_commits_publishes_and_records_lineage(tmp_path: Path, store_url: str) -> None:
    cfg = write_run_config(tmp_path, topics_doc=POISONED, plan={"partitions": 3, "prompts_per_partition": 5})
    result = run_synthesize(str(cfg), store_url=store_url)
    store = open_store(store_url)
    run_id = result["run_id"]

    rows = _dataset(store, result)
    poisoned = [r for r in rows if "POISON" in r["prompt"]]
    assert not poisoned, "a poisoned prompt must become a reject, not a record"
    assert result["records"] == len(rows) and result["rejects"] == 15 - len(rows) > 0
    assert len({r["id"] for r in rows}) == len(rows)
    assert {r["backend"] for r in rows} == {"deterministic-fake"}
    assert {r["run_id"] for r in rows} == {run_id}

    rejects = []
    for pid in ["p00000", "p00001", "p00002"]:
        m = read_manifest(store, run_id, pid)
        assert m is not None and m.status == "succeeded" and m.attempts == 1
        assert m.stats["prompts"] == 5 and m.stats["output_tokens_per_s"] > 0
        rejects += from_parquet_bytes(store.get_bytes(f"runs/{run_id}/rejects/generate/{pid}.parquet")).to_pylist()
    assert len(rejects) == result["rejects"]
    assert {r["reject_reason"] for r in rejects} == {"engine_rejected: poisoned prompt"}

    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "succeeded" and len(info["config_hash"]) == 64 and info["code_version"]
    events = store.list(f"runs/{run_id}/lineage/")
    names = {k.rsplit("/", 1)[1] for k in events}
    assert {"synthesize.start.json", "synthesize.complete.json", "synthesize.plan.complete.json",
            "synthesize.publish.complete.json", "synthesize.generate.p00002.complete.json"} <= names
    publish_event = json.loads(store.get_bytes(f"runs/{run_id}/lineage/synthesize.publish.complete.json"))
    assert publish_event["outputs"][0]["facets"]["hare_object"]["rows"] == len(rows)
    card = store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert card.startswith("---\n") and f"| records | {len(rows)} |" in card


def test_workers_report_to_the_driver_api(tmp_path: Path) -> None:
    """Task runs executed in Ray workers land in the same Prefect API as the flow run
    (no temporary server per worker), and the partition artifact is there too."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    cfg = write_run_config(tmp_path, plan={"partitions": 3, "prompts_per_partition": 2})
    result = run_synthesize(str(cfg))
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result["flow_run_id"]])))
        names = sorted(r.name.rsplit("-", 1)[0] for r in runs if r.state and r.state.is_completed())
        assert names.count("generate-partition") == 4  # 3 dataset partitions + 1 baseline
        assert {"plan", "diversity", "publish"} <= set(names)
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["hare-partitions"])))
        mine = [a for a in arts if str(a.flow_run_id) == result["flow_run_id"]]
        assert len(mine) == 4, "the throughput table is updated as each of the 4 partitions finishes"
        assert any("total 4/4" in str(a.data) for a in mine)
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["hare-progress"])))
        assert [a.data for a in progress if str(a.flow_run_id) == result["flow_run_id"]] == [100.0]


def test_resume_redoes_only_uncommitted_partitions(tmp_path: Path) -> None:
    cfg = write_run_config(tmp_path, plan={"partitions": 4, "prompts_per_partition": 3})
    first = run_synthesize(str(cfg))
    store = open_store(first["store"])
    run_id = first["run_id"]
    before = sorted(r["id"] for r in _dataset(store, first))
    kept_manifest = store.get_bytes(manifest_key(run_id, "p00000"))

    store.delete(manifest_key(run_id, "p00001"))  # as if the driver died before the commit
    store.put_bytes(generated_key(run_id, "p00002"), to_parquet_bytes(  # corrupted after commit
        from_parquet_bytes(store.get_bytes(generated_key(run_id, "p00002"))).slice(0, 1)))

    second = run_synthesize(str(cfg), run_id=run_id)
    after = sorted(r["id"] for r in _dataset(store, second))
    assert after == before, "nothing lost, nothing duplicated"
    assert store.get_bytes(manifest_key(run_id, "p00000")) == kept_manifest  # untouched
    assert read_manifest(store, run_id, "p00001").attempts == 1
    assert read_manifest(store, run_id, "p00002").attempts == 2
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "succeeded" and len(info["resumed_at"]) == 1
    rows = _latest_table(second["flow_run_id"], "hare-partitions")
    skipped = {r["partition"]: r for r in rows if r["partition"] in ("p00000", "p00003", "b00000")}
    assert all(r["status"].startswith("skipped") and r["tokens_per_s"] == "" for r in skipped.values()), \
        "a partition committed by the first run shows no rate in the resume's table"
    redone = {r["partition"]: r for r in rows if r["partition"] in ("p00001", "p00002")}
    assert all(isinstance(r["tokens_per_s"], (int, float)) and r["tokens_per_s"] > 0 for r in redone.values())
    total = rows[-1]
    assert total["output_tokens"] == sum(r["output_tokens"] for r in redone.values()), "totals count only redone ones"
    timeline = _latest_table(second["flow_run_id"], "hare-throughput")
    assert sum(r["partitions"] for r in timeline) == 2 and timeline[0]["minute"] == 1


def _latest_table(flow_run_id: str, key: str) -> list[dict]:
    """The newest version of a table artifact of one flow run, as rows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    mine = sorted((a for a in arts if str(a.flow_run_id) == flow_run_id), key=lambda a: a.created)
    data = mine[-1].data
    return json.loads(data) if isinstance(data, str) else data


def test_failed_partitions_leave_the_run_incomplete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hare.config import load_config
    from hare.flows.synthesize import RunIncomplete
    from hare.tasks.plan import build_plan, split_partitions

    topics = {"version": 1, "domains": {**TOPICS["domains"], "Trap": {"Trap": ["CRASH_ENGINE"]}}}
    path = write_run_config(tmp_path, topics_doc=topics, plan={"partitions": 4, "prompts_per_partition": 2})
    cfg = load_config(path)
    doomed = {pid for pid, t in split_partitions(build_plan(cfg)).items()
              if any("CRASH_ENGINE" in p for p in t.column("prompt").to_pylist())}
    assert doomed and len(doomed) < 4
    with pytest.raises(RunIncomplete, match="redo these with: hare rerun "):
        run_synthesize(str(path))
    store = open_store(cfg.store.url)
    (run_id,) = {k.split("/")[1] for k in store.list("runs/")}
    info = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))
    assert info["status"] == "incomplete" and set(info["summary"]["failed_partitions"]) == doomed
    for pid in ["p00000", "p00001", "p00002", "p00003"]:
        m = read_manifest(store, run_id, pid)
        if pid in doomed:
            assert m.status == "failed" and m.attempts == 2 and "CRASH_ENGINE" in m.error  # retried once
        else:
            assert m.status == "succeeded"
    assert not store.list(f"runs/{run_id}/dataset/"), "no partial dataset is published"
    capsys.readouterr()
    assert main(["status", "--store", store.url, run_id]) == 3
    assert "failed" in capsys.readouterr().out


def test_status_cli_and_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_run_config(tmp_path, plan={"partitions": 2, "prompts_per_partition": 2})
    result = run_synthesize(str(cfg))
    capsys.readouterr()
    assert main(["status", "--store", result["store"], result["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "p00001" in out and "b00000" in out and "3/3 committed" in out  # + baseline

    (tmp_path / "bad").mkdir()
    bad = write_run_config(tmp_path / "bad", plan={"partitions": 0, "prompts_per_partition": 2})
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "  plan.partitions: 0, but the run synthesizes; plan at least one partition" in err
    assert not (tmp_path / "bad" / "store").exists(), "nothing runs, nothing is written"


def test_decontamination_inside_synthesize_and_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A topic whose description is a GSM8K test question leaks it into the (echoing) fake
    backend's text: the decontam stage drops exactly those records, with the item id."""
    from tests.test_decontam import GSM8K

    question = json.loads(GSM8K.read_text().splitlines()[3])["question"]  # item "3"
    topics = {"version": 1, "domains": {**TOPICS["domains"], "Trap": {"Trap": [{"Sprints": question}]}}}
    cfg = write_run_config(tmp_path, topics_doc=topics, plan={"partitions": 2, "prompts_per_partition": 5},
                           decontamination={"benchmarks": [{"name": "gsm8k", "source": str(GSM8K)}]})
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    run_id = result["run_id"]
    rows = _dataset(store, result)
    assert rows and not any("Sprints" in r["topic_path"] for r in rows)
    dropped = []
    for pid in ("p00000", "p00001"):
        dropped += from_parquet_bytes(store.get_bytes(f"runs/{run_id}/rejects/decontam/{pid}.parquet")).to_pylist()
        assert read_manifest(store, run_id, pid, "decontam").status == "succeeded"
    assert dropped and all("Sprints" in r["topic_path"] for r in dropped)
    assert {(r["benchmark"], r["benchmark_item"], r["match_method"]) for r in dropped} == {("gsm8k", "3", "ngram")}
    report = json.loads(store.get_bytes(f"runs/{run_id}/decontam.json"))
    assert report["rejected"] == len(dropped) and report["benchmarks"]["gsm8k"]["items"] == ["3"]
    assert "## Decontamination" in store.get_bytes(f"runs/{run_id}/README.md").decode()
    assert len(rows) + len(dropped) == 10

    # Alone: `hare decontam` on the generated records of the run gives the same verdicts.
    generated = tmp_path / "generated.parquet"
    pq.write_table(from_parquet_bytes(store.get_bytes(f"runs/{run_id}/generated/p00000.parquet")), generated)
    capsys.readouterr()
    assert main(["decontam", str(generated), "--config", str(cfg), "--out", str(tmp_path / "clean.parquet")]) == 0
    kept = pq.read_table(tmp_path / "clean.parquet").to_pylist()
    rejected = pq.read_table(tmp_path / "clean.rejects.parquet").to_pylist()
    assert not any("Sprints" in r["topic_path"] for r in kept)
    assert {r["benchmark_item"] for r in rejected} <= {"3"}
    assert '"rejected"' in capsys.readouterr().out


def test_quality_stage_inside_synthesize_and_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reasoning records without an extractable answer (the fake backend never writes one) and
    records under the minimum length are rejected with their rule; the rest are published."""
    cfg = write_run_config(
        tmp_path, plan={"partitions": 2, "prompts_per_partition": 4},
        quality={"enabled": True, "min_english_prob": 0.0, "min_words": {"default": 5, "explanation": 5000}},
    )
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    run_id = result["run_id"]
    rejects = []
    for pid in ("p00000", "p00001"):
        assert read_manifest(store, run_id, pid, "quality").status == "succeeded"
        rejects += from_parquet_bytes(store.get_bytes(f"runs/{run_id}/rejects/quality/{pid}.parquet")).to_pylist()
    reasons = {(r["kind"], r["reject_reason"]) for r in rejects}
    assert reasons == {("explanation", "too_short"), ("math_word_problem", "no_extractable_answer")}
    assert result["records"] == 0 and len(rejects) == 8  # every record failed one rule
    report = json.loads(store.get_bytes(f"runs/{run_id}/quality.json"))
    assert report["rejected"] == 8 and sum(report["reject_reasons"].values()) == 8
    assert "## Quality" in store.get_bytes(f"runs/{run_id}/README.md").decode()

    generated = tmp_path / "generated.parquet"
    pq.write_table(from_parquet_bytes(store.get_bytes(f"runs/{run_id}/generated/p00000.parquet")), generated)
    capsys.readouterr()
    assert main(["filter", str(generated), "--config", str(cfg), "--out", str(tmp_path / "q.parquet")]) == 0
    assert pq.read_table(tmp_path / "q.rejects.parquet").num_rows == 4
    assert '"rejected": 4' in capsys.readouterr().out


def test_dedup_is_incremental_across_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same config run twice makes the same texts: the second run publishes nothing new,
    and every drop names the first run's record."""
    cfg = write_run_config(tmp_path, plan={"partitions": 2, "prompts_per_partition": 3},
                           dedup={"enabled": True, "semantic": False})
    first = run_synthesize(str(cfg))
    store = open_store(first["store"])
    shards = store.list(f"index/runs/{first['run_id']}/")
    dataset_parts = [p for p in json.loads(store.get_bytes(f"runs/{first['run_id']}/run.json"))["partitions"]
                     if p.startswith("p")]
    assert first["records"] == 6 and len(shards) == len(dataset_parts), "one index shard per dataset partition"
    capsys.readouterr()
    assert main(["run", str(cfg)]) == 0  # the CLI says why nothing new was published
    out = capsys.readouterr().out
    assert "(0 records," in out and "dedup 6 (6 already published by earlier runs)" in out
    (second_id,) = {k.split("/")[1] for k in store.list("runs/")} - {first["run_id"]}
    second = {"run_id": second_id}
    report = json.loads(store.get_bytes(f"runs/{second['run_id']}/dedup.json"))
    assert report.pop("candidate_pairs") >= 6  # at least each record with its published copy
    assert report == {"checked": 6, "kept": 0, "rejected": 6, "reject_reasons": {"duplicate:exact": 6},
                      "by_layer": {"exact": 6}, "against_published_records": 6, "dropped_as_already_published": 6}
    rejects = from_parquet_bytes(store.get_bytes(f"runs/{second['run_id']}/rejects/dedup/p00000.parquet")).to_pylist()
    assert {r["duplicate_of_run"] for r in rejects} == {first["run_id"]}
    assert "## Deduplication" in store.get_bytes(f"runs/{second['run_id']}/README.md").decode()


def test_engine_pool_serves_more_partitions_than_engines_once_each(tmp_path: Path) -> None:
    """Two engine actors, seven partitions: every partition is generated and committed exactly
    once, both engines serve, and the manifests and run.json carry the throughput figures."""
    cfg = write_run_config(tmp_path, plan={"partitions": 6, "prompts_per_partition": 3},
                           model={"backend": "deterministic-fake", "num_cpus": 0, "replicas": 2},
                           ray={"partitions_in_flight_per_engine": 1})
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    run_id = result["run_id"]
    pids = [f"p{i:05d}" for i in range(6)] + ["b00000"]
    manifests = {pid: read_manifest(store, run_id, pid) for pid in pids}
    assert all(m.status == "succeeded" and m.attempts == 1 for m in manifests.values())
    assert {m.stats["engine"] for m in manifests.values()} == {f"hare-engine-{run_id}-0", f"hare-engine-{run_id}-1"}
    for m in manifests.values():
        assert m.stats["requests"] == m.stats["prompts"] and m.stats["output_tokens"] > 0
        assert m.stats["output_tokens_per_s"] > 0 and "generate_seconds" in m.stats and "seconds" in m.stats
    ids = [r["id"] for r in _dataset(store, result)]
    assert len(ids) == len(set(ids)) == 18
    generation = json.loads(store.get_bytes(f"runs/{run_id}/run.json"))["summary"]["generation"]
    assert generation["partitions"] == 7 and generation["engines"] == 2
    assert generation["output_tokens"] == sum(m.stats["output_tokens"] for m in manifests.values())
