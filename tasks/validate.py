"""Stage ``validate``: final answers checked, not only extracted.

- Self-consistency kinds (``validation.k``: math word problems, logical deductions): generation
  wrote each problem once and solved it k times (tasks/generate.py), so a partition holds k
  sample rows per prompt (one ``prompt_index``). Here the final answers are extracted (the
  template's extractor), normalised (hare/stages/validate/answers.py) and voted: the prompt keeps ONE record,
  the text of a sample whose answer is the majority (the first that also passes the quality
  rules, when one does), kept only when the majority holds ``validation.min_share`` of the
  votes. Reject reasons: ``no_answer``, ``no_majority``, ``answer_disagreement``.
- Code: the record's python code blocks run with their own asserts in the sandbox
  (hare/sandbox/runner.py: a child process with time and memory limits, no network, a throwaway
  folder); kept when it runs and its checks pass. Reject reasons: ``no_code``,
  ``code_unchecked`` (no assert of its own), ``copied_example`` (the template's example back),
  ``code_too_long`` (over ``validation.code.max_code_chars``, never parsed), ``code_syntax``,
  ``code_failed``, ``code_timeout``, ``code_memory``, ``code_output_limit``.
- Any kind: a text over ``validation.max_text_chars`` is a ``too_long`` reject before anything
  parses it (a poison record is a reject with its reason, never a failed partition).
- Other kinds pass through.

Every kept record (and every reject) carries a ``validation`` column (JSON): the method and
its outcome (the vote's answers and counts, or the sandbox's status), its lineage of the check.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa

from hare.stages.validate.answers import normalize_answer, vote
from hare.config import CodeCheckConfig, RunConfig
from hare.priors.prompts import template_for
from hare.sandbox.runner import SandboxResult, count_asserts, run_code
from hare.stages.base import COUNTS, RecordStage, StageResult, add_counts

STAGE = "validate"
_WS = re.compile(r"\s+")


def is_code_kind(kind: str) -> bool:
    """Whether a kind's records are checked by running their code (a corpus or rewrite kind has
    no prompt template: it is not)."""
    try:
        answer = template_for(kind).answer
    except KeyError:
        return False
    return answer is not None and answer.type == "code"


def _code_of(text: str, kind: str) -> str | None:
    """Every fenced code block of a record, in order (asserts often come in a block of their own)."""
    tpl = template_for(kind)
    if tpl.answer is None:
        return None
    blocks = [b.strip("\n") for b in re.findall(tpl.answer.pattern, text)]
    return "\n\n".join(blocks) if blocks else None


def _copies(code: str, example: str) -> bool:
    """The template's example given back: the same code, or a function of the example's name
    (measured: SmolLM2-135M returns the example with a print added, and its asserts pass)."""
    if _WS.sub(" ", code).strip() == _WS.sub(" ", example).strip():
        return True
    import ast

    def names(src: str) -> set[str]:
        try:
            return {n.name for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return set()

    return bool(names(code) & names(example))


def run_snippet(code: str, limits: CodeCheckConfig) -> SandboxResult:
    """Run one code block the way the validate stage does: under ``validation.code``'s isolation
    and limits (the escape tests call this very function)."""
    return run_code(code, limits.time_limit_s, limits.memory_mb, isolation=limits.isolation,
                    max_processes=limits.max_processes, tmpfs_mb=limits.tmpfs_mb, output_kb=limits.output_kb)


def check_code(text: str, kind: str, cfg: RunConfig) -> tuple[str | None, dict[str, Any]]:
    """(reject reason or None, the outcome stored in ``validation``) of one code record.

    Sizes are checked before anything parses the code: a block of 100k nested operators is a
    ``code_too_long`` reject, never a MemoryError that fails the partition on every retry."""
    code = _code_of(text, kind)
    if not code:
        return "no_code", {"method": "sandbox", "status": "no_code"}
    limits = cfg.validation.code
    if len(code) > limits.max_code_chars:
        return "code_too_long", {"method": "sandbox", "status": "too_long", "chars": len(code),
                                 "max_code_chars": limits.max_code_chars}
    example = _code_of(template_for(kind).example, kind)
    if example and _copies(code, example):
        return "copied_example", {"method": "sandbox", "status": "copied_example"}
    asserts = count_asserts(code)
    if asserts is None:
        return "code_syntax", {"method": "sandbox", "status": "syntax"}
    if asserts == 0 and cfg.validation.code.require_asserts:
        return "code_unchecked", {"method": "sandbox", "status": "unchecked", "asserts": 0}
    result = run_snippet(code, limits)
    outcome = {"method": "sandbox", "asserts": asserts, **result.as_json()}
    reason = {"passed": None, "timeout": "code_timeout", "memory": "code_memory", "syntax": "code_syntax",
              "output_limit": "code_output_limit"}.get(result.status, "code_failed")
    return reason, outcome


def _passes_quality(row: dict[str, Any], cfg: RunConfig) -> bool:
    from hare.stages.quality import judge

    return judge(row["text"] or "", row["kind"], row.get("finish_reason") or "stop", cfg.quality).reason is None


def vote_group(rows: list[dict[str, Any]], cfg: RunConfig) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
    """One prompt's k samples -> (the row it keeps or rejects, reason or None, the vote as stored)."""
    kind = rows[0]["kind"]
    tpl = template_for(kind)
    assert tpl.answer is not None
    answers = [normalize_answer(tpl.extract_answer(r["text"] or ""), tpl.answer.type) for r in rows]
    v = vote(answers, cfg.validation.min_share)
    outcome = {"method": "self_consistency", "min_share": cfg.validation.min_share, **v.as_json()}
    forced = [i for i, r in enumerate(rows) if r.get("sampling") and json.loads(r["sampling"]).get("forced_answer")]
    if forced:  # which samples' final-answer lines were forced (validation.answer_line: guided)
        outcome["forced_answer_samples"] = forced
    if v.reason is not None:
        return rows[0], v.reason, outcome
    winners = [i for i, a in enumerate(answers) if a == v.majority]
    chosen = next((i for i in winners if _passes_quality(rows[i], cfg)), winners[0])
    outcome["chosen_sample"] = json.loads(rows[chosen]["sampling"]).get("sample", chosen) if rows[chosen].get("sampling") else chosen
    return rows[chosen], None, outcome


