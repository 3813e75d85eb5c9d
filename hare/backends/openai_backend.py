"""OpenAIBackend: drive an OpenAI-compatible server that already runs (``model.backend: openai``).

The in-process vLLM backend loads the weights inside a Ray actor. This one loads nothing: it
sends each request to a server someone else started (``vllm serve`` on a GPU box, a shared
inference service, a hosted endpoint) and turns the answers into the same
:class:`~hare.backends.base.GenerationResult` rows, so partitions commit, resume and rerun
exactly as they do with the in-process engines. docs/backends.md says when to use which.

Why ``/v1/chat/completions`` and not ``/v1/completions``: the in-process backend renders the
model's chat template (system + user turn, generation prompt) and tokenizes that text without
adding special tokens. A vLLM server does exactly that for a chat request with the same
messages (``add_special_tokens`` is false by default for chat), with the template and tokenizer
it serves, so the prompt token sequence is the same without this client holding the tokenizer,
and a hosted endpoint (where only chat exists, and only the server knows the template) works
the same way. A request with a ``prefix`` (the assistant's text so far) sends it as a final
assistant message with vLLM's ``continue_final_message``: the template renders the assistant
turn open, which is the generation prompt followed by the prefix, what the in-process backend
tokenizes. The slow test checks the token ids are equal (``return_token_ids``).

Per request: ``seed`` (vLLM seeds that request's own sampler), ``temperature``, ``top_p``,
``max_tokens`` and, with ``vllm_params`` (the default), vLLM's extra fields
``repetition_penalty`` and ``structured_outputs: {"regex": ...}`` (the request field of vLLM
0.32, ``vllm/entrypoints/openai/chat_completion/protocol.py``; older releases named it
``guided_regex``). A hosted endpoint that refuses unknown fields gets none of them; a request
that needs one then becomes a reject saying so, never a silently different generation.

Failures, as the backend contract asks, are rows, never an exception for the batch:
- 429, 5xx, timeouts and dropped connections are retried with exponential backoff and full
  jitter (a 429/503 ``Retry-After`` is honoured), for at most ``retry_budget_s`` of waiting per
  request; past it the row is ``endpoint_unavailable: ...`` (:data:`UNAVAILABLE`). Such a row
  is an outage, not a property of the prompt: :func:`unavailable_rows` lets the partition task
  refuse to commit it, so a rerun generates it again;
- another 4xx (a prompt over the context: ``prompt_too_long: ...``; a bad regex; an unknown
  field) is ``endpoint_rejected: ...``, as vLLM rejecting the request in-process is a reject;
- empty or non-UTF-8 output: :func:`~hare.backends.base.output_problem`, as in-process.

Token counts come from the answer's ``usage`` (the server's tokenizer, the one that counted).
The served model's id, path (``root``) and context length come from ``/v1/models``; its
``created`` field is the time of the request on vLLM, so the revision hashes the card without it.

The API key never enters the config: ``api_key_env`` names the environment variable that holds
it, read once on the engine's node; it is sent as ``Authorization: Bearer`` and kept out of
``repr``, ``describe()``, results and log lines.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from hare.backends.base import UNAVAILABLE, GenerationRequest, GenerationResult, output_problem, unavailable_rows  # noqa: F401 - re-exported
from hare.config import EndpointConfig, SamplingConfig
from hare.errors import StartupError

log = logging.getLogger("hare")

REJECTED = "endpoint_rejected"        # the endpoint refused this request (a 4xx other than 429)
UNSUPPORTED = "endpoint_unsupported"  # the request needs a vLLM field that vllm_params turned off
RETRY_STATUSES = frozenset({408, 425, 429})
# Besides every 5xx (an overloaded, restarting or unreachable-behind-a-gateway server), the
# statuses worth another try: rate limiting (429) and the request-timeout family (408, 425).


class EndpointError(StartupError):
    """The endpoint cannot be used at all (its key's variable unset, /v1/models unreachable or
    ambiguous): raised at start-up, in one line, as the in-process engine fails to load."""


def read_api_key(env_name: str | None) -> str | None:
    """The key from the variable ``env_name`` names (None when no variable is named); a named
    variable that is unset or empty is an error here, at start-up, not 401s on every row."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise EndpointError(f"model.endpoint.api_key_env names {env_name}, which is not set (or empty) in the "
                            f"engine's environment")
    return key


