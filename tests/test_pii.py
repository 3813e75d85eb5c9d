"""Stage ``pii`` (tasks/pii.py): personal data found and replaced by placeholders, counted per
kind; what is not personal data (years, versions, times, prices, long numbers that fail Luhn)
is left alone; the stage runs in its place in the one stage list, on its own config section."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from hare.config import PIIConfig, RunConfig, load_config
from hare.store.manifest import commit_partition
from hare.store.schema import record_id
from hare.stages.base import run_record_stage
from hare.store import open_store
from hare.store.tables import from_parquet_bytes
from hare.tasks.pii import Pii, luhn_ok, redact
from hare.tasks.stages import stage_names

CFG = PIIConfig(enabled=True)

PERSONAL = [
    ("Write to jane.doe+news@example.co.uk for details.", "email", "Write to [EMAIL] for details."),
    ("Call (415) 555-2671 after nine.", "phone", "Call [PHONE] after nine."),
    ("Our London office: +44 20 7946 0958.", "phone", "Our London office: [PHONE]."),
    ("The server at 192.168.10.4 answered.", "ip_address", "The server at [IP_ADDRESS] answered."),
    ("Ping 2001:db8::8a2e:370:7334 first.", "ip_address", "Ping [IP_ADDRESS] first."),
    ("Card 4111 1111 1111 1111 was declined.", "card_number", "Card [CARD_NUMBER] was declined."),
    ("Card 5500-0000-0000-0004 expired.", "card_number", "Card [CARD_NUMBER] expired."),
]

NOT_PERSONAL = [
    "In 1969 about 600 million people watched the landing, version 1.2.3 shipped at 12:30:45.",
    "The number 1234 5678 9012 3456 fails the Luhn check; pi is 3.14159265358979.",
    "A crate holds 24 bottles; 7 crates hold 168 bottles and cost $1,299.99 in total.",
    "Version 10.0.0.1.5 of the tool and the ratio 1:2:3 are not addresses.",
    "Email the teacher (her address is on the syllabus) or use @mentions in the forum.",
]


@pytest.mark.parametrize("text,kind,expected", PERSONAL)
def test_each_kind_is_replaced_by_its_placeholder(text: str, kind: str, expected: str) -> None:
    assert redact(text, CFG) == (expected, {kind: 1})


@pytest.mark.parametrize("text", NOT_PERSONAL)
def test_what_is_not_personal_data_is_left_alone(text: str) -> None:
    assert redact(text, CFG) == (text, {})


def test_only_the_configured_kinds_and_placeholder() -> None:
    text = "Mail a@b.org or call +1 212-736-5000."
    cfg = PIIConfig(enabled=True, kinds=["email"], placeholder="<{KIND}>")
    assert redact(text, cfg) == ("Mail <EMAIL> or call +1 212-736-5000.", {"email": 1})
    both, counts = redact(text, CFG)
    assert both == "Mail [EMAIL] or call [PHONE]." and counts == {"email": 1, "phone": 1}


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("1234567890123456")


def _records(texts: list[str]) -> pa.Table:
    return pa.table({"id": [record_id(t) for t in texts], "text": texts, "kind": ["explanation"] * len(texts)})


def test_the_stage_in_a_run_redacts_rehashes_and_counts(tmp_path: Path) -> None:
    """Run by the one wrapper on a committed partition: every record kept (nothing rejected),
    the redacted ones with a new id and a ``pii`` column; the commit's counts and extras merge
    into the report and the card section counts per kind."""
    store = open_store(str(tmp_path / "store"))
    cfg = RunConfig(name="t", plan={"partitions": 1, "prompts_per_partition": 3}, pii={"enabled": True})
    texts = [PERSONAL[0][0], NOT_PERSONAL[0], PERSONAL[3][0] + " " + PERSONAL[5][0]]
    commit_partition(store, "r", "p00000", "quality", {"runs/r/quality/p00000.parquet": _records(texts)}, {}, 1)
    stats = run_record_stage(store, cfg, "r", "p00000", Pii(), "quality")
    assert (stats["checked"], stats["kept"], stats["rejected"], stats["reject_reasons"]) == (3, 3, 0, {})
    assert stats["aggregate"] == {"redacted": {"card_number": 1, "email": 1, "ip_address": 1}, "records_redacted": 2}
    rows = from_parquet_bytes(store.get_bytes("runs/r/pii/p00000.parquet")).to_pylist()
    assert rows[0]["text"] == PERSONAL[0][2] and rows[0]["id"] == record_id(PERSONAL[0][2])
    assert rows[1]["text"] == NOT_PERSONAL[0] and rows[1]["id"] == record_id(NOT_PERSONAL[0])
    assert [json.loads(r["pii"]) for r in rows] == [{"email": 1}, {}, {"card_number": 1, "ip_address": 1}]
    report = Pii().report([stats, stats])
    assert report["checked"] == 6 and report["redacted"]["email"] == 2 and report["records_redacted"] == 4
    card = "\n".join(Pii().card_section(report, cfg))
    assert "## PII" in card and "| email | 2 |" in card and "| phone | 0 |" in card


def test_its_place_in_the_stage_list_and_the_config_hash(tmp_path: Path) -> None:
    """Off by default (a config without it hashes as before it existed); on, it runs after
    quality and before decontam, and changing one of its settings changes the hash."""
    base = {"name": "t", "plan": {"partitions": 1, "prompts_per_partition": 1},
            "decontam": {"benchmarks": [{"name": "g", "source": "data/benchmarks/gsm8k_test.jsonl"}]}}
    off = RunConfig.model_validate(base)
    assert "pii" not in stage_names(off)
    assert RunConfig.model_validate({**base, "pii": {"enabled": False, "phone_region": "GB"}}).config_hash() == \
        off.config_hash()
    on = RunConfig.model_validate({**base, "pii": {"enabled": True}})
    assert stage_names(on) == ["generate", "quality", "pii", "decontam", "features", "dedup"]
    assert on.config_hash() != off.config_hash()
    assert RunConfig.model_validate({**base, "pii": {"enabled": True, "kinds": ["email"]}}).config_hash() != \
        on.config_hash()


def test_hare_pii_on_any_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hare.cli.main import main

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"content": t}) + "\n" for t in [PERSONAL[1][0], NOT_PERSONAL[2]]))
    assert main(["pii", str(src), "--text-field", "content", "--out", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["content"] for r in out] == [PERSONAL[1][2], NOT_PERSONAL[2]]
    report = json.loads(capsys.readouterr().out.rsplit("}\n", 1)[0] + "}")
    assert report["checked"] == 2 and report["redacted"] == {"phone": 1}


def test_a_run_file_turns_it_on(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: t\nplan: {partitions: 1, prompts_per_partition: 1}\npii: {enabled: true, kinds: [phone]}\n")
    assert load_config(path).pii.kinds == ["phone"]
    path.write_text("name: t\nplan: {partitions: 1, prompts_per_partition: 1}\npii: {enabled: true, kinds: [ssn]}\n")
    with pytest.raises(Exception, match="pii.kinds"):
        load_config(path)
