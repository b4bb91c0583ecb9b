"""A server one client cannot break (issue 23), against a real `python -m nvllm.serve` process (a tiny
random llama with SmolLM2's tokenizer and chat template; an API key, one CORS origin, and a sampler
plugin that fails on purpose for a marked request) driven by httpx and the openai client: every /v1
route needs the key; JSON routes take only JSON; a foreign Host header is refused; strict types,
int64 ranges and every input that used to be a 500 get an OpenAI 4xx body that does not echo the
input back; the size limits refuse before any tokenisation; tiny temperature / top_p give the greedy
tokens; one request's fault ends that request alone; a maximal request, tokenised off the engine
thread, does not hold up a running stream (slow: it needs a server of its own). The other checks
share one server."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.fault_sampler import FAULT_AT, FAULT_SEED
from tests.test_plugins import make_distribution
from tests.test_serve import OVERRIDES, PROMPT, Server, wait_idle

KEY = "sk-test-4f1c"
ORIGIN = "http://allowed.example"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fault_sampler_site(tmp_path_factory):
    return make_distribution(tmp_path_factory.mktemp("fault-sampler"), name="nvllm-fault-sampler",
                             module="nvllm_fault_sampler", ep_name="fault_sampler",
                             body=(Path(__file__).parent / "fault_sampler.py").read_text())


def hardened(tmp_path, model_path, site, *overrides) -> Server:
    """A server of `model_path` with the API key and the fault-injecting sampler plugin."""
    return Server(tmp_path, "model=llama", f"model.path={model_path}", "sampler=faulty", *overrides,
                  env={"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
                       "NVLLM_API_KEY": KEY})


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_text_path, fault_sampler_site):
    server = hardened(tmp_path_factory.mktemp("serve"), tiny_text_path, fault_sampler_site, *OVERRIDES,
                      f"serve.cors_origins=[{ORIGIN}]")
    yield server
    server.stop()
    assert "Traceback" not in server.output, server.output


def post(server, path, body, headers=None, timeout=60):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, timeout=timeout,
                      headers={"content-type": "application/json", **AUTH, **(headers or {})})


def assert_openai_error(response, status, param=None, message=None):
    assert response.status_code == status, response.text[:2000]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if param is not None:
        assert error["param"] == param, error
    if message is not None:
        assert message in error["message"], error
    assert len(response.content) < 1500, f"the error echoes the request: {len(response.content)} bytes"
    return error


# -- security defaults -------------------------------------------------------------------------
def test_every_v1_route_needs_the_api_key(server):
    body = {"prompt": PROMPT, "max_tokens": 2}
    for headers in ({"authorization": ""}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
        assert_openai_error(post(server, "/v1/completions", body, headers), 401, message="API key")
    assert_openai_error(httpx.get(f"{server.url}/v1/models", timeout=10), 401, message="Authorization: Bearer")
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH, timeout=10).status_code == 200
    assert post(server, "/v1/completions", body).json()["usage"]["completion_tokens"] == 2
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # probes need no key, as vLLM's
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as client:
        assert client.completions.create(model="llama", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_routes_take_only_json(server, content_type):
    """A page in a browser can POST text/plain anywhere without a CORS preflight: refused."""
    headers = {**AUTH, **({"content-type": content_type} if content_type else {})}
    response = httpx.post(f"{server.url}/v1/completions", content=json.dumps({"prompt": PROMPT, "max_tokens": 2}),
                          headers=headers, timeout=30)
    if content_type is None:
        response = httpx.post(f"{server.url}/v1/completions", content=b'{"prompt": "hi"}',
                              headers={**AUTH, "content-type": ""}, timeout=30)
    assert_openai_error(response, 415, message="application/json")
    assert post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2},
                {"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_a_foreign_host_header_is_refused_on_loopback(server):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    response = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2}, {"host": "evil.example"})
    assert_openai_error(response, 400, message="serve.allowed_hosts")
    assert_openai_error(httpx.get(f"{server.url}/health", headers={"host": "evil.example:8000"}, timeout=10), 400)
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1}, {"host": host}).status_code == 200


def test_cors_answers_only_the_configured_origin(server):
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization,content-type"}
    allowed = httpx.options(f"{server.url}/v1/completions", headers={"origin": ORIGIN, **preflight}, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{server.url}/v1/completions", headers={"origin": "http://evil.example", **preflight}, timeout=10)
    assert "access-control-allow-origin" not in other.headers
    answer = post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1}, {"origin": ORIGIN})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN


# -- strict types, int64 ranges, every former 500, and the limits: an OpenAI 4xx -------------------
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]
BAD = {
    # strict types: a bool or a string is not a number, a string is not a bool
    "max_tokens true": ("/v1/completions", {"prompt": "hi", "max_tokens": True}, 400, "max_tokens", "valid integer"),
    "ignore_eos 'yes'": ("/v1/completions", {"prompt": "hi", "ignore_eos": "yes"}, 400, "ignore_eos", "valid boolean"),
    "stream 'true'": ("/v1/completions", {"prompt": "hi", "stream": "true"}, 400, "stream", "valid boolean"),
    "prompt [true, false]": ("/v1/completions", {"prompt": [True, False]}, 400, "prompt.0", "valid integer"),
    "temperature '0.5'": (CHAT, {"messages": MSG, "temperature": "0.5"}, 400, "temperature", "valid number"),
    "max_tokens 4.0": ("/v1/completions", {"prompt": "hi", "max_tokens": 4.0}, 400, "max_tokens", "valid integer"),
    # what the engine can hold: int64 (a seed: what torch.Generator takes)
    "top_k 2**63": ("/v1/completions", {"prompt": "hi", "top_k": 2**63}, 400, "top_k", "less than or equal to"),
    "seed 2**64": ("/v1/completions", {"prompt": "hi", "seed": 2**64}, 400, "seed", "less than or equal to"),
    "max_tokens 2**63": (CHAT, {"messages": MSG, "max_tokens": 2**63}, 400, "max_tokens", "less than or equal to"),
    "stop_token_ids [2**63]": ("/v1/completions", {"prompt": "hi", "stop_token_ids": [2**63]}, 400,
                               "stop_token_ids.0", "less than or equal to"),
    "temperature inf": ("/v1/completions", b'{"prompt": "hi", "temperature": 1e999}', 400, "temperature", "finite"),
    "temperature NaN": ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', 400, "temperature", "finite"),
    # inputs that were a 500
    "lone surrogate": ("/v1/completions", b'{"prompt": "a\\ud800b"}', 400, None, "not valid JSON"),
    "lone surrogate in chat": (CHAT, b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400, None, "not valid JSON"),
    "100,000-deep nesting": ("/v1/completions", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None,
                             "not valid JSON"),
    "5,000-digit integer": ("/v1/completions", b'{"prompt": "hi", "seed": ' + b"7" * 5000 + b"}", 400, None,
                            "not valid JSON"),
    # the limits: refused before any tokenisation, naming the serve.* key that sets them
    "100,000 stop strings": ("/v1/completions", {"prompt": "hi", "stop": [f"s{i}" for i in range(100_000)]}, 400, "stop",
                             "serve.max_stop"),
    "a 10,000-character stop string": ("/v1/completions", {"prompt": "hi", "stop": "x" * 10_000}, 400, "stop",
                                       "serve.max_stop_chars"),
    "100,000 stop_token_ids": ("/v1/completions", {"prompt": "hi", "stop_token_ids": list(range(100_000))}, 400,
                               "stop_token_ids", "serve.max_stop_token_ids"),
    "2,000 messages": (CHAT, {"messages": MSG * 2000}, 400, "messages", "serve.max_messages"),
    "a body over the limit": ("/v1/completions", {"prompt": "word " * 300_000}, 413, None, "serve.max_body_bytes"),
    # a field accepted only at its neutral value: refused without echoing a large value back
    "5,000 tools": (CHAT, {"messages": MSG, "tools": [None] * 5000}, 400, "tools", "not supported"),
    "a 5,000-key logit_bias": ("/v1/completions", {"prompt": "hi", "logit_bias": {str(i): 1 for i in range(5000)}},
                               400, "logit_bias", "not supported"),
    "a 10,000-character unknown field": ("/v1/completions", {"prompt": "hi", "x" * 10_000: 1}, 400, "x" * 200,
                                         "unknown field"),
    "a 10,000-character model name": ("/v1/completions", {"prompt": "hi", "model": "m" * 10_000}, 404, "model",
                                      "not served here"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_an_openai_4xx(server, case):
    path, body, status, param, message = BAD[case]
    assert_openai_error(post(server, path, body), status, param, message)


@pytest.mark.parametrize("query, param", [("percentiles=200", "percentiles"), ("percentiles=-1", "percentiles"),
                                          ("percentiles=nan", "percentiles"), ("request_rate=nan", "request_rate"),
                                          ("request_rate=-2", "request_rate"), ('slo={"ttft_ms": "x"}', "slo"),
                                          ("slo=[1]", "slo"), ("slo=" + "[" * 3000, "slo"),
                                          ("percentiles=" + "5," * 3000, "percentiles")])
def test_bad_metrics_query_is_a_400(server, query, param):
    assert_openai_error(httpx.get(f"{server.url}/metrics/serving?{query}", timeout=10), 400, param)


# what the engine refuses, as the server's checks do: the field and a code, never null
ENGINE_REFUSALS = {
    "min_tokens > max_tokens": ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "min_tokens": 5}, "min_tokens",
                                "invalid_value", "min_tokens"),
    "a token id = the vocabulary size": ("/v1/completions", {"prompt": [1, 49152]}, "prompt", "invalid_value",
                                         "token id 49152"),
    "an empty prompt": ("/v1/completions", {"prompt": ""}, "prompt", "invalid_value", "empty"),
    "no token ids": ("/v1/completions", {"prompt": []}, "prompt", "invalid_value", "empty"),
    "a prompt at max_model_len": ("/v1/completions", {"prompt": [1] * 512}, "prompt", "context_length_exceeded",
                                  "max_model_len=512"),
    "a conversation past max_model_len": (CHAT, {"messages": [{"role": "user", "content": "word " * 600}]}, "messages",
                                          "context_length_exceeded", "max_model_len=512"),
    "seed + n - 1 past 2**64": ("/v1/completions", {"prompt": "hi", "n": 16, "seed": 2**64 - 15}, "seed",
                                "invalid_value", str(2**64 - 15)),
    "a stop token id = the vocabulary size": ("/v1/completions", {"prompt": "hi", "stop_token_ids": [49152]},
                                              "stop_token_ids", "invalid_value", "49152"),
}


@pytest.mark.parametrize("case", list(ENGINE_REFUSALS))
def test_every_4xx_names_its_field_and_a_code(server, case):
    path, body, param, code, message = ENGINE_REFUSALS[case]
    assert assert_openai_error(post(server, path, body), 400, param, message)["code"] == code


def test_the_largest_seed_n_allows_is_taken(server):
    body = {"prompt": PROMPT, "max_tokens": 1, "n": 16, "seed": 2**64 - 16, "temperature": 1.0}
    answer = post(server, "/v1/completions", body)
    assert answer.status_code == 200 and len(answer.json()["choices"]) == 16, answer.text[:2000]


def test_chat_top_logprobs_gives_exactly_n(server):
    """At temperature 1 a random model's sampled token is mostly outside the top 20, which made 21."""
    body = {"messages": MSG, "max_tokens": 8, "ignore_eos": True, "temperature": 1.0, "seed": 7, "logprobs": True,
            "top_logprobs": 20}
    content = post(server, CHAT, body).json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and [len(token["top_logprobs"]) for token in content] == [20] * 8
    for token in content:
        top = [t["logprob"] for t in token["top_logprobs"]]
        assert top == sorted(top, reverse=True)
    zero = post(server, CHAT, {**body, "top_logprobs": 0}).json()["choices"][0]["logprobs"]["content"]
    assert [len(token["top_logprobs"]) for token in zero] == [0] * 8