def validate_table(records: pa.Table, cfg: RunConfig) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(kept, rejects, aggregate) of one partition; both tables gain a ``validation`` column."""
    rows = records.to_pylist()
    groups: dict[int, list[dict[str, Any]]] = {}
    order: list[tuple[str, Any]] = []
    for i, row in enumerate(rows):
        if len(row["text"] or "") > cfg.validation.max_text_chars:
            order.append(("too_long", i))
        elif cfg.validation.samples(row["kind"]) > 1:
            if row["prompt_index"] not in groups:
                order.append(("vote", row["prompt_index"]))
            groups.setdefault(row["prompt_index"], []).append(row)
        else:
            order.append(("one", i))
    kept: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    by_kind: dict[str, dict[str, Any]] = {}
    for what, key in order:
        if what == "vote":
            row, reason, outcome = vote_group(groups[key], cfg)
            samples = len(groups[key])
        elif what == "too_long":
            row, samples = rows[key], 1
            reason, outcome = "too_long", {"method": "size", "chars": len(row["text"] or ""),
                                           "max_text_chars": cfg.validation.max_text_chars}
        else:
            row, samples = rows[key], 1
            if is_code_kind(row["kind"]):
                reason, outcome = check_code(row["text"] or "", row["kind"], cfg)
            else:
                reason, outcome = None, {"method": "none"}
        slot = by_kind.setdefault(row["kind"], {"checked": 0, "samples": 0, "kept": 0, "rejects": {},
                                                "method": outcome["method"]})
        slot["checked"] += 1
        slot["samples"] += samples
        out = {**row, "validation": json.dumps(outcome, sort_keys=True)}
        if reason is None:
            slot["kept"] += 1
            kept.append(out)
        else:
            add_counts(slot["rejects"], {reason: 1})
            rejects.append({**out, "reject_stage": STAGE, "reject_reason": reason})
    schema = records.schema.append(pa.field("validation", pa.string()))
    reject_schema = schema.append(pa.field("reject_stage", pa.string())).append(pa.field("reject_reason", pa.string()))
    reasons: dict[str, int] = {}
    for slot in by_kind.values():
        add_counts(reasons, slot["rejects"])
    aggregate = {"checked": len(order), "samples": len(rows), "kept": len(kept), "rejected": len(rejects),
                 "reject_reasons": reasons, "by_kind": by_kind}
    if any(slot["method"] == "sandbox" for slot in by_kind.values()):
        aggregate["code_isolation"] = cfg.validation.code.isolation  # the card says how code ran
    return (pa.Table.from_pylist(kept, schema=schema), pa.Table.from_pylist(rejects, schema=reject_schema), aggregate)


def merge_validation(aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """The validation report's own figures: samples voted, and prompts checked, kept and
    rejects per kind (the base counts the prompts checked, kept and rejected overall)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for agg in aggregates:
        for kind, fig in agg["by_kind"].items():
            slot = by_kind.setdefault(kind, {"checked": 0, "samples": 0, "kept": 0, "rejects": {},
                                             "method": fig.get("method", "none")})
            for f in ("checked", "samples", "kept"):
                slot[f] += fig[f]
            add_counts(slot["rejects"], fig["rejects"])
    for slot in by_kind.values():
        slot["pass_rate"] = round(slot["kept"] / slot["checked"], 4) if slot["checked"] else None
    isolation = sorted({a["code_isolation"] for a in aggregates if a.get("code_isolation")})
    return {**({"code_isolation": ", ".join(isolation)} if isolation else {}),
            "samples": sum(a["samples"] for a in aggregates), "by_kind": dict(sorted(by_kind.items()))}


