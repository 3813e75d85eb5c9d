"""``hare view``: the pages against a local store and a moto S3 store, bad input, bounded reads.

The stores here are written the way the stages write them: records in RECORD_SCHEMA, each
stage's objects committed with ``commit_partition`` (manifest last, sha256 of every object),
dedup rejects made by the dedup stage's own ``apply_verdicts``, decontam rejects in
DECONTAM_REJECT_SCHEMA. What is tested is the viewer reading them, not the stages. The
Chromium test (test_viewer_ui.py) reads the store of real flow runs.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from hare.stages.dedup.layers import Duplicate
from hare.store.layout import (
    card_key,
    generated_key,
    published_index_key,
    published_marker_key,
    records_key,
    records_keys,
    rejects_key,
    run_json,
)
from hare.store.manifest import commit_partition
from hare.store.schema import DECONTAM_REJECT_SCHEMA, RECORD_SCHEMA, record_id
from hare.store import ObjectStore, open_store
from hare.tasks.dedup import apply_verdicts
from hare.viewer import DEFAULT_PORT
from hare.viewer.app import HostCheck, create_app
from tests.conftest import write_run_config
from tests.procs import free_port, hare_env, wait_for

RUN, OLD = "t-20260101T000000Z-bbbbbb", "t-20250101T000000Z-aaaaaa"
KINDS = ["explanation", "math_word_problem"]
TOPICS = ["Mathematics > Arithmetic > Fractions", "Sciences > Physics > Speed"]
AUDIENCES = ["a child", "an adult"]


def text_of(run: str, i: int) -> str:
    return f"Record {i} of {run[:6]}: a short explanation about topic {i % 2} with words kept apart {i}."


def records(run: str, pid: str, first: int, n: int, texts: dict[int, str] | None = None) -> pa.Table:
    rows = []
    for i in range(first, first + n):
        text = (texts or {}).get(i, text_of(run, i))
        rows.append({
            "id": record_id(text), "text": text, "kind": KINDS[i % 2], "topic_path": TOPICS[i % 2],
            "audience": AUDIENCES[(i // 2) % 2], "style": "a Q&A", "prompt": f"Prompt number {i}: explain.",
            "template_id": KINDS[i % 2], "template_version": 3, "model": "SmolLM2-135M-Instruct",
            "model_revision": "r1", "backend": "deterministic-fake",
            "sampling": json.dumps({"temperature": 0.7, "seed": 1000 + i}), "run_id": run, "partition_id": pid,
            "prompt_index": i, "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc), "prompt_tokens": 10,
            "output_tokens": 20, "finish_reason": "stop",
        })
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


def with_scores(t: pa.Table) -> pa.Table:
    return t.append_column("q_words", pa.array([float(len(x.split())) for x in t.column("text").to_pylist()]))


def reject(t: pa.Table, stage: str, reason: str) -> pa.Table:
    return (t.append_column("reject_stage", pa.array([stage] * t.num_rows, pa.string()))
             .append_column("reject_reason", pa.array([reason] * t.num_rows, pa.string())))


def run_config(folder: Path, **overrides: Any) -> dict[str, Any]:
    """A run's config as run.json keeps it: the conftest run file, loaded by the real loader."""
    from hare.config import load_config

    folder.mkdir(parents=True, exist_ok=True)
    bench = folder / "bench.jsonl"
    bench.write_text(json.dumps({"question": "What is 2+2?", "answer": "4"}) + "\n")
    sections = {"quality": {"enabled": True}, "dedup": {"enabled": True},
                "decontamination": {"benchmarks": [{"name": "gsm8k", "source": str(bench)}]}, **overrides}
    return load_config(write_run_config(folder, **sections)).to_jsonable()


