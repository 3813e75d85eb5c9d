"""How a run ended is recorded in one place (flows/outcome.py): run.json's status and summary,
and the run's lineage event, for success, some failed partitions, and an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hare.flows.outcome import RunIncomplete, run_outcome
from hare.store import open_store
from hare.store.layout import lineage_key, run_json


@pytest.fixture()
def store(tmp_path: Path):  # noqa: ANN201
    s = open_store(str(tmp_path / "store"))
    s.put_bytes(run_json("r"), json.dumps({"run_id": "r", "status": "running"}).encode())
    return s


def _status(store) -> tuple[str, dict]:  # noqa: ANN001
    info = json.loads(store.get_bytes(run_json("r")))
    return info["status"], info["summary"]


def test_success_records_the_totals(store) -> None:  # noqa: ANN001
    with run_outcome(store, "r") as outcome:
        outcome.succeeded({"records": 3})
    assert _status(store) == ("succeeded", {"records": 3})
    assert store.exists(lineage_key("r", "synthesize.complete"))


def test_failed_partitions_make_it_incomplete(store) -> None:  # noqa: ANN001
    with pytest.raises(RunIncomplete), run_outcome(store, "r"):
        raise RunIncomplete("1 failed", {"failed_partitions": ["p00001"]})
    assert _status(store) == ("incomplete", {"failed_partitions": ["p00001"]})
    assert store.exists(lineage_key("r", "synthesize.fail"))


def test_any_other_error_fails_it_naming_the_error(store) -> None:  # noqa: ANN001
    with pytest.raises(ValueError), run_outcome(store, "r"):
        raise ValueError("engines gone")
    assert _status(store) == ("failed", {"error": "ValueError: engines gone"})


def test_an_interrupt_is_left_to_the_driver(store) -> None:  # noqa: ANN001
    with pytest.raises(KeyboardInterrupt), run_outcome(store, "r"):
        raise KeyboardInterrupt
    assert json.loads(store.get_bytes(run_json("r")))["status"] == "running"


def test_a_body_without_totals_is_a_bug_not_a_success(store) -> None:  # noqa: ANN001
    with pytest.raises(RuntimeError, match="without its totals"), run_outcome(store, "r"):
        pass
    assert json.loads(store.get_bytes(run_json("r")))["status"] == "running"
