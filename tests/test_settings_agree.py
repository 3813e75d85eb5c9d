"""The demo config, docs/decontamination.md and the code defaults state one set of decontamination
settings: the one docs/benchmarks.md measured (issue 14)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hare.config import DecontamConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
MEASURED = {"paraphrase_threshold": 0.7, "window_words": None, "common_words": 3000, "confirm_threshold": 0.4,
            "confirm_numbers": 0.75, "paraphrase_sure": 0.9, "ngram_long": None, "ngram_short": None,
            "ngram_min": 8, "ngram_max": 13, "ngram_percentile": 5, "field_min_words": 8,
            "overlap_threshold": 0.5}


def test_code_defaults_are_the_measured_settings() -> None:
    defaults = DecontamConfig()
    assert {k: getattr(defaults, k) for k in MEASURED} == MEASURED


def test_demo_config_runs_the_measured_settings() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml").decontam
    assert {k: getattr(cfg, k) for k in MEASURED} == MEASURED


def test_docs_state_the_code_defaults() -> None:
    text = (ROOT / "docs" / "decontamination.md").read_text()
    block = re.search(r"```yaml\n(decontam:.*?)```", text, re.S).group(1)
    documented = yaml.safe_load(block)["decontam"]
    defaults = DecontamConfig().model_dump()
    for key, value in documented.items():
        if key != "benchmarks":
            assert value == defaults[key], f"docs/decontamination.md says {key}: {value}, the code {defaults[key]}"
    assert {"paraphrase_threshold", "common_words", "ngram_percentile"} <= set(documented)
    bench = (ROOT / "docs" / "benchmarks.md").read_text()
    assert "paraphrase similarity >= 0.7, common_words 3000" in bench