class Validate(RecordStage):
    """Stage ``validate``: self-consistency votes and sandboxed code checks. Its config section
    keeps the name ``validation``: a pydantic model cannot have a field named ``validate``."""

    name, title, section = STAGE, "Answer validation", "validation"

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        kept, rejects, aggregate = validate_table(records, cfg)  # checked: prompts, as the base counts them
        return StageResult(kept, rejects, {k: v for k, v in aggregate.items() if k not in COUNTS})

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_validation(aggregates)

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        lines = [self.heading(), "",
                 "Math word problems and logical deductions: the problem is written once and solved k times "
                 "(seeds from the plan); kept when the majority of the normalised final answers holds the configured "
                 "share, with the text of a majority solution. Code: run with its own asserts in a sandbox "
                 "(docs/sandbox.md). Each record's `validation` column holds the vote or the sandbox outcome.", "",
                 *_isolation_lines(report.get("code_isolation")),
                 "| kind | prompts checked | samples | kept | pass rate | rejects |", "|---|---|---|---|---|---|"]
        for kind, v in report["by_kind"].items():
            rej = ", ".join(f"{r}: {n}" for r, n in sorted(v["rejects"].items())) or "-"
            rate = ("not checked" if v.get("method") == "none" else
                    "" if v.get("pass_rate") is None else f"{v['pass_rate']:.0%}")
            lines.append(f"| {kind} | {v['checked']} | {v['samples']} | {v['kept']} | {rate} | {rej} |")
        return [*lines, ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        v = cfg.validation
        return ("enabled", f"k {v.k}, min_share {v.min_share}, answer_line {v.answer_line}, "
                           f"code isolation {v.code.isolation}") if v.enabled else ("off", "")


def _isolation_lines(isolation: str | None) -> list[str]:
    """How the code records' snippets ran: under OS isolation, or (said loudly) without it."""
    if not isolation:
        return []
    if "none" in isolation:
        return ["**Code ran WITHOUT OS isolation** (`validation.code.isolation: none`, set on purpose): "
                "a plain child process with rlimits only.", ""]
    return ["Code ran under bubblewrap: its own user, PID, mount, network, IPC and UTS namespaces, a seccomp "
            "filter, the interpreter and standard library read-only, an empty environment, a size-capped tmpfs, "
            "rlimits on memory, CPU, files and processes; killed whole at its time limit.", ""]