def _success_counts(server) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("nvllm:request_success_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('finished_reason="')[1].split('"')[0]] = float(value)
    return counts


def test_a_client_that_goes_away_counts_as_abort(server):
    before = _success_counts(server).get("abort", 0)
    with pytest.raises(httpx.TimeoutException):  # hangs up while the answer is generated
        post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True}, timeout=0.5)
    deadline = time.monotonic() + 30
    while _success_counts(server).get("abort", 0) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    post(server, "/v1/completions", {"prompt": [1] * 500, "max_tokens": 40, "ignore_eos": True})  # cut at max_model_len
    counts = _success_counts(server)
    assert counts.get("abort", 0) == before + 1, counts
    assert set(counts) <= {"stop", "length", "abort", "error"}, counts  # vLLM's finished_reason values


def test_a_client_that_closes_mid_body_is_one_log_line(server):
    import socket

    port = int(server.url.rsplit(":", 1)[1])
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + b'{"prompt": "' + b"x" * 40 + b'", "max')  # 54 bytes of the 1000 announced
        time.sleep(0.5)
    deadline = time.monotonic() + 10
    while "went away while sending its request body" not in server.output and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the client went away while sending its request body" in server.output
    assert "ClientDisconnect" not in server.output and "Traceback" not in server.output, server.output[-5000:]