def endpoint_key(url: str) -> str:
    """The endpoint as throughput figures and lineage name it: scheme, host, port and path of
    ``base_url``, nothing else (tokens/s are compared per endpoint)."""
    p = urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urlunsplit((p.scheme, netloc, p.path.rstrip("/"), "", ""))


def token_cost(prompt_tokens: float, output_tokens: float, price_per_m_input: float | None,
               price_per_m_output: float | None) -> float | None:
    """Money for these tokens at an endpoint's prices per million (in the prices' currency), or
    None when neither price is set (a self-hosted server costs hours, not tokens). Takes the
    prices, not an :class:`EndpointConfig`, because the card prices a run's actual tokens with
    the prices its estimate recorded (``plan/estimate.json``), not today's config."""
    if price_per_m_input is None and price_per_m_output is None:
        return None
    return (prompt_tokens * (price_per_m_input or 0.0) + output_tokens * (price_per_m_output or 0.0)) / 1e6


def sampling_problem(sampling: SamplingConfig, vllm_params: bool) -> str | None:
    """Why ``sampling`` cannot be sent to an endpoint without vLLM's fields, or None. The
    config validator and each request use this one check."""
    if not vllm_params and sampling.repetition_penalty != 1.0:
        return (f"{UNSUPPORTED}: repetition_penalty {sampling.repetition_penalty:g} needs vLLM's request field "
                f"(model.endpoint.vllm_params: true), or set it to 1")
    return None


def request_payload(r: GenerationRequest, sampling: SamplingConfig, model: str, *, vllm_params: bool,
                    max_model_len: int | None) -> dict[str, Any] | str:
    """The ``/v1/chat/completions`` body of one request, or why it cannot be sent (a reject).

    Same messages as the in-process backend's chat template input; the sampling of the
    request's kind when it has one (``r.sampling``). ``max_tokens`` is capped at the served
    context: vLLM refuses a larger value, while it caps ``max_tokens`` at what the prompt leaves
    itself, as the in-process backend does."""
    s = r.sampling or sampling
    problem = sampling_problem(s, vllm_params)
    if problem:
        return problem
    if not vllm_params and (r.prefix or r.guided_regex):
        return f"{UNSUPPORTED}: a continued or guided request needs vLLM's fields (model.endpoint.vllm_params: true)"
    messages = [{"role": "system", "content": r.system}, {"role": "user", "content": r.prompt}]
    if r.prefix:
        messages.append({"role": "assistant", "content": r.prefix})
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": min(s.max_tokens, max_model_len) if max_model_len else s.max_tokens,
        "seed": r.seed,
        "n": 1,
    }
    if vllm_params:
        body["repetition_penalty"] = s.repetition_penalty
        if r.prefix:
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        if r.guided_regex:
            body["structured_outputs"] = {"regex": r.guided_regex}
    return body


def retry_after_s(header: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), or None."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None else None


def _error_message(resp: httpx.Response) -> str:
    """The server's own words for a refused request (vLLM and OpenAI: ``{"error": {"message"}}``)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:300]
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:300]
    return resp.text[:300]


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` says about the model this endpoint serves."""

    id: str
    root: str | None
    max_model_len: int | None
    owned_by: str | None
    card_sha256: str

    @property
    def revision(self) -> str:
        """The records' ``model_revision``: the served path (vLLM: the weights folder or hub id
        it loaded) and a digest of the card without its per-request ``created`` time."""
        return f"served:{self.root or self.id}+card-sha256:{self.card_sha256[:16]}"


def served_model(cards: list[dict[str, Any]], wanted: str | None) -> ServedModel:
    """The card of ``wanted`` (or the only card) of a ``/v1/models`` answer."""
    if wanted is not None:
        match = [c for c in cards if c.get("id") == wanted]
        if not match:
            raise EndpointError(f"model.endpoint.served_model {wanted!r} is not served here (served: "
                                f"{sorted(str(c.get('id')) for c in cards)})")
    else:
        match = [c for c in cards if not c.get("parent")]  # base models; a LoRA adapter names its parent
        if len(match) != 1:
            raise EndpointError(f"the endpoint serves {len(match)} base models "
                                f"({sorted(str(c.get('id')) for c in match)}): name one in model.endpoint.served_model")
    card = match[0]
    stable = {k: card.get(k) for k in ("id", "root", "parent", "max_model_len", "owned_by")}
    digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()
    mml = card.get("max_model_len")
    return ServedModel(str(card["id"]), card.get("root"), int(mml) if mml else None, card.get("owned_by"), digest)


