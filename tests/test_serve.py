"""`python -m nvllm.serve` against real clients: a real server process on a free port of
127.0.0.1 serving the embedded SmolLM2, driven by the official `openai` package and raw HTTP.
Greedy answers equal offline LLM.generate's, streamed and not; 64 concurrent streams all
complete and leave every KV block free; a client that goes away has its request aborted; bad
requests get OpenAI-style 4xx bodies and the engine goes on; Ctrl-C stops the server (and its
tensor-parallel ranks) cleanly."""
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from nvllm import LLM, SamplingParams

# small enough that a prompt can be "too long", and a small cache of small blocks, so the load
# test has requests wait for blocks and be preempted
ENGINE = {"max_model_len": 512, "kv_cache": {"block_size": 16, "num_blocks": 160}}
OVERRIDES = ["max_model_len=512", "kv_cache.block_size=16", "kv_cache.num_blocks=160"]
QUESTION = "What is the capital of France?"
PROMPT = "The three primary colours are"
READY = re.compile(r"ready on (http://\S+)")


class Server:
    """A `python -m nvllm.serve` process in its own session (so Ctrl-C can go to its whole
    process group, as a terminal sends it), its output collected by a thread."""

    def __init__(self, cwd, *overrides, timeout: float = 300, env: dict | None = None):
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "nvllm.serve", "serve.port=0", *overrides], cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        ready = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if self.url is None and (m := READY.search(line)):
                    self.url = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or self.url is None:
            self.stop()
            raise AssertionError(f"the server did not get ready in {timeout} s:\n{self.output}")

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to every process of the group."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.interrupt(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left of the group: no orphans
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serve"), *OVERRIDES)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def offline():
    with LLM("smollm2", **ENGINE) as llm:
        yield llm


