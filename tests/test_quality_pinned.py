"""The quality rules keep their verdicts and scores on pinned records (tests/quality_pins.py).

Pinned before the rules were made fast: the demo run's 64 records, 586 records cut from the
public-domain corpus with variants that trip each rule, and 11 hand-written non-English, code
and mixed texts. A verdict may change only where the language identifier changed it, listed in
``LANGUAGE_ID_CHANGES`` (argued in docs/quality-dedup.md).
"""

import math

import pyarrow as pa
import pytest

from hare.config import QualityConfig
from hare.stages.quality import SCORE_NAMES, judge
from hare.tasks.quality import filter_table
from tests import quality_pins

CFG = QualityConfig()
PINS = quality_pins.load()
# record id -> its verdict under CLD2 (pinned under langid); each argued in docs/quality-dedup.md
LANGUAGE_ID_CHANGES: dict[str, str | None] = {
    "other-7": "no_extractable_answer",  # code only: langid 0.49 English, CLD2 reads its identifiers as English
}
LANGUAGE_SCORES = {"english_prob"}  # the identifier's own figure: compared through the verdicts only


def _records(group: str) -> list[dict]:
    texts = {"demo": quality_pins.demo_records, "prose": quality_pins.prose_records,
             "other": quality_pins.other_records}[group]()
    assert [r["id"] for r in texts] == [p["id"] for p in PINS[group]], f"{group}: records no longer match the pins"
    return [{**r, "pin": p} for r, p in zip(texts, PINS[group])]


def _expected(pin: dict) -> str | None:
    return LANGUAGE_ID_CHANGES.get(pin["id"], pin["reason"])


def _same_scores(record_id: str, got: dict[str, float], pinned: list[float], kept: bool) -> None:
    for name, want in zip(PINS["score_names"], pinned):
        if name in LANGUAGE_SCORES:
            continue
        value = got[name]
        if math.isnan(value):  # a rule skipped after an earlier reject
            assert not kept, f"{record_id}: kept with no {name} score"
            continue
        assert value == pytest.approx(want, rel=1e-12, abs=1e-15), f"{record_id}: {name}"


@pytest.mark.parametrize("group", ["demo", "prose", "other"])
def test_verdicts_and_scores_as_pinned(group: str) -> None:
    assert PINS["score_names"] == list(SCORE_NAMES)
    changed = []
    for r in _records(group):
        v = judge(r["text"], r["kind"], r["finish_reason"], CFG)
        if v.reason != _expected(r["pin"]):
            changed.append((r["id"], r["pin"]["reason"], v.reason))
            continue
        _same_scores(r["id"], v.scores, r["pin"]["scores"], v.reason is None)
    assert not changed, f"verdicts changed (id, pinned, now): {changed}"


def test_table_stage_gives_the_pinned_verdicts() -> None:
    """The stage over one table of every pinned record: the same rejects, reasons and kept scores."""
    records = _records("demo") + _records("prose") + _records("other")
    table = pa.table({"id": [r["id"] for r in records], "text": [r["text"] for r in records],
                      "kind": [r["kind"] for r in records],
                      "finish_reason": [r["finish_reason"] for r in records]})
    kept, rejects = filter_table(table, CFG)
    want = {r["id"]: _expected(r["pin"]) for r in records}
    got = {**dict.fromkeys(kept.column("id").to_pylist()),
           **dict(zip(rejects.column("id").to_pylist(), rejects.column("reject_reason").to_pylist()))}
    assert got == want
    pins = {r["id"]: r["pin"]["scores"] for r in records}
    for row in kept.to_pylist():
        _same_scores(row["id"], {n: row[f"q_{n}"] for n in SCORE_NAMES}, pins[row["id"]], True)