def test_a_chunked_body_over_the_limit_is_refused(server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(300):
            yield b"word " * 1000
        yield b'"}'

    response = httpx.post(f"{server.url}/v1/completions", content=chunks(), timeout=60,
                          headers={"content-type": "application/json", **AUTH})
    assert_openai_error(response, 413, message="serve.max_body_bytes")


def test_the_engine_serves_on_after_all_that(server):
    assert post(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3}).json()["usage"]["completion_tokens"] == 3
    state = wait_idle(server)
    assert state["status"] == "ok" and state["free_kv_blocks"] == state["total_kv_blocks"]


# -- sampling edge values ------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{"temperature": 1e-38}, {"temperature": 1e-46}, {"temperature": 1.0, "top_p": 1e-46},
                                    {"temperature": 1.0, "top_p": 1e-38}])
def test_a_collapsed_distribution_gives_the_greedy_tokens(server, params):
    def tokens(**sampling):
        body = {"prompt": PROMPT, "max_tokens": 8, "ignore_eos": True, "return_token_ids": True, **sampling}
        return post(server, "/v1/completions", body).json()["choices"][0]["token_ids"]

    assert tokens(**params) == tokens(temperature=0)


# -- a fault stays with its request ----------------------------------------------------------------
def test_a_fault_in_one_request_ends_only_that_request(server):
    """A streamed and a whole answer run beside a streamed and a whole request that fault at their
    FAULT_AT-th token (the sampler plugin): the neighbours get exactly what they get alone."""
    neighbour = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    culprit = {**neighbour, "seed": FAULT_SEED}
    alone = post(server, "/v1/completions", neighbour).json()["choices"][0]["token_ids"]
    results = {}

    def streamed(name, body):
        with httpx.stream("POST", f"{server.url}/v1/completions", json={**body, "stream": True}, headers=AUTH,
                          timeout=120) as response:
            results[name] = [line for line in response.iter_lines() if line]

    def whole(name, body):
        results[name] = post(server, "/v1/completions", body, timeout=120)

    threads = [threading.Thread(target=f, args=a) for f, a in ((streamed, ("s", neighbour)), (whole, ("w", neighbour)),
                                                               (streamed, ("sc", culprit)), (whole, ("wc", culprit)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    events = [json.loads(line[6:]) for line in results["s"][:-1]]
    assert results["s"][-1] == "data: [DONE]" and [t for e in events for t in e["choices"][0]["token_ids"]] == alone
    assert results["w"].status_code == 200 and results["w"].json()["choices"][0]["token_ids"] == alone
    culprit_events = results["sc"]
    assert culprit_events[-1] == "data: [DONE]", culprit_events
    error = json.loads(culprit_events[-2][6:])["error"]
    assert error["type"] == "internal_error" and "injected fault" in error["message"], error
    chunks = [json.loads(line[6:]) for line in culprit_events[:-2]]
    assert sum(len(c["choices"][0]["token_ids"]) for c in chunks) == FAULT_AT
    whole_error = assert_openai_error(results["wc"], 500, message="injected fault")
    assert whole_error["type"] == "internal_error"
    state = wait_idle(server)
    assert state["status"] == "ok" and state["free_kv_blocks"] == state["total_kv_blocks"]
    assert "injected" not in json.dumps(state), "/health shows another client's error text"


# -- bounded input, tokenised off the engine thread ---------------------------------------------------
@pytest.mark.slow
def test_a_maximal_request_does_not_hold_up_a_running_stream(tmp_path, tiny_text_path, fault_sampler_site):
    """While one stream decodes, the largest requests the limits let in (~1 MB of text, as a completion
    and as a chat message; the prompt limit raised to what the body limit allows) are read, tokenised in
    the worker processes and refused (too many tokens for max_model_len). The engine keeps stepping
    meanwhile: the stream gets at least a third of the tokens its own pace (its rate over the two
    seconds before) predicts for that time — where tokenising on the engine thread stops it outright
    for as long as the tokenizer runs. (A count of tokens rather than a largest gap: this 2-core
    machine is shared, and its load spikes any single gap.) Should the stream reach its length before the
    big requests end (a fast machine), the window measured ends at its last token."""
    server = hardened(tmp_path, tiny_text_path, fault_sampler_site, "max_model_len=16384",
                      "serve.max_prompt_chars=2000000")
    try:
        times, last, stop = [], [], threading.Event()
        big = "word " * 200_000  # 1,000,000 characters: just under the 1 MiB body limit

        def stream():
            body = {"prompt": PROMPT, "max_tokens": 16000, "temperature": 0, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=AUTH, timeout=600) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        times.append(time.perf_counter())
                        last[:] = [line]
                    if stop.is_set():
                        break  # hang up: the server aborts the rest

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 300
        while len(times) < 5:  # a stream that ends or stalls first fails here, never waits for ever
            assert reader.is_alive() and time.monotonic() < deadline, \
                f"the stream gave {len(times)} tokens and {'stalled' if reader.is_alive() else 'ended'}:\n" \
                f"{server.output[-3000:]}"
            time.sleep(0.01)
        time.sleep(2.0)
        # its own pace: tokens per second over the last two seconds (a rate, not a median gap: with a
        # model this small several tokens arrive in one read, and most gaps are zero)
        now = time.perf_counter()
        recent = [t for t in times if t >= now - 2.0]
        pace = 2.0 / max(len(recent), 1)
        start = time.perf_counter()
        completion = post(server, "/v1/completions", {"prompt": big, "max_tokens": 4}, timeout=600)
        chat = post(server, CHAT, {"messages": [{"role": "user", "content": big}], "max_tokens": 4}, timeout=600)
        end = time.perf_counter()
        still_running = reader.is_alive()
        stop.set()
        reader.join(600)
    finally:
        server.stop()
    assert_openai_error(completion, 400, message="max_model_len=16384")
    assert_openai_error(chat, 400, message="max_model_len=16384")
    if not still_running:  # it ended on its own: at its length, never on an error
        assert json.loads(last[0][6:])["choices"][0]["finish_reason"] == "length", last
        end = min(end, times[-1])
    during = sum(start <= t <= end for t in times)
    expected = (end - start) / pace
    print(f"stream pace {pace * 1000:.1f} ms/token; over {end - start:.1f} s of the big requests the stream "
          f"got {during} tokens of {expected:.0f} at its pace (still running at their end: {still_running})")
    assert expected >= 5, "the big requests were too quick to show anything"
    assert during >= expected / 3, f"the stream got {during} tokens where its pace gives {expected:.0f}"
    assert "Traceback" not in server.output, server.output


# -- a configuration it cannot run: one line, no traceback -----------------------------------------
def _one_line(done: subprocess.CompletedProcess, starts: str):
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(starts), done.stderr[-3000:]
    return lines[-1]


def test_a_bad_port_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nvllm.serve", "serve.port=70000"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert _one_line(done, "nvllm.serve: ") == ("nvllm.serve: serve.port=70000 is not allowed: use an integer in "
                                                "0..65535 (0: any free port)")


@pytest.mark.parametrize("command", ["nvllm.serve", "nvllm.run"])
def test_a_truncated_config_json_is_one_line(tmp_path, tiny_qwen3_path, command):
    import shutil

    broken = shutil.copytree(tiny_qwen3_path, tmp_path / "ckpt")
    config = broken / "config.json"
    config.write_text(config.read_text()[:100])
    workload = ["workload=random"] if command == "nvllm.run" else []  # the default chat one needs a chat template
    done = subprocess.run([sys.executable, "-m", command, "model=qwen3", f"model.path={broken}", *workload,
                           f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    line = _one_line(done, "nvllm")
    assert f"{config} is not valid JSON" in line and "truncated or damaged" in line