def health(server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def wait_idle(server, timeout: float = 30) -> dict:
    """/health once no request is live (aborts and finishes land between steps)."""
    deadline = time.monotonic() + timeout
    while (state := health(server))["live_requests"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return state


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def test_models_and_health(server):
    """The embedded model answers to its option's name and to its Hugging Face id."""
    models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert all(m["max_model_len"] == 512 for m in models["data"])
    for name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        answer = httpx.post(f"{server.url}/v1/completions", json={"model": name, "prompt": PROMPT, "max_tokens": 2},
                            timeout=60)
        assert answer.status_code == 200 and answer.json()["model"] == name, answer.text
    other = httpx.post(f"{server.url}/v1/completions", json={"model": "HuggingFaceTB/SmolLM2-360M", "prompt": PROMPT},
                       timeout=60)
    assert other.status_code == 404 and other.json()["error"]["param"] == "model"
    state = health(server)
    assert state["status"] == "ok" and state["free_kv_blocks"] == state["total_kv_blocks"] == 160


def test_completion_equals_offline(client, offline):
    want = offline.generate(PROMPT, greedy(16), use_tqdm=False)[0]
    got = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=16, temperature=0,
                                    extra_body={"return_token_ids": True})
    choice = got.choices[0]
    assert choice.text == want.outputs[0].text and choice.model_extra["token_ids"] == want.outputs[0].token_ids
    assert choice.finish_reason == "length" == want.outputs[0].finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (len(want.prompt_token_ids), 16)
    assert got.object == "text_completion" and got.model == "smollm2"


def test_streamed_token_id_completion_equals_offline(client, offline):
    prompt = offline.tokenizer.encode(PROMPT)
    want = offline.generate(prompt, greedy(12), use_tqdm=False)[0].outputs[0]
    chunks = list(client.completions.create(model="smollm2", prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True}))
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert "".join(p.text for p in pieces) == want.text
    assert [t for p in pieces for t in p.model_extra["token_ids"]] == want.token_ids
    assert len(pieces) == 12  # one chunk per decoded token: the stream is incremental
    assert pieces[-1].finish_reason == "length" and all(p.finish_reason is None for p in pieces[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and (usage.prompt_tokens, usage.completion_tokens) == (len(prompt), 12)


@pytest.mark.parametrize("stream", [False, True])
def test_chat_equals_offline(client, offline, stream):
    want = offline.generate(offline.chat_prompt(QUESTION), greedy(32), use_tqdm=False)[0].outputs[0]
    assert "Paris" in want.text and want.finish_reason == "stop"
    messages = [{"role": "user", "content": QUESTION}]
    if stream:
        chunks = list(client.chat.completions.create(model="smollm2", messages=messages, max_tokens=32,
                                                     temperature=0, stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=32, temperature=0)
        text, finish = answer.choices[0].message.content, answer.choices[0].finish_reason
        assert answer.choices[0].message.role == "assistant"
        assert answer.usage.completion_tokens == len(want.token_ids)
    assert text == want.text and finish == "stop"


def test_stop_string_and_seeded_sampling(client, offline):
    want = offline.generate(offline.chat_prompt(QUESTION), greedy(32, stop=["Paris"]), use_tqdm=False)[0].outputs[0]
    messages = [{"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=32, temperature=0,
                                            stop="Paris")
    assert answer.choices[0].message.content == want.text and "Paris" not in want.text
    assert answer.choices[0].finish_reason == "stop"
    sampled = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=7, max_tokens=10)
    want = offline.generate(PROMPT, sampled, use_tqdm=False)[0].outputs[0]
    got = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=10, temperature=0.8, top_p=0.9, seed=7,
                                    extra_body={"top_k": 40})
    assert got.choices[0].text == want.text


def test_sse_wire_format(server):
    """What curl sees: `data: {...}` events, a usage chunk, then `data: [DONE]`."""
    body = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]


@pytest.mark.slow
def test_64_concurrent_streams_all_complete_and_free_every_block(server):
    """Continuous batching across HTTP clients: mixed prompt and output lengths, up to more
    than the cache holds at once; each gets exactly its tokens, once, and the cache ends empty."""
    rng = random.Random(0)
    jobs = [([rng.randrange(10000) for _ in range(rng.randint(4, 48))], rng.randint(1, 8)) for _ in range(64)]
    finished_before = health(server)["finished_requests"]

    async def one(client, i, prompt, max_tokens):
        stream = await client.completions.create(model="smollm2", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True, "return_token_ids": True})
        ids, tokens, finish = set(), [], None
        async for chunk in stream:
            ids.add(chunk.id)
            tokens += chunk.choices[0].model_extra["token_ids"]
            finish = chunk.choices[0].finish_reason or finish
        return i, ids, tokens, finish

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(one(c, i, p, m) for i, (p, m) in enumerate(jobs)))

    start = time.monotonic()
    results = asyncio.run(asyncio.wait_for(run(), 300))
    assert sorted(r[0] for r in results) == list(range(64))
    ids = [r[1] for r in results]
    assert all(len(i) == 1 for i in ids) and len(set().union(*ids)) == 64  # one id each, none shared
    for i, _, tokens, finish in results:
        assert len(tokens) == jobs[i][1] and finish == "length", (i, tokens, finish)
    state = wait_idle(server)
    assert state["live_requests"] == 0 and state["free_kv_blocks"] == state["total_kv_blocks"]
    assert state["finished_requests"] - finished_before == 64
    print(f"64 streams in {time.monotonic() - start:.1f} s")