def write_run(store: ObjectStore, run: str, partitions: dict[str, int], config: dict[str, Any],
              status: str = "succeeded", texts: dict[int, str] | None = None,
              dups: dict[str, dict[int, tuple[str, str]]] | None = None,
              committed: list[str] | None = None, through: str = "dedup") -> None:
    """A run of ``partitions`` ({pid: records}) whose ``committed`` partitions (default: all) are
    committed stage by stage up to ``through``. In every partition the first record fails
    generation, the second quality (too_short), the third decontam (gsm8k); ``dups[pid]``:
    {prompt_index: (id it duplicates, its run)} for dedup."""
    from hare.viewer.data import run_stages

    pids = list(partitions)
    store.put_bytes(run_json(run), json.dumps({
        "run_id": run, "name": "t", "status": status, "started_at": "2026-01-01T00:00:00Z",
        "finished_at": None if status == "running" else "2026-01-01T00:10:00Z", "partitions": pids,
        "config": config, "config_hash": "0" * 64, "code_version": "test"}).encode())
    stages = run_stages({"config": config})
    stages = stages[:stages.index(through) + 1]
    for pid in pids if committed is None else committed:
        first = pids.index(pid) * 100
        gen = records(run, pid, first, partitions[pid], texts)
        bad, scored = gen.slice(0, 1), gen.slice(1)
        commit_partition(store, run, pid, "generate", {
            generated_key(run, pid): scored,
            rejects_key(run, "generate", pid): reject(bad, "generate", "engine_rejected: poisoned prompt")},
            {"records": scored.num_rows, "rejects": 1}, 1)
        scored = with_scores(scored)
        if "quality" in stages:
            commit_partition(store, run, pid, "quality", {
                records_key(run, pid, "quality"): scored.slice(1),
                rejects_key(run, "quality", pid): reject(scored.slice(0, 1), "quality", "too_short")}, {}, 1)
            scored = scored.slice(1)
        if "decontam" in stages:
            hit = reject(scored.slice(0, 1), "decontam", "contaminated:ngram:gsm8k")
            hit = pa.Table.from_pylist([{**r, "benchmark": "gsm8k", "benchmark_item": "gsm8k-test-17",
                                         "match_method": "ngram", "match_score": 0.83} for r in hit.to_pylist()],
                                       schema=pa.schema([*DECONTAM_REJECT_SCHEMA, pa.field("q_words", pa.float64())]))
            commit_partition(store, run, pid, "decontam", {records_keys(run, pid, "decontam")[-1]: scored.slice(1),  # an earlier run's folder
                                                           rejects_key(run, "decontam", pid): hit}, {}, 1)
            scored = scored.slice(1)
        if "features" in stages:  # features adds objects of its own, no records
            commit_partition(store, run, pid, "features", {f"runs/{run}/features/{pid}.parquet":
                                                           scored.select(["id"])}, {}, 1)
        if "dedup" in stages:
            index = {r["prompt_index"]: i for i, r in enumerate(scored.select(["prompt_index"]).to_pylist())}
            verdicts = {index[p]: (Duplicate("exact", 0, 1.0), of_id, of_run)
                        for p, (of_id, of_run) in (dups or {}).get(pid, {}).items()}
            kept, rejects = apply_verdicts(scored, verdicts)
            commit_partition(store, run, pid, "dedup", {records_key(run, pid, "dedup"): kept,
                                                        rejects_key(run, "dedup", pid): rejects}, {}, 1)
    if status == "succeeded":
        store.put_bytes(card_key(run), f"# t ({run})\n\n| figure | value |\n|---|---|\n| records | 12 |\n"
                                       f"| rejects | 9 |\n\n## Records by task kind\n".encode())


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    return run_config(tmp_path / "cfg")


