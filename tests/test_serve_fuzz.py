"""Fuzzing from the server's OpenAPI schema (issue 23): schemathesis generates requests for every route
of GET /openapi.json — valid ones and invalid ones (wrong types, out-of-range values, missing fields) —
against a real `python -m nvllm.serve` on a free loopback port (a tiny random llama with SmolLM2's
tokenizer and chat template, default serve.* settings). Every answer is below 500, every 4xx carries
a well-formed OpenAI error body, and afterwards the server is healthy with every KV block free. A
bounded run in `make test`; a longer one marked slow."""
import json
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from tests.test_serve import Server, wait_idle

MAX_MODEL_LEN = 64  # short answers: a fuzzed request costs a few steps


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, tiny_text_path):
    server = Server(tmp_path_factory.mktemp("fuzz"), "model=llama", f"model.path={tiny_text_path}",
                    f"max_model_len={MAX_MODEL_LEN}", "kv_cache.block_size=16", "kv_cache.num_blocks=64")
    yield server
    server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    config = SchemathesisConfig()
    config.projects.default.update(base_url=fuzz_server.url, request_timeout=120)
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


def check(case):
    response = case.call()
    assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:1000]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
        assert len(response.content) < 2000, "an error echoes the request back"


def fuzz(api_schema, examples: int):
    """`examples` cases per route and mode (valid data, then invalid), each sent and checked. The
    schema's strategies under hypothesis directly: schemathesis's pytest loader does not run on pytest 9."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {"POST /v1/completions", "POST /v1/chat/completions",
                                                                        "GET /v1/models", "GET /metrics", "GET /metrics/serving"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode == GenerationMode.NEGATIVE and not (len(operation.query) or len(operation.body)):
                continue  # nothing to send wrong
            run = settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                           database=None)(given(case=operation.as_strategy(mode))(check))
            began = time.monotonic()
            run()
            print(f"{operation.method.upper()} {operation.path} {mode.value}: {time.monotonic() - began:.1f} s")


@pytest.mark.parametrize("examples", [12, pytest.param(200, marks=pytest.mark.slow)])
def test_fuzz_every_route(api_schema, examples):
    fuzz(api_schema, examples)


def test_after_fuzzing_the_server_is_healthy_with_every_block_free(fuzz_server):
    state = wait_idle(fuzz_server, timeout=120)
    assert state["status"] == "ok" and state["live_requests"] == 0
    assert state["free_kv_blocks"] == state["total_kv_blocks"]
    answer = httpx.post(f"{fuzz_server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3


def test_the_schema_describes_the_request_bodies(fuzz_server):
    spec = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    completion = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"prompt", "max_tokens", "temperature", "stop"} <= set(completion["properties"])
    assert completion["properties"]["top_k"]["maximum"] == 2**63 - 1


def test_defaults_no_cors_and_a_prompt_limit_from_max_model_len(fuzz_server):
    preflight = httpx.options(f"{fuzz_server.url}/v1/completions", timeout=10, headers={
        "origin": "http://any.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    limit = 16 * MAX_MODEL_LEN  # serve.max_prompt_chars=null: 16 characters per token of max_model_len
    response = httpx.post(f"{fuzz_server.url}/v1/completions", json={"prompt": "a" * (limit + 1)}, timeout=30)
    assert response.status_code == 400 and "serve.max_prompt_chars" in response.json()["error"]["message"]
    assert json.loads(httpx.get(f"{fuzz_server.url}/v1/models", timeout=10).text)["data"][0]["id"] == "llama"
