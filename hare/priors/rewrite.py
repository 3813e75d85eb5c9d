"""Rewrite templates (HARE's D3): a row of a task dataset -> a prompt, and the check that the
model's text kept the row's label or answer.

One YAML file per template under ``hare/priors/rewrites/`` names the columns it reads, the
system turn, the prompt (``str.format`` over the row's columns, plus ``{label_words}`` where
the template maps a label to words) and its check. Every record keeps ``template_id`` and
``template_version`` (bump ``version`` when the wording changes) and the source row in
``source_ref``, so a rewritten record leads back to the row it came from.

Checks (``check.match``), why: a rewrite that contradicts its row is worse than no rewrite.

- ``contains``: the row's value of ``check.column`` (the answer) appears in the text as words
  (case and spacing ignored);
- ``label``: the text names the row's label and no other label of ``labels``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

REWRITE_DIR = Path(__file__).resolve().parent / "rewrites"


class RewriteError(ValueError):
    """A task dataset row or a template that cannot be used; the message names the field."""


@dataclass(frozen=True)
class RewriteTemplate:
    """A rewrite template (one YAML file): what it reads, what it asks, what it checks."""

    id: str
    version: int
    system: str
    text: str
    columns: tuple[str, ...]
    check_column: str
    match: Literal["contains", "label"]
    labels: dict[str, str] = field(default_factory=dict)   # label value -> its words in the prompt

    def render(self, row: dict[str, Any]) -> str:
        """The prompt of one dataset row; a missing or empty column is a :class:`RewriteError`."""
        values = {c: _cell(row, c) for c in self.columns}
        label = values.get(self.check_column, "")
        if self.labels and label not in self.labels:
            raise RewriteError(f"column {self.check_column!r}: {label!r} is not one of {sorted(self.labels)}")
        return self.text.format(**values, label_words=self.labels.get(label, ""))

    def expected(self, row: dict[str, Any]) -> str:
        """The value the text must keep (the row's label or answer)."""
        return _cell(row, self.check_column)

    def check(self, text: str, expected: str) -> str | None:
        """Why ``text`` fails its row (a reject reason), or None when it keeps the row's value."""
        found = _mentions(text, expected)
        if self.match == "contains":
            return None if found else "answer_not_kept"
        others = [label for label in self.labels if label != expected and _mentions(text, label)]
        if not found:
            return "label_not_kept"
        return "label_contradicted" if others else None


def _cell(row: dict[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None or not str(value).strip():
        raise RewriteError(f"column {column!r} is missing or empty")
    return str(value).strip()


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def _mentions(text: str, value: str) -> bool:
    """``value`` occurs in ``text`` as whole words, case and punctuation ignored."""
    needle = _words(value)
    return needle.strip() != "" and needle in _words(text)


def _load(path: Path) -> RewriteTemplate:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        check = raw["check"]
        return RewriteTemplate(id=raw["id"], version=int(raw["version"]), system=raw["system"].strip(),
                               text=raw["text"].strip(), columns=tuple(raw["columns"]),
                               check_column=check["column"], match=check["match"],
                               labels=dict(raw.get("labels") or {}))
    except (KeyError, TypeError) as exc:
        raise RewriteError(f"rewrite template {path}: missing or malformed field {exc}") from None


@lru_cache(maxsize=1)
def rewrite_templates() -> dict[str, RewriteTemplate]:
    """Every shipped rewrite template by id (its file's stem)."""
    return {p.stem: _load(p) for p in sorted(REWRITE_DIR.glob("*.yaml"))}


def rewrite_template(template_id: str) -> RewriteTemplate:
    try:
        return rewrite_templates()[template_id]
    except KeyError:
        raise RewriteError(f"unknown rewrite template {template_id!r}; known: {sorted(rewrite_templates())}") from None


def rewrite_template_path(template_id: str) -> Path:
    """The template's file (its contents are one of the run's hashed inputs)."""
    return REWRITE_DIR / f"{template_id}.yaml"


def is_rewrite(template_id: str) -> bool:
    return template_id in rewrite_templates()
