"""Versioned prompt templates, one YAML file per task kind (``hare/priors/templates/``).

Every record keeps ``template_id`` and ``template_version`` so a change of wording is visible in
lineage; bump ``version`` whenever ``text`` (or ``example``, ``problem``, ``solve``) changes. A
template shows the expected shape once (``example``, in the system turn); a self-consistency kind also has a
``problem`` prompt (write the problem only) and a ``solve`` prompt (solve it; sampled k times). Reasoning kinds declare their final-answer
format and the regex that extracts it in the same file, so the prompt and the parser that the
quality stage uses cannot drift apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
BASELINE_KIND = "baseline"


@dataclass(frozen=True)
class AnswerSpec:
    format: str
    pattern: str
    type: str  # "number" | "text" | "code"
    # The value after "Final answer:" as a regex for guided decoding (validation.answer_line:
    # guided): a solution that ends without the line gets it forced, value and all.
    guided: str | None = None


@dataclass(frozen=True)
class SolveSpec:
    """The second step of a self-consistency kind: solve the written problem (``{problem}``)."""

    system: str
    text: str


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    system: str
    text: str
    domains: tuple[str, ...] = ()  # empty: every domain
    answer: AnswerSpec | None = None
    long_text: bool = False
    example: str = ""                 # the expected shape, shown once in the prompt ({example})
    problem: str | None = None        # self-consistency: write only the problem...
    solve: SolveSpec | None = None    # ...then solve it k times (tasks/generate.py, tasks/validate.py)

    def render(self, *, topic: str, description: str, topic_path: str, audience: str, style: str,
               problem_only: bool = False) -> str:
        """The prompt of one plan row; ``problem_only``: the first step of a self-consistency kind."""
        text = self.problem if problem_only and self.problem else self.text
        return text.format(topic=topic, description=description or topic, topic_path=topic_path,
                           audience=audience, style=style)

    def system_turn(self, problem_only: bool = False) -> str:
        """The system message: the role, then the expected shape once (``example``). The shape
        sits here, not in the user turn, so a text that echoes the request does not echo the
        example's final answer as its own. Writing a problem only needs no solved example."""
        if not self.example or problem_only:
            return self.system
        return f"{self.system}\n\nThe expected shape, on another topic:\n{self.example}"

    def render_solve(self, *, problem: str, audience: str, style: str) -> str:
        """The prompt that solves a written problem (one of the k samples of a vote)."""
        if self.solve is None:
            raise ValueError(f"template {self.id!r} has no solve prompt")
        return self.solve.text.format(problem=problem, audience=audience, style=style)

    def solve_system_turn(self) -> str:
        """The system message of the solve step, with the worked example."""
        if self.solve is None:
            raise ValueError(f"template {self.id!r} has no solve prompt")
        return f"{self.solve.system}\n\nThe expected shape, on another problem:\n{self.example}" if self.example \
            else self.solve.system

    def allows(self, domain: str) -> bool:
        return not self.domains or domain in self.domains

    def extract_answer(self, text: str) -> str | None:
        """The final answer of a reasoning text, or None when the text has none to extract."""
        if self.answer is None:
            return None
        matches = re.findall(self.answer.pattern, text)
        if not matches:
            return None
        value = matches[-1].strip()
        return value.replace(",", "") if self.answer.type == "number" else value


def _load(path: Path) -> PromptTemplate:
    raw = yaml.safe_load(path.read_text())
    for field in ("id", "version", "system", "text"):
        if field not in raw:
            raise ValueError(f"prompt template {path}: missing field {field!r}")
    if raw["id"] != path.stem:
        raise ValueError(f"prompt template {path}: id {raw['id']!r} must match the file name")
    answer = AnswerSpec(**raw["answer"]) if raw.get("answer") else None
    solve = raw.get("solve")
    if solve is not None and not (isinstance(solve, dict) and {"system", "text"} <= set(solve)):
        raise ValueError(f"prompt template {path}: solve needs 'system' and 'text'")
    if (solve is None) != (raw.get("problem") is None):
        raise ValueError(f"prompt template {path}: 'problem' and 'solve' come together (self-consistency)")
    if solve is not None and answer is None:
        raise ValueError(f"prompt template {path}: a solve prompt needs an 'answer' extractor to vote on")
    return PromptTemplate(raw["id"], int(raw["version"]), raw["system"].strip(), raw["text"].strip(),
                          tuple(raw.get("domains", ())), answer, bool(raw.get("long_text", False)),
                          str(raw.get("example", "")).strip(),
                          raw["problem"].strip() if raw.get("problem") else None,
                          SolveSpec(solve["system"].strip(), solve["text"].strip()) if solve else None)


def _templates() -> dict[str, PromptTemplate]:
    return {p.stem: _load(p) for p in sorted(TEMPLATE_DIR.glob("*.yaml"))}


TEMPLATES: dict[str, PromptTemplate] = _templates()

# The baseline of the diversity report: no taxonomy, no axes; the model picks the topic.
BASELINE = PromptTemplate(
    id=BASELINE_KIND,
    version=1,
    system=TEMPLATES["explanation"].system,
    text="Write a short educational text on a topic of your choice.",
)


def template_for(kind: str) -> PromptTemplate:
    if kind == BASELINE_KIND:
        return BASELINE
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise KeyError(f"no prompt template for task kind {kind!r}; known: {sorted(TEMPLATES)}") from None


def prompt_seed(run_seed: int, prompt_index: int) -> int:
    """A per-prompt sampling seed, stable for a (seed, index) pair and well spread."""
    digest = hashlib.sha256(f"hare:{run_seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