def test_client_that_disconnects_mid_stream_is_aborted(server):
    before = health(server)["finished_requests"]
    body = {"prompt": PROMPT, "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few tokens, then hang up
    assert sum(line.startswith("data: ") for line in got) >= 3
    state = wait_idle(server, timeout=20)
    assert state["live_requests"] == 0, "the request still runs after its client went away"
    assert state["free_kv_blocks"] == state["total_kv_blocks"] and state["finished_requests"] == before + 1
    # a request that is not streamed, whose client gives up while it waits, is aborted too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, timeout=2)
    state = wait_idle(server, timeout=20)
    assert state["live_requests"] == 0 and state["free_kv_blocks"] == state["total_kv_blocks"]


BAD_REQUESTS = {
    "malformed JSON": ("/v1/completions", b'{"prompt": "hi", "max_tokens": ', 400, None, "not valid JSON"),
    "not an object": ("/v1/completions", [1, 2], 400, None, "must be a JSON object"),
    "missing prompt": ("/v1/completions", {"max_tokens": 4}, 400, "prompt", "prompt is required"),
    "missing messages": ("/v1/chat/completions", {"max_tokens": 4}, 400, "messages", "messages is required"),
    "max_tokens a string": ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens", "integer"),
    "prompt a number": ("/v1/completions", {"prompt": 3}, 400, "prompt", "prompt"),
    "prompt too long": ("/v1/completions", {"prompt": [1] * 600}, 400, "prompt", "max_model_len=512"),
    "token id out of range": ("/v1/completions", {"prompt": [1, 10**9]}, 400, "prompt", "token ids"),
    "max_tokens 0": ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
    "max_tokens negative": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5},
                            400, "max_tokens", "greater than or equal to 1"),
    "unknown model": ("/v1/completions", {"model": "gpt-5", "prompt": "hi"}, 404, "model", "not served here"),
    "n too large": ("/v1/completions", {"prompt": "hi", "n": 17}, 400, "n", "less than or equal to 16"),
    "logprobs too many": ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "logprobs", "less than or equal to 20"),
    "top_logprobs alone": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
                           400, "top_logprobs", "top_logprobs needs logprobs=true"),
    "temperature < 0": ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "greater than"),
    "unknown field": ("/v1/completions", {"prompt": "hi", "max_tokenz": 3}, 400, "max_tokenz", "unknown field"),
    "penalty out of range": ("/v1/completions", {"prompt": "hi", "presence_penalty": 2.5}, 400, "presence_penalty",
                             "less than or equal to 2"),
    "unsupported logit_bias": ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 1}}, 400, "logit_bias",
                               "not supported"),
    "bad role": ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role", "role"),
    "unknown route": ("/v1/embeddings", {"input": "hi"}, 404, None, "no route"),
    "bad metrics query": ("/metrics/serving?skip=many", None, 400, "skip", "integer"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_openai_error(server, case):
    path, body, status, param, message = BAD_REQUESTS[case]
    if body is None:
        response = httpx.get(f"{server.url}{path}", timeout=30)
    else:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(f"{server.url}{path}", content=content, headers={"content-type": "application/json"},
                              timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert message in error["message"], error["message"]


def test_bad_requests_through_the_openai_client_and_the_engine_goes_on(client):
    with pytest.raises(openai.BadRequestError, match="max_model_len"):
        client.completions.create(model="smollm2", prompt=[1] * 600, max_tokens=4)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="less than or equal to 20"):
        client.completions.create(model="smollm2", prompt="hi", logprobs=30)
    assert client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=2).usage.completion_tokens == 2


