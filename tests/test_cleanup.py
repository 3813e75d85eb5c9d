"""The cleanup stage: named chatter patterns stripped and recorded, chatter-only records rejected."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from hare.config import CleanupConfig, ConfigError, load_config
from hare.store.schema import record_id
from hare.tasks.cleanup import clean_table, load_patterns, strip_chatter
from tests.conftest import write_run_config

PATTERNS = load_patterns(str(CleanupConfig().patterns))


@pytest.mark.parametrize(("text", "left", "names"), [
    ("Here's a possible textbook passage:\n\n# Fractions\nA fraction is a part of a whole.",
     "# Fractions\nA fraction is a part of a whole.", ["heres_a"]),
    # a long preamble line (150 characters before its colon, written by SmolLM2 in a demo run)
    ("Here's an example of a simple and practical explanation in English that you can understand by yourself "
     "without needing any special software or preparation:\n\n1. Introduction: derivatives.",
     "1. Introduction: derivatives.", ["heres_a"]),
    # an announcing first paragraph with no colon (SmolLM2, a fresh-clone demo run)
    ("Here is a sample of a work of art that was inspired by the book titled \"The Art of Angles.\" The "
     "sentence structure should be easy to follow.\n\n1. Angles meet at a vertex.",
     "1. Angles meet at a vertex.", ["heres_a_sample_line"]),
    ("Here is a sample of rock from the quarry.", "Here is a sample of rock from the quarry.", []),
    ("Sure! Here's a possible answer:\nLeaves make sugar from light. I hope this helps! Let me know if you have questions.",
     "Leaves make sugar from light.", ["assent_heres", "hope_helps"]),
    ("**Sure!** I'll write a puzzle for you.\nAnn has a cat.", "Ann has a cat.", ["assent_heres", "i_will_write"]),
    ("Problem: Sure! Here's a word problem: Tom has 3 apples.\n\nSolution: 3.\nFinal answer: 3",
     "Problem: Tom has 3 apples.\n\nSolution: 3.\nFinal answer: 3", ["assent_heres"]),
    ("Great question! Plants need light.\n\nHappy learning!", "Plants need light.", ["great_question", "happy_learning"]),
    ("A sure thing is a fact. Here is how fractions add: 1/2 + 1/4.", "A sure thing is a fact. Here is how fractions add: 1/2 + 1/4.", []),
    ("Okay so the cat sat on the mat.", "Okay so the cat sat on the mat.", []),
])
def test_strip_chatter_names_what_it_strips(text: str, left: str, names: list[str]) -> None:
    cleaned, stripped = strip_chatter(text, PATTERNS)
    assert cleaned == left
    assert [s["pattern"] for s in stripped] == names
    assert all(s["text"] and s["text"] in text for s in stripped)


def test_clean_table_records_strips_rehashes_and_rejects_chatter_only() -> None:
    texts = ["Sure! Here's a possible answer:\nLight drives photosynthesis in the leaves of green plants.",
             "Sure! Here's a possible answer: I hope this helps!",
             "Photosynthesis makes sugar from light, water and carbon dioxide."]
    table = pa.table({"id": [record_id(t) for t in texts], "text": texts, "kind": ["explanation"] * 3})
    kept, rejects, by_pattern = clean_table(table, CleanupConfig(enabled=True))
    assert kept.column("text").to_pylist() == ["Light drives photosynthesis in the leaves of green plants.", texts[2]]
    assert kept.column("id").to_pylist() == [record_id(t) for t in kept.column("text").to_pylist()]
    notes = [json.loads(n) for n in kept.column("cleanup").to_pylist()]
    assert [s["pattern"] for s in notes[0]["stripped"]] == ["assent_heres"] and notes[1]["stripped"] == []
    assert rejects.column("reject_reason").to_pylist() == ["chatter_only"]
    assert rejects.column("text").to_pylist() == [texts[1]], "a reject keeps the text as generated"
    assert by_pattern == {"assent_heres": 2, "hope_helps": 1}


def test_bad_patterns_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "chatter.yaml"
    bad.write_text("preambles:\n  broken: '(unclosed'\nclosings: {}\n")
    with pytest.raises(ValueError, match=r"chatter.yaml: preambles.broken"):
        load_patterns(str(bad))
    with pytest.raises(ConfigError, match=r"cleanup.patterns: .*file not found"):
        load_config(write_run_config(tmp_path, cleanup={"enabled": True, "patterns": "missing.yaml"}))


def test_cleanup_stage_is_listed_and_its_patterns_are_an_input(tmp_path: Path) -> None:
    from hare.tasks.stages import stage_names

    cfg = load_config(write_run_config(tmp_path, cleanup={"enabled": True}))
    assert stage_names(cfg)[:2] == ["generate", "cleanup"]
    assert "cleanup.patterns" in cfg.input_files()
    off = load_config(write_run_config(tmp_path))
    assert "cleanup" not in stage_names(off) and "cleanup.patterns" not in off.input_files()
