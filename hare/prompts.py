"""Versioned prompt templates, one per task kind.

Every record keeps ``template_id`` and ``template_version`` so a change of wording is visible
in lineage and can be filtered on later. Bump ``version`` whenever ``text`` changes.
Templates are plain ``str.format`` strings over the plan's fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    version: int
    system: str
    text: str

    def render(self, *, topic: str, topic_path: str, audience: str, style: str) -> str:
        return self.text.format(topic=topic, topic_path=topic_path, audience=audience, style=style)


_SYSTEM = "You are a careful teacher who writes clear, correct and self-contained English text."

TEMPLATES: dict[str, PromptTemplate] = {
    "instruction": PromptTemplate(
        id="instruction",
        version=1,
        system=_SYSTEM,
        text=(
            "Write one practical task about {topic} ({topic_path}) for {audience}, "
            "then answer it fully. Format: {style}."
        ),
    ),
    "explanation": PromptTemplate(
        id="explanation",
        version=1,
        system=_SYSTEM,
        text="Explain {topic} ({topic_path}) to {audience}. Format: {style}. Be concrete and accurate.",
    ),
    "reasoning": PromptTemplate(
        id="reasoning",
        version=1,
        system=_SYSTEM,
        text=(
            "Write a short word problem about {topic} ({topic_path}) for {audience} and solve it "
            "step by step. Format: {style}. End with a line 'Final answer: <answer>'."
        ),
    ),
}


def template_for(kind: str) -> PromptTemplate:
    try:
        return TEMPLATES[kind]
    except KeyError:
        raise KeyError(f"no prompt template for task kind {kind!r}; known: {sorted(TEMPLATES)}") from None