@pytest.mark.slow
def test_bench_serving_against_the_server(server, tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "nvllm.bench_serving", "--base-url", server.url, "--num-prompts", "6",
                           "--request-rate", "20", "--random-input-len", "16", "--random-output-len", "4",
                           "--save-result", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Mean TTFT" in done.stdout and "engine" in done.stdout
    result = json.loads(out.read_text())  # vLLM's flat layout; the engine's numbers under engine_ keys
    assert result["completed"] == result["engine_completed"] == 6 and result["failed"] == 0
    assert result["total_output_tokens"] == result["engine_total_output_tokens"] == 24
    assert result["model_id"] == "smollm2" and len(result["ttfts"]) == len(result["output_lens"]) == 6
    # the client's clock starts before the HTTP request and stops after the last chunk arrives
    assert result["mean_e2el_ms"] >= result["engine_mean_e2el_ms"] > 0
    assert result["mean_ttft_ms"] >= result["engine_mean_ttft_ms"] > 0
    assert "Requests: 100%" in done.stderr  # the progress bar


def test_serve_config_is_validated(tmp_path):
    from nvllm.errors import ConfigError
    from nvllm.config import ServeConfig

    for bad, match in (({"port": 70000}, "serve.port=70000 is not allowed: use an integer in 0..65535"),
                       ({"port": "http"}, "serve.port"), ({"host": ""}, "serve.host"),
                       ({"host": "no-such-host.invalid"}, "serve.host='no-such-host.invalid' does not resolve")):
        with pytest.raises(ConfigError, match=re.escape(match)):
            ServeConfig(**bad)
    done = subprocess.run([sys.executable, "-m", "nvllm.serve", "serve.port=-1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "serve.port=-1 is not allowed: use an integer in 0..65535" in done.stderr


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_its_tensor_parallel_ranks(tiny_qwen3_path, tmp_path):
    server = Server(tmp_path, "model=qwen3", f"model.path={tiny_qwen3_path}", "tp=2", "max_model_len=128")
    try:
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 3}, timeout=60)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
        ranks = subprocess.run(["pgrep", "-g", str(server.proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) >= 2, "tp=2 runs a second rank process"
        assert server.interrupt(timeout=60) == 0, server.output
        deadline = time.monotonic() + 15  # multiprocessing's resource tracker leaves just after the server
        while time.monotonic() < deadline and subprocess.run(["pgrep", "-g", str(server.proc.pid)]).returncode == 0:
            time.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.killpg(server.proc.pid, 0)  # every process of the group (the rank too) has exited
        assert "Traceback" not in server.output and "nvllm.serve: stopped" in server.output, server.output
    finally:
        server.stop()


def test_n_and_logprobs_through_the_openai_client(client, offline):
    """vLLM's OpenAI server habits: n choices, logprobs / top_logprobs, the penalties."""
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": QUESTION}], n=2,
                                          temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    assert [c.index for c in chat.choices] == [0, 1] and chat.choices[0].message.content == chat.choices[1].message.content
    want = offline.chat([{"role": "user", "content": QUESTION}], SamplingParams(temperature=0, max_tokens=8, logprobs=3),
                        use_tqdm=False)[0].outputs[0]
    assert chat.choices[0].message.content == want.text and chat.usage.completion_tokens == 2 * len(want.token_ids)
    content = chat.choices[0].logprobs.content
    assert len(content) == len(want.token_ids)
    for item, token, entry in zip(content, want.token_ids, want.logprobs):
        assert item.logprob == pytest.approx(entry[token].logprob, abs=1e-3) and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob >= item.top_logprobs[2].logprob
    text = client.completions.create(model="smollm2", prompt=PROMPT, n=3, temperature=1.0, seed=4, max_tokens=6,
                                     logprobs=2, presence_penalty=0.5, frequency_penalty=0.5,
                                     extra_body={"ignore_eos": True, "repetition_penalty": 1.1})
    assert sorted(c.index for c in text.choices) == [0, 1, 2] and len({c.text for c in text.choices}) > 1
    for choice in text.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
        assert all(1 <= len(top) <= 3 for top in lp.top_logprobs)  # the top 2 and the sampled token
    stream = client.completions.create(model="smollm2", prompt=PROMPT, n=2, temperature=0, max_tokens=4, stream=True,
                                       logprobs=1, extra_body={"ignore_eos": True})
    pieces = {0: "", 1: ""}
    for chunk in stream:
        for c in chunk.choices:
            pieces[c.index] += c.text
    assert pieces[0] == pieces[1] == text_of(offline, PROMPT, 4)


def text_of(llm, prompt, n):
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), use_tqdm=False)[0]
    return out.outputs[0].text


def test_metrics_is_prometheus_text(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=3, temperature=0)
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in ("nvllm:time_to_first_token_seconds", "nvllm:inter_token_latency_seconds",
                 "nvllm:e2e_request_latency_seconds", "nvllm:num_requests_running", "nvllm:num_requests_waiting",
                 "nvllm:kv_cache_usage_perc", "nvllm:prefix_cache_queries", "nvllm:prefix_cache_hits",
                 "nvllm:prompt_tokens", "nvllm:generation_tokens", "nvllm:request_success"):
        assert name in families, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    ttft_count = samples[("nvllm:time_to_first_token_seconds_count", (("model_name", "smollm2"),))]
    assert ttft_count >= 1 and samples[("nvllm:generation_tokens_total", (("model_name", "smollm2"),))] >= 3
    assert ("nvllm:request_success_total", (("finished_reason", "length"), ("model_name", "smollm2"))) in samples
    serving = httpx.get(f"{server.url}/metrics/serving", timeout=10).json()  # the JSON summary moved here
    assert serving["completed"] >= 1 and "median_ttft_ms" in serving


def test_the_server_logs_each_request(server, client):
    client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=2, temperature=0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not re.search(r"request cmpl-\w+: \d+ prompt \+ 2 output tokens, TTFT", server.output):
        time.sleep(0.1)
    assert re.search(r"request cmpl-\w+: \d+ prompt \+ 2 output tokens, TTFT [\d.]+ s, [\d.]+ s in all, length",
                     server.output), server.output[-2000:]


@pytest.mark.slow
def test_bench_serving_reads_a_sharegpt_file(server, tmp_path):
    turns = [[{"from": "human", "value": f"Question {i}: what is {i} plus {i}? Answer briefly."},
              {"from": "gpt", "value": f"{i} plus {i} is {2 * i}, which is the answer."}] for i in range(5)]
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([{"id": str(i), "conversations": t} for i, t in enumerate(turns)]))
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "nvllm.bench_serving", "--base-url", server.url, "--num-prompts", "3",
                           "--dataset-name", "sharegpt", "--dataset-path", str(data), "--sharegpt-output-len", "3",
                           "--no-ignore-eos", "--disable-tqdm", "--save-result", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["dataset_name"] == "sharegpt" and result["completed"] == 3, result["errors"]
    assert result["tokenizer_id"] == "smollm2"
    assert all(n > 4 for n in result["input_lens"]) and "Requests:" not in done.stderr
