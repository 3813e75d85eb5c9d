"""Stage ``pii``: e-mail addresses, phone numbers, IP addresses and card-like numbers redacted.

Why redaction and not rejection: a generated explanation that happens to show an example
address is still a good record; the address is what must not be learned. Each match is
replaced by a placeholder naming its kind (``[EMAIL]``, ``[PHONE]``, ``[IP_ADDRESS]``,
``[CARD_NUMBER]``), the record's id is re-hashed from the text it now holds, and its ``pii``
column (JSON) counts what was replaced; the card counts it per kind.

How each kind is found, and why so:

- phone numbers: Google's libphonenumber (the ``phonenumbers`` package, its ``PhoneNumberMatcher``
  at leniency VALID): a number must be a valid one of ``pii.phone_region`` (or an international
  ``+NN`` one), so years, counts and prices are not phone numbers. Presidio would do the same
  through this library, but its analyzer needs a spaCy model from a hub at run time;
  scrubadub's phone detector is this library too, behind scikit-learn and textblob.
- card numbers: 13 to 19 digits (spaces or dashes between groups) that pass the Luhn check, so
  an arbitrary long number is not one.
- IP addresses: dotted quads and colon-hex groups that Python's ``ipaddress`` parses (a version
  string ``1.2.3`` or a time ``12:30:45`` is not one).
- e-mail addresses: ``local@domain.tld`` (the dot-atom form of RFC 5322, which is what appears in
  prose).

Kinds are replaced in that order of :data:`DETECTORS` (a card number is never read as a phone
number), each on the text the ones before left.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from hare.config import PIIConfig, RunConfig
from hare.store.schema import record_id
from hare.stages.base import RecordStage, StageResult, add_counts

STAGE = "pii"
Span = tuple[int, int]

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                    r"[A-Za-z]{2,24}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*[0-9A-Fa-f])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_MIN_PHONE_DIGITS = 7  # a text with fewer digits holds no phone number: the matcher is not asked


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _emails(text: str, cfg: PIIConfig) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield m.span()


def _ips(text: str, cfg: PIIConfig) -> Iterator[Span]:
    for rx in (_IPV4, _IPV6):
        for m in rx.finditer(text):
            try:
                ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            yield m.span()


def _cards(text: str, cfg: PIIConfig) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            yield m.span()


def _phones(text: str, cfg: PIIConfig) -> Iterator[Span]:
    if sum(c.isdigit() for c in text) < _MIN_PHONE_DIGITS:
        return
    import phonenumbers

    for m in phonenumbers.PhoneNumberMatcher(text, cfg.phone_region, leniency=phonenumbers.Leniency.VALID):
        yield m.start, m.end


# kind -> its finder, in the order they are applied
DETECTORS: dict[str, Callable[[str, PIIConfig], Iterator[Span]]] = {
    "email": _emails, "ip_address": _ips, "card_number": _cards, "phone": _phones,
}


def redact(text: str, cfg: PIIConfig) -> tuple[str, dict[str, int]]:
    """``text`` with every match of ``cfg.kinds`` replaced by its placeholder, and the matches
    counted by kind."""
    counts: dict[str, int] = {}
    for kind, find in DETECTORS.items():
        if kind not in cfg.kinds:
            continue
        spans = list(find(text, cfg))
        if not spans:
            continue
        mark = cfg.placeholder.replace("{KIND}", kind.upper())
        for start, end in sorted(spans, reverse=True):  # from the end: earlier offsets stay valid
            text = text[:start] + mark + text[end:]
        counts[kind] = len(spans)
    return text, counts


def redact_table(records: pa.Table, cfg: PIIConfig) -> tuple[pa.Table, dict[str, Any]]:
    """(the records with their text redacted, new ids where it changed and a ``pii`` column of
    counts by kind; the partition's counts: redactions by kind and records touched)."""
    texts, ids, notes = [], [], []
    by_kind: dict[str, int] = {}
    touched = 0
    rids = records.column("id").to_pylist() if "id" in records.column_names else [None] * records.num_rows
    for text, rid in zip(records.column("text").to_pylist(), rids):
        clean, counts = redact(text or "", cfg)
        add_counts(by_kind, counts)
        touched += bool(counts)
        texts.append(clean if counts else text)
        ids.append(record_id(clean) if counts else rid)
        notes.append(json.dumps(counts, sort_keys=True))
    out = records.set_column(records.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    if "id" in out.column_names:
        out = out.set_column(out.schema.get_field_index("id"), "id", pa.array(ids, pa.string()))
    out = out.append_column(STAGE, pa.array(notes, pa.string()))
    return out, {"redacted": dict(sorted(by_kind.items())), "records_redacted": touched}


class Pii(RecordStage):
    """Stage ``pii``: personal data in the text replaced by placeholders; nothing is rejected."""

    name, title = STAGE, "PII"
    file_help = "redact e-mail addresses, phone numbers, IP addresses and card numbers in any Parquet or JSONL file"

    def on_table(self, records: pa.Table, settings: PIIConfig) -> StageResult:
        kept, figures = redact_table(records, settings)
        return StageResult(kept, None, figures)

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for a in aggregates:
            add_counts(by_kind, a["redacted"])
        return {"redacted": dict(sorted(by_kind.items())),
                "records_redacted": sum(a["records_redacted"] for a in aggregates)}

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        return [self.heading(), "",
                f"{report['records_redacted']} of {report['checked']} records had personal data replaced by a "
                "placeholder naming its kind; each record's `pii` column counts what was replaced.", "",
                "| kind | redacted |", "|---|---|",
                *(f"| {kind} | {report['redacted'].get(kind, 0)} |" for kind in cfg.pii.kinds), ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        p = cfg.pii
        return ("enabled", f"{', '.join(p.kinds)} -> {p.placeholder}; phone region {p.phone_region}") if p.enabled \
            else ("off", "")

    def summary(self, report: dict[str, Any]) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in report["redacted"].items())
        return f"{self.name} 0 (redacted: {kinds or 'none'})"
