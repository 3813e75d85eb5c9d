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

``GATE_ENGINE:<folder>`` in a prompt makes a call announce itself and wait (:func:`wait_at_gate`):
it writes ``<folder>/inflight-*.json`` (this process id, the Ray actor's name, the batch's
seeds and prompts), then blocks until ``<folder>/open`` exists. A fault test so strikes while a call is
provably in flight (it kills the process the marker names), then opens the gate: no sleep, no
polling for a moment that may already have passed. A marker in a prompt, not an environment
variable, because the engine is a Ray actor whose environment was fixed when Ray started.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from hare.backends.base import GenerationRequest, GenerationResult
from hare.config import SamplingConfig


GATE_MARKER = "GATE_ENGINE:"
GATE_OPEN = "open"  # the file that opens a gate folder
GATE_POLL_S = 0.05


def _marker_value(prompt: str, marker: str) -> str | None:
    """The word right after ``marker`` in a prompt (a path, a script), punctuation trimmed; None without it."""
    if marker not in prompt:
        return None
    return prompt.split(marker, 1)[1].split()[0].rstrip(".,;:'\")")


def _crashes(prompt: str) -> bool:
    path = _marker_value(prompt, "CRASH_ENGINE_WHILE:")
    if path is not None:
        return os.path.exists(path)
    return "CRASH_ENGINE" in prompt


def _script(prompt: str, marker: str) -> list[str]:
    """The ``a|b|c`` values after ``marker`` in a prompt, or []."""
    value = _marker_value(prompt, marker)
    return value.split("|") if value is not None else []


def _actor_name() -> str | None:
    """The Ray actor this call runs in (an engine's name), so a test knows which engine it holds."""
    ray = sys.modules.get("ray")  # inside an actor Ray is loaded; elsewhere it is not worth importing
    try:
        return ray.get_runtime_context().get_actor_name() if ray is not None and ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - a Ray without that context: no name
        return None


def wait_at_gate(requests: list[GenerationRequest]) -> None:
    """If a prompt names a gate folder (``GATE_ENGINE:<folder>``): say this call is in flight,
    then block until the gate is opened. The marker is written whole (a rename), so a test
    reading it never sees half of it."""
    folder = next((f for f in (_marker_value(r.prompt, GATE_MARKER) for r in requests) if f), None)
    if folder is None:
        return
    gate = Path(folder)
    gate.mkdir(parents=True, exist_ok=True)
    marker = gate / f"inflight-{os.getpid()}-{time.monotonic_ns()}.json"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "engine": _actor_name(), "seeds": [r.seed for r in requests],
                               "prompts": [r.prompt for r in requests]}))
    tmp.rename(marker)
    while not (gate / GATE_OPEN).exists():
        time.sleep(GATE_POLL_S)


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
        wait_at_gate(requests)
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
