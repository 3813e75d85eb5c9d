"""Stage ``cleanup``: meta-preambles and closing chatter stripped before the quality rules.

Why a stage of its own, before quality: "Sure! Here's a possible textbook passage:" and "I
hope this helps!" are not bad records, they are good records wrapped in talk about the record;
rejecting them would throw the record away, keeping them teaches a model the wrapper. The
patterns are data with names (``hare/priors/chatter-v2.yaml``, ``cleanup.patterns``), so what
counts as chatter is reviewable and versioned like the other priors. Each kept record carries
a ``cleanup`` column (JSON: the name and text of each strip) and its id is re-hashed from the
text it now holds; a record that is only chatter is rejected (``chatter_only``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from hare.config import CleanupConfig, RunConfig
from hare.store.schema import record_id
from hare.stages.base import RecordStage, StageResult, add_counts

STAGE = "cleanup"
_LEAD = r"[ \t]*(?:[*_#>]+[ \t]*)*"  # markdown emphasis or a heading mark before the chatter


@dataclass(frozen=True)
class Patterns:
    """The compiled chatter patterns of one file, by name."""

    version: int
    preambles: dict[str, re.Pattern[str]]
    after_label: dict[str, re.Pattern[str]]
    closings: dict[str, re.Pattern[str]]


@lru_cache(maxsize=8)
def load_patterns(path: str) -> Patterns:
    """Compile a chatter-patterns file; a bad file or pattern is a ValueError naming both."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cleanup patterns {p}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("preambles"), dict) or not isinstance(raw.get("closings"), dict):
        raise ValueError(f"cleanup patterns {p}: expected mappings 'preambles' and 'closings' of name: regex")
    labels = "|".join(re.escape(str(label)) for label in raw.get("labels", []))

    def compile_all(section: str, template: str) -> dict[str, re.Pattern[str]]:
        out = {}
        for name, rx in raw[section].items():
            try:
                out[str(name)] = re.compile(template.format(rx=rx), re.I)
            except re.error as exc:
                raise ValueError(f"cleanup patterns {p}: {section}.{name}: {exc}") from None
        return out

    return Patterns(
        int(raw.get("version", 1)),
        compile_all("preambles", r"\A\s*" + _LEAD + "(?:{rx})"),
        compile_all("preambles", r"(?m)^(" + (labels or "(?!)") + r")[ \t]*:[ \t]*" + _LEAD + "(?:{rx})")
        if labels else {},
        compile_all("closings", r"(?:\A|(?<=[.!?\n]))[^.!?\n]*?(?:{rx})\s*\Z"),
    )


def strip_chatter(text: str, patterns: Patterns) -> tuple[str, list[dict[str, str]]]:
    """``text`` without its preambles and closing chatter, and what was stripped (in order):
    ``[{"pattern": name, "where": "start" | "label" | "end", "text": ...}]``."""
    stripped: list[dict[str, str]] = []
    changed = True
    while changed and text:
        changed = False
        for name, rx in patterns.preambles.items():
            m = rx.search(text)
            if m and m.end() > 0 and m.group(0).strip():
                stripped.append({"pattern": name, "where": "start", "text": m.group(0).strip()})
                text, changed = text[m.end():].lstrip(), True
        for name, rx in patterns.after_label.items():
            m = rx.search(text)
            if m and text[m.end(1):m.end()].strip(" \t:"):
                stripped.append({"pattern": name, "where": "label", "text": text[m.end(1):m.end()].strip(" \t:")})
                text, changed = f"{text[:m.end(1)]}: {text[m.end():].lstrip()}", True
        for name, rx in patterns.closings.items():
            m = rx.search(text)
            if m and m.group(0).strip():
                stripped.append({"pattern": name, "where": "end", "text": m.group(0).strip()})
                text, changed = text[:m.start()].rstrip(), True
    return text.strip(), stripped


def clean_table(records: pa.Table, cfg: CleanupConfig) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(kept with cleaned text, new ids and a ``cleanup`` column; rejects ``chatter_only``;
    strips counted by pattern name)."""
    patterns = load_patterns(str(cfg.patterns))
    texts, ids, notes, keep = [], [], [], []
    by_pattern: dict[str, int] = {}
    for text, rid in zip(records.column("text").to_pylist(), records.column("id").to_pylist()):
        cleaned, stripped = strip_chatter(text or "", patterns)
        add_counts(by_pattern, {s["pattern"]: 1 for s in stripped})
        texts.append(cleaned if stripped else text)
        ids.append(record_id(cleaned) if stripped and cleaned else rid)
        notes.append(json.dumps({"stripped": stripped, "patterns_version": patterns.version}))
        keep.append(len(cleaned.split()) >= cfg.min_words_left)
    out = records.set_column(records.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    out = out.set_column(out.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    out = out.append_column("cleanup", pa.array(notes, pa.string()))
    mask = pa.array(keep, pa.bool_())  # typed, also for a partition with no records
    rejects = records.filter(pc.invert(mask))
    n = rejects.num_rows
    rejects = rejects.append_column("reject_stage", pa.array([STAGE] * n, pa.string()))
    rejects = rejects.append_column("reject_reason", pa.array(["chatter_only"] * n, pa.string()))
    return out.filter(mask), rejects, by_pattern


class Cleanup(RecordStage):
    """Stage ``cleanup``: named chatter patterns stripped, chatter-only records rejected."""

    name, title = STAGE, "Cleanup"

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        kept, rejects, by_pattern = clean_table(records, cfg.cleanup)
        changed = sum(1 for n in kept.column("cleanup").to_pylist() if json.loads(n)["stripped"])
        return StageResult(kept, rejects, {"changed": changed, "stripped_by_pattern": by_pattern})

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        by_pattern: dict[str, int] = {}
        for a in aggregates:
            add_counts(by_pattern, a["stripped_by_pattern"])
        return {"changed": sum(a["changed"] for a in aggregates),
                "stripped_by_pattern": dict(sorted(by_pattern.items(), key=lambda kv: (-kv[1], kv[0])))}

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        pats = ", ".join(f"{k}: {v}" for k, v in report["stripped_by_pattern"].items()) or "none"
        return [self.heading(), "", f"{report['changed']} of {report['checked']} generated texts had chatter stripped "
                f"(by pattern: {pats}); {report['rejected']} were only chatter and were rejected. "
                "Each record's `cleanup` column names what was stripped.", ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        c = cfg.cleanup
        return ("enabled", f"patterns {Path(c.patterns).name}, min_words_left {c.min_words_left}") if c.enabled else ("off", "")