# One limit per endpoint in this process: partitions handled concurrently by one engine actor
# share it, so the endpoint never sees more than max_concurrency requests from this process.
_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def endpoint_slots(url: str, limit: int) -> threading.BoundedSemaphore:
    with _SLOTS_LOCK:
        return _SLOTS.setdefault((endpoint_key(url), limit), threading.BoundedSemaphore(limit))


class _Retry(Exception):
    """One attempt failed in a way worth another (429, 5xx, a timeout, a dropped connection)."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait_s = wait_s


class OpenAIBackend:
    """The :class:`~hare.backends.base.GenerationBackend` of an OpenAI-compatible endpoint.

    ``transport`` is httpx's (tests pass a mock transport); ``sleep`` and ``clock`` are the
    waiting and the time the retry loop uses (tests make them instant)."""

    def __init__(self, endpoint: EndpointConfig, model_name: str, *, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self._sleep, self._clock = sleep, clock
        headers = {"User-Agent": "hare"}
        key = read_api_key(endpoint.api_key_env)
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=endpoint.base_url + "/", headers=headers, transport=transport,
            timeout=httpx.Timeout(endpoint.timeout_s, connect=min(endpoint.timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=endpoint.max_concurrency,
                                max_keepalive_connections=endpoint.max_concurrency),
        )
        self._slots = endpoint_slots(endpoint.base_url, endpoint.max_concurrency)
        self.served = self._served_model()
        self.server_version = self._server_version()
        self.name = f"openai-api {self.served.owned_by or 'server'}" + (
            f" {self.server_version}" if self.server_version else "")
        self.model = model_name
        self.model_revision = self.served.revision

    def __repr__(self) -> str:  # the client's headers hold the key: never print them
        return f"OpenAIBackend({endpoint_key(self.endpoint.base_url)!r}, model={self.served.id!r})"

    def close(self) -> None:
        self._client.close()

    # -- what the endpoint serves ---------------------------------------------------------

    def _served_model(self) -> ServedModel:
        """``GET /models`` under the same retries as generation (a server still starting
        answers 503 or refuses connections for a while)."""
        outcome = self._with_retries(lambda: self._get_json("models"))
        if isinstance(outcome, str):
            raise EndpointError(f"{endpoint_key(self.endpoint.base_url)}/models: {outcome}")
        cards = outcome.get("data") if isinstance(outcome, dict) else None
        if not isinstance(cards, list):
            raise EndpointError(f"{endpoint_key(self.endpoint.base_url)}/models did not answer a model list")
        return served_model(cards, self.endpoint.served_model)

    def _server_version(self) -> str | None:
        """vLLM's ``GET /version`` (beside ``/v1``), for the records' ``backend``; None elsewhere."""
        root = self.endpoint.base_url.rsplit("/v1", 1)[0] if self.endpoint.base_url.endswith("/v1") else None
        if root is None:
            return None
        try:
            resp = self._client.get(root + "/version", timeout=min(self.endpoint.timeout_s, 10.0))
            version = resp.json().get("version") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return str(version) if version else None

    def describe(self) -> dict[str, Any]:
        """What lineage and the card record about the endpoint (no key, no headers)."""
        return {"endpoint": endpoint_key(self.endpoint.base_url), "served_model": self.served.id,
                "root": self.served.root, "max_model_len": self.served.max_model_len,
                "owned_by": self.served.owned_by, "server_version": self.server_version,
                "card_sha256": self.served.card_sha256, "max_concurrency": self.endpoint.max_concurrency}

    # -- one HTTP attempt, and the retry loop ---------------------------------------------

    def _get_json(self, path: str) -> Any:
        """One GET of a JSON document (under the endpoint's limit); a refusal is an EndpointError."""
        with self._slots:
            resp = self._send(lambda: self._client.get(path))
        if resp.status_code != 200:  # 401/403: a wrong key; 404: not an OpenAI-compatible root
            raise EndpointError(f"{endpoint_key(self.endpoint.base_url)}/{path}: HTTP {resp.status_code}: "
                                f"{_error_message(resp)}")
        try:
            return resp.json()
        except ValueError:
            raise EndpointError(f"{endpoint_key(self.endpoint.base_url)}/{path} did not answer JSON") from None

    def _send(self, call: Callable[[], httpx.Response]) -> httpx.Response:
        """One attempt; a retryable failure raises :class:`_Retry`, any other answer returns."""
        try:
            resp = call()
        except httpx.TimeoutException as exc:
            raise _Retry(f"timeout ({type(exc).__name__}) after {self.endpoint.timeout_s:g} s") from None
        except httpx.TransportError as exc:  # refused, reset, DNS: the server is away
            raise _Retry(f"connection error ({type(exc).__name__}: {exc})"[:300]) from None
        if resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
            raise _Retry(f"HTTP {resp.status_code}: {_error_message(resp)}"[:300],
                         retry_after_s(resp.headers.get("retry-after")))
        return resp

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        """``attempt()``'s value, retried on :class:`_Retry` with exponential backoff and full
        jitter (a server's ``Retry-After`` wins when longer) while the request's time since its
        first try plus the next wait stays inside ``retry_budget_s``; else why it gave up (a str)."""
        ep = self.endpoint
        started = self._clock()
        tries = 0
        while True:
            tries += 1
            try:
                return attempt()
            except _Retry as exc:
                ceiling = min(ep.backoff_max_s, ep.backoff_s * 2.0 ** min(tries - 1, 60))  # no float overflow
                wait = random.uniform(0, ceiling)
                if exc.wait_s is not None:
                    wait = max(wait, min(exc.wait_s, ep.backoff_max_s))
                spent = self._clock() - started
                if spent + wait > ep.retry_budget_s:
                    return (f"{UNAVAILABLE}: {exc.reason} (after {tries} attempt(s) in {spent:.1f} s; "
                            f"model.endpoint.retry_budget_s = {ep.retry_budget_s:g})")
                log.warning("endpoint %s: %s; retry %d in %.1f s", endpoint_key(ep.base_url), exc.reason, tries, wait)
                self._sleep(wait)

    # -- generation -----------------------------------------------------------------------

    def _one(self, r: GenerationRequest, sampling: SamplingConfig) -> GenerationResult:
        body = request_payload(r, sampling, self.served.id, vllm_params=self.endpoint.vllm_params,
                               max_model_len=self.served.max_model_len)
        if isinstance(body, str):
            return GenerationResult(r.prompt_index, "", 0, 0, "error", error=body)

        def attempt() -> httpx.Response:
            with self._slots:  # held only while a request is on the wire, not while backing off
                return self._send(lambda: self._client.post("chat/completions", json=body))

        resp = self._with_retries(attempt)
        if isinstance(resp, str):
            return GenerationResult(r.prompt_index, "", 0, 0, "error", error=resp)
        if resp.status_code != 200:
            message = _error_message(resp)
            reason = "prompt_too_long" if "maximum context length" in message else REJECTED
            return GenerationResult(r.prompt_index, "", 0, 0, "error", error=f"{reason}: HTTP {resp.status_code}: "
                                                                              f"{message}"[:500])
        try:
            answer = resp.json()
            choice = answer["choices"][0]
            raw = choice["message"]["content"] or ""
            usage = answer.get("usage") or {}
            prompt_tokens, output_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return GenerationResult(r.prompt_index, "", 0, 0, "error",
                                    error=f"{REJECTED}: unreadable answer ({type(exc).__name__}: {exc})"[:500])
        text = raw if r.guided_regex else raw.strip()  # a guided value keeps its exact shape, as in-process
        return GenerationResult(r.prompt_index, text, prompt_tokens, output_tokens,
                                str(choice.get("finish_reason")), error=output_problem(text))

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[GenerationResult]:
        """All requests at once, at most ``max_concurrency`` on the wire (the server batches
        them continuously, as the in-process engine batches a partition); results in order."""
        if not requests:
            return []
        workers = min(self.endpoint.max_concurrency, len(requests))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hare-openai") as pool:
            return list(pool.map(lambda r: self._one(r, sampling), requests))