@pytest.fixture
def store(store_url: str, config: dict[str, Any]) -> ObjectStore:
    """Two runs: OLD (published, its p00001 holds record 103) and RUN, whose p00000 record 4
    duplicates OLD's record 103 and record 5 duplicates RUN's own p00001 record 106."""
    st = open_store(store_url)
    write_run(st, OLD, {"p00000": 6, "p00001": 6}, config)
    st.put_bytes(published_index_key(OLD, "p00001"),
                 _parquet(pa.table({"id": [record_id(text_of(OLD, i)) for i in (103, 104, 105)]})))
    st.put_bytes(published_marker_key(OLD), b'{"run_id": "%s"}' % OLD.encode())
    shared = {4: text_of(OLD, 103), 5: text_of(RUN, 106)}
    write_run(st, RUN, {"p00000": 8, "p00001": 8}, config, texts=shared,
              dups={"p00000": {4: (record_id(text_of(OLD, 103)), OLD), 5: (record_id(text_of(RUN, 106)), RUN)}})
    return st


def _parquet(t: pa.Table) -> bytes:
    from hare.store.tables import to_parquet_bytes

    return to_parquet_bytes(t)


# What a browser sends to a viewer on its default address (the app's default ``bound``).
VIEWER_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


def client_for(st: ObjectStore) -> TestClient:
    return TestClient(create_app(st.url, st), base_url=VIEWER_URL, raise_server_exceptions=False)


