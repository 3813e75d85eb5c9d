"""``hare view`` in headless Chromium over the store of two real flow runs.

The runs are the synthesize flow on real Prefect and Ray with the deterministic-fake backend
(named so in every record; the model is not what is tested): the second run of the same config
writes the same texts, so its dedup stage drops them as duplicates of the first run's published
records, and a poisoned topic makes generation rejects. The browser opens the second run, goes
to its records, filters to the dedup rejects, opens one, reads its reason, follows the link to
the record it duplicates and reads that one: page text asserted at every step. With
HARE_SCREENSHOTS set, the screenshots land there (docs/img/viewer-*.png come from this test).
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

import pytest

from tests.conftest import TOPICS, write_run_config
from tests.procs import free_port, hare_env, wait_for
from tests.test_serve import CHROMIUM, _chromium

# Without Debian's chromium these tests skip; under CI=true a skip fails the run (tests/conftest.py),
# and .ci/run installs chromium or stops.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed "
                                                                            "(.ci/run installs it)")]

POISONED = {"version": 1, "domains": {**TOPICS["domains"], "Trap": {"Trap": ["POISON topic"]}}}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, str]:
    from hare.flows.synthesize import run_synthesize

    folder = tmp_path_factory.mktemp("viewer-ui")
    cfg = write_run_config(folder, topics_doc=POISONED, plan={"partitions": 3, "prompts_per_partition": 6},
                           quality={"enabled": True}, dedup={"enabled": True})
    first = run_synthesize(str(cfg))["run_id"]
    second = run_synthesize(str(cfg))["run_id"]
    return {"store": str(folder / "store"), "first": first, "second": second}


@pytest.fixture(scope="module")
def viewer(two_runs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``hare view`` as a user starts it, on a free port; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("viewer-log") / "view.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hare.cli", "view", "--store", two_runs["store"],
                                 "--port", str(port)], env=hare_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "hare view:" in log.read_text(), 60, "hare view to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def page_text(dom: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)[^>]*>.*?</\1>", "", dom,
                                                                  flags=re.S))).split())


def test_open_run_filter_rejects_open_dropped_record_and_its_duplicate(
        viewer: str, two_runs: dict[str, str], tmp_path: Path) -> None:
    shots = Path(os.environ.get("HARE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    first, second = two_runs["first"], two_runs["second"]

    runs = page_text(_chromium(f"{viewer}/", shots / "viewer-runs.png"))
    assert first in runs and second in runs and "succeeded" in runs

    dom = _chromium(f"{viewer}/runs/{second}", shots / "viewer-run.png")
    assert "4 of 4 committed" in page_text(dom) and "b00000 baseline" in page_text(dom)
    records_href = html.unescape(re.search(r'href="(/runs/[^"]+/records\?partition=p00000)"', dom).group(1))

    dom = _chromium(f"{viewer}{records_href}", tmp_path / "all.png")
    reasons = re.findall(r'<option value="(dedup: [^"]+)"', dom)
    assert reasons, "the reason filter offers the dedup rejects"
    # what the filter form submits: outcome and reason as query parameters
    filtered = f"{viewer}{records_href}&" + urlencode({"outcome": "rejected", "reason": reasons[0]})
    dom = _chromium(filtered, shots / "viewer-rejects.png")
    text = page_text(dom)
    assert re.search(r"\d+ of \d+ records in p00000 match", text)
    assert "kept" not in re.findall(r'<span class="(?:ok|bad)">(\w+)</span>', dom)
    record_href = html.unescape(re.search(r'<td><a href="(/runs/[^"]+/records/p00000/\d+)"', dom).group(1))

    dom = _chromium(f"{viewer}{record_href}", shots / "viewer-dropped-record.png")
    text = page_text(dom)
    assert "Why it was dropped" in text and "stage dedup" in text and f"reason {reasons[0][7:]}" in text
    assert f"in run {first}" in text
    dropped_text = page_text(re.search(r'<pre class="text" id="text">(.*?)</pre>', dom, re.S).group(1))
    dup_href = html.unescape(re.search(r'id="duplicate-of"><a href="([^"]+)"', dom).group(1))

    dom = _chromium(f"{viewer}{dup_href}", shots / "viewer-linked-record.png")  # /find/<id> redirects
    text = page_text(dom)
    assert f"run {first}" in text and "kept" in text and "Why it was dropped" not in text
    assert dropped_text in text, "the linked record is the one the dropped record duplicates (same text)"

    dom = _chromium(f"{viewer}/runs/no-such-run", tmp_path / "missing.png")
    assert "no run 'no-such-run'" in page_text(dom) and "Traceback" not in dom
