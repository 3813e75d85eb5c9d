"""DeterministicFakeBackend: canned text for orchestration tests only.

It is not a model and never claims to be: its ``name`` says ``deterministic-fake`` in every
record it touches. It exists so tests of Prefect/Ray wiring, the commit protocol and re-runs
do not pay for an engine start. It answers ``text`` as a pure function of (prompt, seed),
rejects prompts containing ``POISON`` the way an engine rejects an unservable request,
raises on a batch holding ``CRASH_ENGINE`` the way a dying engine fails a whole call (with
``CRASH_ENGINE_WHILE:<path>`` only while that file exists, so a test can end the fault), and
takes ``SLOW_SECONDS`` for a batch holding ``SLOW_ENGINE`` (a long generation, so fault tests
can strike in the middle of a partition). A prompt holding ``SCRIPTED_ANSWERS=a|b|c`` ends
sample j's text with ``Final answer: <the j-th>`` (tests of the vote's wiring, not of a model);
the j-th may be ``-`` for no final-answer line. A request with ``guided_regex`` (the forced
answer line) answers `` <v>``, v the j-th of ``SCRIPTED_GUIDED=a|b|c`` in its prompt, else `` 0``.
"""

from __future__ import annotations

import hashlib
import os
import time

from hare.backends.base import GenerationRequest, GenerationResult
from hare.config import SamplingConfig


def _crashes(prompt: str) -> bool:
    if "CRASH_ENGINE_WHILE:" in prompt:
        path = prompt.split("CRASH_ENGINE_WHILE:", 1)[1].split()[0].rstrip(".,;:'\")")
        return os.path.exists(path)
    return "CRASH_ENGINE" in prompt


def _script(prompt: str, marker: str) -> list[str]:
    """The ``a|b|c`` values after ``marker`` in a prompt, or []."""
    if marker not in prompt:
        return []
    return prompt.split(marker, 1)[1].split()[0].rstrip(".,;:'\")").split("|")


class DeterministicFakeBackend:
    name = "deterministic-fake"
    model = "deterministic-fake"
    model_revision = "0"
    SLOW_SECONDS = 2.0

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[GenerationResult]:
        if any(_crashes(r.prompt) for r in requests):
            raise RuntimeError("deterministic-fake engine crashed (CRASH_ENGINE in a prompt)")
        if any("SLOW_ENGINE" in r.prompt for r in requests):
            time.sleep(self.SLOW_SECONDS)
        out = []
        for r in requests:
            if "POISON" in r.prompt:
                out.append(GenerationResult(r.prompt_index, "", len(r.prompt.split()), 0, "error",
                                            error="engine_rejected: poisoned prompt"))
                continue
            if r.guided_regex:
                script = _script(r.prompt, "SCRIPTED_GUIDED=") or ["0"]
                out.append(GenerationResult(r.prompt_index, f" {script[r.sample % len(script)]}",
                                            len(r.prompt.split()), 1, "stop"))
                continue
            digest = hashlib.sha256(f"{r.seed}:{r.prompt}".encode()).hexdigest()
            max_tokens = (r.sampling or sampling).max_tokens
            words = [f"w{digest[i:i + 4]}" for i in range(0, min(len(digest), 4 * max_tokens), 4)]
            text = f"Fake answer to: {r.prompt} " + " ".join(words)
            script = _script(r.prompt, "SCRIPTED_ANSWERS=")
            if script and script[r.sample % len(script)] != "-":
                text += f"\nFinal answer: {script[r.sample % len(script)]}"
            out.append(GenerationResult(r.prompt_index, text, len(r.prompt.split()), len(words), "stop"))
        return out