def text(html: str) -> str:
    """A page as its reader sees it: tags dropped, entities decoded, whitespace folded."""
    import html as h

    return " ".join(h.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_runs_page_lists_runs_with_status_and_card_figures(store: ObjectStore) -> None:
    page = client_for(store).get("/")
    assert page.status_code == 200
    body = text(page.text)
    assert "2 in the store" in body and RUN in body and OLD in body
    assert "succeeded" in body and "records 12" in body and "rejects 9" in body


def test_run_page_shows_partitions_and_their_stage_commits(store: ObjectStore) -> None:
    body = text(client_for(store).get(f"/runs/{RUN}").text)
    assert "2 of 2 committed" in body and "p00000" in body and "p00001" in body
    assert "partition generate quality decontam features dedup records rejects" in body  # the run's stages
    assert "p00000 ✓ ✓ ✓ ✓ ✓ 7 1 records" in body


def test_baseline_partition_is_generation_only(tmp_path: Path, config: dict[str, Any]) -> None:
    st = open_store(f"file://{tmp_path / 'store'}")
    write_run(st, RUN, {"p00000": 4, "b00000": 3}, config, committed=["p00000"])
    write_run(st, RUN, {"p00000": 4, "b00000": 3}, config, committed=["b00000"], through="generate")
    c = client_for(st)
    assert "b00000 baseline ✓ – – – – 2 1 records" in text(c.get(f"/runs/{RUN}").text)
    body = text(c.get(f"/runs/{RUN}/records?partition=b00000").text)
    assert "3 of 3 records in b00000" in body and "still to come" not in body


def test_records_filter_to_rejects_by_reason_kind_and_search(store: ObjectStore) -> None:
    c = client_for(store)
    all_ = text(c.get(f"/runs/{RUN}/records?partition=p00000").text)
    assert "8 of 8 records in p00000" in all_
    rej = c.get(f"/runs/{RUN}/records", params={"partition": "p00000", "outcome": "rejected"}).text
    assert "5 of 8 records in p00000 match" in text(rej)  # generate, quality, decontam, 2 dedup
    assert "kept" not in re.findall(r'<span class="(?:ok|bad)">(\w+)</span>', rej)
    by_reason = text(c.get(f"/runs/{RUN}/records", params={"partition": "p00000",
                                                              "reason": "dedup: duplicate:exact"}).text)
    assert "2 of 8 records in p00000 match" in by_reason
    kept = text(c.get(f"/runs/{RUN}/records", params={"partition": "p00000", "outcome": "kept"}).text)
    assert "3 of 8 records in p00000 match" in kept
    math = text(c.get(f"/runs/{RUN}/records", params={"partition": "p00000", "kind": "math_word_problem",
                                                         "domain": "Sciences", "audience": "a child"}).text)
    assert "2 of 8 records in p00000 match" in math  # records 1 and 5 (odd, (i // 2) % 2 == 0)
    found = text(c.get(f"/runs/{RUN}/records", params={"partition": "p00000", "q": "WORDS KEPT APART 6."}).text)
    assert "1 of 8 records in p00000 match" in found and "Record 6 of t-2026" in found
    other = text(c.get(f"/runs/{RUN}/records", params={"partition": "p00001"}).text)
    assert "8 of 8 records in p00001" in other and "Record 106" in other


def test_record_page_shows_lineage_scores_and_why_dropped(store: ObjectStore) -> None:
    c = client_for(store)
    quality = text(c.get(f"/runs/{RUN}/records/p00000/1").text)
    assert "rejected" in quality and "reason too_short" in quality and "rule too_short" in quality
    assert "Prompt number 1: explain." in quality and "template explanation v3" not in quality
    assert "template math_word_problem v3" in quality and "seed 1001" in quality
    assert "model SmolLM2-135M-Instruct @ r1" in quality and "words 15" in quality
    decontam = text(c.get(f"/runs/{RUN}/records/p00000/2").text)
    assert "benchmark gsm8k" in decontam and "benchmark item gsm8k-test-17" in decontam
    assert "match ngram (score 0.830)" in decontam
    kept = text(c.get(f"/runs/{RUN}/records/p00000/3").text)
    assert "kept" in kept and "Why it was dropped" not in kept


def test_duplicate_links_to_the_record_in_another_partition_and_another_run(store: ObjectStore) -> None:
    c = client_for(store)
    page = c.get(f"/runs/{RUN}/records/p00000/5").text
    assert "reason duplicate:exact" in text(page) and "in this run" in text(page)
    link = re.search(r'id="duplicate-of"><a href="([^"]+)"', page).group(1).replace("&amp;", "&")
    hop = c.get(link, follow_redirects=False)
    assert hop.status_code == 303 and hop.headers["location"] == f"/runs/{RUN}/records/p00001/106"
    linked = text(c.get(hop.headers["location"]).text)
    assert "Record 106 partition p00001 kept" in linked and text_of(RUN, 106) in linked

    page = c.get(f"/runs/{RUN}/records/p00000/4").text
    assert f"in run {OLD}" in text(page)
    link = re.search(r'id="duplicate-of"><a href="([^"]+)"', page).group(1).replace("&amp;", "&")
    hop = c.get(link, follow_redirects=False)
    assert hop.headers["location"] == f"/runs/{OLD}/records/p00001/103"
    assert text_of(OLD, 103) in text(c.get(hop.headers["location"]).text)


def test_live_view_shows_partitions_as_they_commit(store_url: str, config: dict[str, Any]) -> None:
    st = open_store(store_url)
    write_run(st, RUN, {"p00000": 5, "p00001": 5}, config, status="running", committed=["p00000"],
              through="quality")
    c = client_for(st)
    page = c.get(f"/runs/{RUN}").text
    assert 'http-equiv="refresh"' in page and "1 of 2 committed" in text(page)
    assert "not committed yet" in text(page)
    waiting = c.get(f"/runs/{RUN}/records?partition=p00001")
    assert waiting.status_code == 409 and "partition p00001 of run" in text(waiting.text)
    write_run(st, RUN, {"p00000": 5, "p00001": 5}, config, status="running", committed=["p00001"],
              through="generate")  # p00001: generated, the later stages still to come
    assert "2 of 2 committed" in text(c.get(f"/runs/{RUN}").text)
    body = text(c.get(f"/runs/{RUN}/records?partition=p00001").text)
    assert "5 of 5 records in p00001" in body and "still to come: quality, decontam, features, dedup" in body


def test_a_page_reads_one_partition_never_the_run(tmp_path: Path, config: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted reads: the records page of p00001 GETs no object of another partition; the run
    page lists its partitions a page at a time."""
    st = open_store(f"file://{tmp_path / 'store'}")
    pids = {f"p{i:05d}": 4 for i in range(6)}
    write_run(st, RUN, pids, config)
    monkeypatch.setattr("hare.viewer.app.PARTITIONS_PER_PAGE", 4)
    second = text(client_for(st).get(f"/runs/{RUN}?page=2").text)
    assert "6 of 6 committed" in second and "p00004" in second and "p00005" in second and "p00000" not in second
    assert "partitions 5–6" in second
    got: list[str] = []
    real = st.get_bytes

    def counting(key: str) -> bytes:
        got.append(key)
        return real(key)

    st.get_bytes = counting  # type: ignore[method-assign]
    assert client_for(st).get(f"/runs/{RUN}/records?partition=p00001").status_code == 200
    data = [k for k in got if k.endswith(".parquet")]
    assert data and all("/p00001." in k for k in data), data


def test_bad_input_is_a_clear_page_and_a_log_line(store: ObjectStore, caplog: pytest.LogCaptureFixture) -> None:
    c = client_for(store)
    with caplog.at_level(logging.WARNING, logger="hare.viewer"):
        r = c.get("/runs/no-such-run")
    assert r.status_code == 404 and f"no run 'no-such-run' in {store.url}" in text(r.text)
    assert "no run 'no-such-run'" in caplog.text
    for url, status, says in [
        (f"/runs/{RUN}/records?partition=p00009", 404, "has no partition 'p00009'"),
        (f"/runs/{RUN}/records?partition=p00000&page=x", 400, "page='x' is not a whole number"),
        (f"/runs/{RUN}/records/p00000/999", 404, "no record with prompt_index 999"),
        (f"/runs/{RUN}/records/p00000/abc", 400, "'abc' is not a prompt_index"),
        (f"/runs/{RUN}/find/{'0' * 32}", 404, f"no kept record {'0' * 32}"),
        ("/nothing/here", 404, "no page at /nothing/here"),
    ]:
        r = c.get(url)
        assert r.status_code == status and says in text(r.text), (url, text(r.text))
        assert "Traceback" not in r.text

    store.put_bytes(records_key(RUN, "p00001", "dedup"), b"not parquet at all")
    r = c.get(f"/runs/{RUN}/records?partition=p00001")
    assert r.status_code == 500 and "dedup/p00001.parquet does not match its dedup commit" in text(r.text)
    store.delete(rejects_key(RUN, "quality", "p00000"))
    r = client_for(store).get(f"/runs/{RUN}/records/p00000/1")  # a new viewer: p00000 is in the first one's cache
    assert r.status_code == 500 and "rejects/quality/p00000.parquet is missing although the quality commit" in text(r.text)
    store.put_bytes(run_json(OLD), b"{truncated")
    r = c.get(f"/runs/{OLD}")
    assert r.status_code == 500 and "is not readable JSON" in text(r.text)
    assert OLD in text(c.get("/").text)  # the run list still lists it, with the problem on its row
    assert "Traceback" not in r.text


def test_unreachable_store_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("HARE_VIEW_RETRY_SECONDS", "0.5")
    c = TestClient(create_app("s3://hare-view-test/prefix"), base_url=VIEWER_URL, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="hare.viewer"):
        r = c.get("/")
    assert r.status_code == 503 and "cannot read the store s3://hare-view-test/prefix" in text(r.text)
    assert "Traceback" not in r.text and "Store unreachable" in caplog.text + r.text
    assert "s3://hare-view-test/prefix" in caplog.text


def test_lineage_page_lists_events(store: ObjectStore) -> None:
    from hare.store import lineage

    lineage.emit(store, RUN, "synthesize.generate.p00000", "COMPLETE",
                 outputs=[lineage.dataset(store.uri(generated_key(RUN, "p00000")))])
    body = text(client_for(store).get(f"/runs/{RUN}/lineage").text)
    assert "1 OpenLineage events" in body and "synthesize.generate.p00000 COMPLETE" in body
    assert "generated/p00000.parquet" in body


def test_hare_view_serves_on_localhost_only(tmp_path: Path, config: dict[str, Any]) -> None:
    st = open_store(f"file://{tmp_path / 'store'}")
    write_run(st, RUN, {"p00000": 4}, config)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hare.cli", "view", RUN, "--store", str(tmp_path / "store"),
                             "--port", str(port)], env=hare_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/runs/{RUN}" in line
        page = wait_for(lambda: _get(f"http://127.0.0.1:{port}/runs/{RUN}"), 30, "hare view")
        assert "1 of 1 committed" in text(str(page))
        import psutil

        listening = {c.laddr for c in psutil.Process(proc.pid).net_connections("inet") if c.status == "LISTEN"}
        assert listening == {("127.0.0.1", port)}  # the loopback address only, never 0.0.0.0
        # the server checks the Host against the port it really bound (DNS rebinding defence)
        assert "1 of 1 committed" in text(_get(f"http://127.0.0.1:{port}/runs/{RUN}", f"localhost:{port}") or "")
        assert _status(f"http://127.0.0.1:{port}/runs/{RUN}", f"rebind.example:{port}") == 421
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _get(url: str, host: str | None = None) -> str | None:
    try:
        return urllib.request.urlopen(_request(url, host), timeout=2).read().decode()
    except OSError:
        return None


def _request(url: str, host: str | None) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Host": host} if host else {})


def _status(url: str, host: str) -> int:
    import urllib.error

    try:
        return urllib.request.urlopen(_request(url, host), timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("host", ["rebind.example:8765", "127.0.0.1.rebind.example:8765", "localhost:8766",
                                  "127.0.0.1:80", "127.0.0.1", "", "[::1]:bad", "localhost:8765:8765"])
def test_a_foreign_host_header_is_refused(store: ObjectStore, host: str, caplog: pytest.LogCaptureFixture) -> None:
    """DNS rebinding: the attacker's page reaches 127.0.0.1 under its own name; only the viewer's
    own address and port (on loopback: localhost, 127.0.0.1, [::1]) get pages."""
    with caplog.at_level(logging.WARNING, logger="hare.viewer"):
        r = client_for(store).get(f"/runs/{RUN}", headers={"host": host})
    assert r.status_code == 421, r.text
    assert "answers only to its own address (127.0.0.1:8765)" in r.text and RUN not in r.text
    assert "-> 421" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765"])
def test_the_viewers_own_addresses_are_served(store: ObjectStore, host: str) -> None:
    r = client_for(store).get(f"/runs/{RUN}", headers={"host": host})
    assert r.status_code == 200 and f"run {RUN}" in text(r.text)


def test_host_check_of_other_binds() -> None:
    lan = HostCheck.for_bind("10.1.2.3", 9000)
    assert lan.allows("10.1.2.3:9000")
    assert not lan.allows("localhost:9000") and not lan.allows("10.1.2.4:9000") and not lan.allows("10.1.2.3:9001")
    v6 = HostCheck.for_bind("::1", 9000)
    assert v6.allows("[::1]:9000") and v6.allows("localhost:9000") and not v6.allows("[::1]:9001")
    anywhere = HostCheck.for_bind("0.0.0.0", 9000)
    assert anywhere.allows("192.168.0.7:9000") and anywhere.allows("localhost:9000")
    assert not anywhere.allows("rebind.example:9000") and not anywhere.allows("192.168.0.7:9001")


def test_every_response_forbids_scripts_and_frames(store: ObjectStore) -> None:
    """The pages need no script (the templates have none), so the policy allows none, and no site may
    frame them; the headers are on pages, static files, error pages and the 421 alike."""
    templates = (Path(__file__).resolve().parent.parent / "hare" / "viewer" / "templates").glob("*.html")
    assert not any(re.search(r"<script|\son[a-z]+=", t.read_text(), re.I) for t in templates)
    c = client_for(store)
    responses = [c.get("/"), c.get(f"/runs/{RUN}"), c.get("/static/viewer.css"), c.get("/nothing/here"),
                 c.get("/runs/no-such-run"), c.get("/", headers={"host": "rebind.example:8765"})]
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 404, 421]
    for r in responses:
        assert r.headers["x-frame-options"] == "DENY", r.url
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp

