"""The OpenAI-compatible HTTP API (FastAPI): /v1/completions, /v1/chat/completions (streamed
as server-sent events or not, n choices, logprobs), /v1/models, /health, /metrics (Prometheus) and
/metrics/serving (vLLM's serving metrics as JSON). A request passes the guard (nvllm.server.guard:
host, API key, content type, body size), is parsed strictly (nvllm.server.protocol), checked
against the size limits and tokenised off the engine thread (nvllm.server.prompts), then goes as
token ids to the one engine loop (nvllm.server.engine_loop), which batches them all. Shutting down
drains (nvllm.server.drain)."""
import asyncio
import json
import logging
import math
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nvllm.config import ServeConfig
from nvllm.errors import short_repr
from nvllm.sampling_params import DEFAULT_MAX_TOKENS
from nvllm.server.engine_loop import EngineFault, EngineLoop, RequestStream
from nvllm.server.guard import LOOPBACK_HOSTS, Guard, is_loopback
from nvllm.server.prometheus import PrometheusMetrics
from nvllm.server.prompts import Limits, Tokenizers
from nvllm.server.protocol import ChatCompletionRequest, CompletionRequest, RequestError, parse

logger = logging.getLogger(__name__)

# the engine's finish reasons as OpenAI names them
FINISH_REASONS = {"stop": "stop", "length": "length", "max_model_len": "length", "abort": "abort"}
MAX_QUERY_CHARS = 1000  # a query parameter's longest value (its JSON or list is parsed after this check)
ROUTES = ("POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics "
          "(Prometheus), GET /metrics/serving (JSON)")


class _Completions:
    prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    @staticmethod
    def opening():
        return None

    @staticmethod
    def piece(text: str) -> dict:
        return {"text": text}

    answer = piece

    @staticmethod
    def logprobs(entries: list, token_ids: list[int], offset: int, top: int) -> dict:
        """OpenAI's completions logprobs: parallel lists, the top ones as {token text: logprob} (the `top`
        most likely and the sampled token, as vLLM: up to top + 1)."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in zip(token_ids, entries):
            chosen = entry[token]
            out["tokens"].append(chosen.decoded_token)
            out["token_logprobs"].append(chosen.logprob)
            out["top_logprobs"].append({lp.decoded_token: lp.logprob for lp in sorted(entry.values(), key=_rank)})
            out["text_offset"].append(offset)
            offset += len(chosen.decoded_token or "")
        return out


class _Chat:
    prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    @staticmethod
    def opening():
        return {"delta": {"role": "assistant", "content": ""}}

    @staticmethod
    def piece(text: str) -> dict:
        return {"delta": {"content": text} if text else {}}

    @staticmethod
    def answer(text: str) -> dict:
        return {"message": {"role": "assistant", "content": text}}

    @staticmethod
    def logprobs(entries: list, token_ids: list[int], offset: int, top: int) -> dict:
        """OpenAI's chat logprobs: per token its text, logprob, UTF-8 bytes and exactly `top` top_logprobs
        (the sampled token among them only if it is one of the `top` most likely, as OpenAI and vLLM)."""
        def item(lp):
            text = lp.decoded_token or ""
            return {"token": text, "logprob": lp.logprob, "bytes": list(text.encode())}
        return {"content": [{**item(entry[token]), "top_logprobs": [item(lp) for lp in sorted(
                                (lp for lp in entry.values() if lp.rank is not None), key=_rank)[:top]]}
                            for token, entry in zip(token_ids, entries)]}


def _rank(lp) -> int:
    return lp.rank if lp.rank is not None else 1 << 30


class ServerState:
    """What the guard and the drain share: once `draining`, new requests get a 503."""
    draining = False


def build_app(engine_loop: EngineLoop, model_name: str, serve_config: ServeConfig, tokenizers: Tokenizers,
              aliases: tuple[str, ...] = ()) -> FastAPI:
    """The app serving `engine_loop`'s engine as `model_name`, which clients may also call by each of
    `aliases` (the embedded model's Hugging Face id); `tokenizers`: its prompt tokenizer pool."""
    engine = engine_loop.engine
    served = (model_name, *aliases)
    max_model_len = engine.config.max_model_len
    vocab_size = engine.vocab_size
    started = int(time.time())
    limits = Limits.from_config(serve_config, max_model_len)
    state = ServerState()

    @asynccontextmanager
    async def lifespan(app):
        engine_loop.attach(asyncio.get_running_loop())
        yield
        tokenizers.close()
        await asyncio.get_running_loop().run_in_executor(None, engine_loop.stop)

    app = FastAPI(title="nvllm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serving = state
    allowed_hosts = serve_config.allowed_hosts
    if allowed_hosts is None and is_loopback(serve_config.host):
        allowed_hosts = list(LOOPBACK_HOSTS)
    app.add_middleware(Guard, api_key=serve_config.api_key or os.environ.get("NVLLM_API_KEY") or None,
                       allowed_hosts=allowed_hosts, max_body_bytes=serve_config.max_body_bytes, state=state)
    if serve_config.cors_origins:  # outside the guard: a preflight carries no key, and refusals get CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=serve_config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"])

    @app.exception_handler(RequestError)
    async def refused(request: Request, e: RequestError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = (f"no route {request.method} {request.url.path}; nvllm serves {ROUTES}"
                   if e.status_code in (404, 405) else str(e.detail))
        return JSONResponse(RequestError(message, status=e.status_code, code="not_found").body(),
                            status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, e: RequestValidationError):  # /metrics?skip=abc
        err = e.errors()[0]
        param = str(err["loc"][-1])
        return JSONResponse(RequestError(f"{param}: {err['msg']}", param=param, code="invalid_value").body(),
                            status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception):  # still an OpenAI error body (and logged)
        return JSONResponse(RequestError(f"internal error: {type(e).__name__}: {e}", status=500,
                                         type="internal_error", code="internal_error").body(), status_code=500)

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect):  # it sent part of its body and closed: nobody to answer
        logger.info(f"{request.method} {request.url.path}: the client went away while sending its request body")
        return Response(status_code=499)

    @app.get("/health")
    async def health():
        stats = engine_loop.stats
        alive = engine_loop.alive and stats is not None
        body = {"status": "ok" if alive else "engine stopped", "model": model_name, **(asdict(stats) if stats else {})}
        return JSONResponse(body, status_code=200 if alive else 503)

    prometheus = PrometheusMetrics(model_name)
    engine_loop.observer = prometheus

    @app.get("/metrics")
    async def metrics_prometheus():
        """Prometheus' text format, vLLM's metric names under `nvllm:` (nvllm/server/prometheus.py)."""
        return Response(prometheus.render(), media_type=prometheus.content_type)

    @app.get("/metrics/serving")
    async def metrics(skip: int = Query(0, ge=0), percentiles: str = "50,90,99", slo: str = "{}",
                      request_rate: float | None = None):
        """vLLM's serving metrics (`vllm bench serve`'s names, JSON) of the requests the engine
        finished after the first `skip` (GET /health says how many it has finished), measured inside
        the engine."""
        from nvllm.metrics import serving_metrics

        quantiles, bounds = metrics_query(percentiles, slo, request_rate)
        timings = engine_loop.timings_since(skip)
        times = [t for timing in timings for t in (timing.arrival, *timing.token_times)]
        duration = max(times) - min(times) if times else 0.0
        stats = engine_loop.stats
        return {"requests": len(timings), **serving_metrics(timings, duration, quantiles, bounds or None,
                                                            request_rate=request_rate, open_loop=True),
                "spec_decode": stats.spec_decode if stats else None}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "nvllm",
                                            "root": model_name, "max_model_len": max_model_len} for name in served]}

    @app.post("/v1/completions", openapi_extra=_openapi_body(CompletionRequest))
    async def completions(request: Request):
        arrival = time.perf_counter()
        req = admit(parse(CompletionRequest, await request.body()))
        return await respond(request, req, await tokenizers.encode(req.prompt), _Completions, arrival)

    @app.post("/v1/chat/completions", openapi_extra=_openapi_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        arrival = time.perf_counter()
        req = admit(parse(ChatCompletionRequest, await request.body()))
        if engine.tokenizer is None or not getattr(engine.tokenizer, "chat_template", None):
            raise RequestError(f"{model_name} has no chat template; use /v1/completions", param="messages")
        return await respond(request, req, await tokenizers.encode_chat(req.conversation()), _Chat, arrival)

    def admit(req):
        """The checks that need no tokenizer: the model's name and the size limits."""
        if req.model is not None and req.model not in served:
            raise RequestError(f"model {short_repr(req.model)} is not served here; this server serves "
                               f"{' or '.join(map(repr, served))} (GET /v1/models)", param="model", status=404,
                               code="model_not_found")
        limits.check(req)
        return req

    def check_prompt(token_ids: list[int], param: str):
        """The prompt's refusals as the engine would make them, naming the field and a code."""
        if not token_ids:
            raise RequestError("the prompt is empty: it needs at least one token", param=param)
        if len(token_ids) >= max_model_len:
            raise RequestError(f"the prompt has {len(token_ids)} tokens and max_model_len={max_model_len} "
                               f"leaves no room to generate; shorten it", param=param, code="context_length_exceeded")
        if any(t >= vocab_size for t in token_ids):
            raise RequestError(f"token id {max(token_ids)} in the prompt is not in the vocabulary; token ids are in "
                               f"[0, {vocab_size})", param=param)

    async def respond(request: Request, req, token_ids: list[int], kind, arrival: float):
        param = "messages" if kind is _Chat else "prompt"
        check_prompt(token_ids, param)
        params = req.sampling_params(DEFAULT_MAX_TOKENS)
        request_id = f"{kind.prefix}-{uuid.uuid4().hex}"
        if state.draining:  # the drain began while this request was read or tokenised
            raise RequestError("the server is shutting down and takes no new requests", status=503,
                               type="service_unavailable", code="shutting_down")
        try:
            stream = await engine_loop.add(request_id, token_ids, params, arrival)
        except ValueError as e:  # the engine's refusal: its message starts with the field, else it is the prompt's
            field = str(e).split(" ", 1)[0]
            raise RequestError(str(e), param=field if field in type(req).model_fields else param) from None
        except EngineFault as e:
            raise _fault_error(e) from None
        head = {"id": request_id, "created": int(time.time()), "model": req.model or model_name}
        if req.stream:
            return StreamingResponse(_events(stream, req, kind, head), media_type="text/event-stream")
        return await _answer(request, stream, req, kind, head)

    def openapi() -> dict:  # the request bodies the routes parse themselves, as components
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in (CompletionRequest, ChatCompletionRequest)],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _openapi_body(model) -> dict:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _fault_error(e: EngineFault) -> RequestError:
    return RequestError(str(e), status=e.status, type=e.type, code=e.code)


def metrics_query(percentiles: str, slo: str, request_rate: float | None) -> tuple[tuple[float, ...], dict]:
    """GET /metrics's query, checked: percentiles in [0, 100], SLO bounds > 0, a rate > 0 (or inf); each
    string bounded before it is parsed (a JSON of deep nesting would exhaust the parser's recursion)."""
    for param, value in (("percentiles", percentiles), ("slo", slo)):
        if len(value) > MAX_QUERY_CHARS:
            raise RequestError(f"{param} takes at most {MAX_QUERY_CHARS} characters, got {len(value)}", param=param,
                               code="limit_exceeded")
    try:
        quantiles = tuple(float(q) for q in percentiles.split(","))
    except ValueError:
        quantiles = (math.nan,)
    if not all(0 <= q <= 100 for q in quantiles):
        raise RequestError("percentiles takes numbers in [0, 100] separated by commas, like 50,90,99",
                           param="percentiles", code="invalid_value")
    try:
        bounds = json.loads(slo)
    except (ValueError, RecursionError):
        bounds = None
    keys = ("ttft_ms", "tpot_ms", "e2el_ms")
    if not isinstance(bounds, dict) or not all(k in keys and (v is None or (type(v) in (int, float) and 0 < v < math.inf))
                                               for k, v in bounds.items()):
        raise RequestError(f'slo takes a JSON object of bounds in ms > 0 with keys {", ".join(keys)}, like '
                           f'{{"ttft_ms": 500}}', param="slo", code="invalid_value")
    if request_rate is not None and not request_rate > 0:
        raise RequestError("request_rate must be a number > 0 (inf: all at once)", param="request_rate",
                           code="invalid_value")
    return quantiles, bounds


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _events(stream: RequestStream, req, kind, head: dict):
    """The SSE body of a streamed request: a chunk per completion (choice `index`) that advanced.
    If the client goes away, the response task is cancelled (or this generator closed) and
    `finally` aborts the request in the engine."""
    head = {**head, "object": kind.chunk_object}
    extra = {"usage": None} if req.include_usage else {}
    prompt_tokens, completion_tokens = 0, {}
    offsets = [0] * req.n
    try:
        if opening := kind.opening():
            yield _sse({**head, "choices": [{"index": i, **opening, "logprobs": None, "finish_reason": None}
                                            for i in range(req.n)], **extra})
        async for delta in stream:
            prompt_tokens, completion_tokens[delta.index] = delta.num_prompt_tokens, delta.num_output_tokens
            if not (delta.new_text or delta.new_token_ids or delta.finish_reason):
                continue
            choice = {"index": delta.index, **kind.piece(delta.new_text), "logprobs": None,
                      "finish_reason": FINISH_REASONS.get(delta.finish_reason, delta.finish_reason)}
            if delta.logprobs is not None:
                choice["logprobs"] = kind.logprobs(delta.logprobs, delta.new_token_ids, offsets[delta.index],
                                                   req.num_logprobs())
                offsets[delta.index] += len(delta.new_text)
            if req.return_token_ids:
                choice["token_ids"] = delta.new_token_ids
            yield _sse({**head, "choices": [choice], **extra})
        if req.include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(prompt_tokens, sum(completion_tokens.values()))})
    except EngineFault as e:  # after what it sent: an OpenAI error event, then [DONE]
        yield _sse(_fault_error(e).body())
    finally:
        stream.close()
    yield "data: [DONE]\n\n"


async def _answer(request: Request, stream: RequestStream, req, kind, head: dict) -> Response:
    """The whole answer of a request that is not streamed, a choice per completion; a client that
    disconnects while it waits has its request aborted."""

    async def collect():
        text, token_ids, logprobs, last = ([[] for _ in range(req.n)] for _ in range(4))
        async for delta in stream:
            i = delta.index
            text[i].append(delta.new_text)
            token_ids[i].extend(delta.new_token_ids)
            logprobs[i].extend(delta.logprobs or ())
            last[i] = delta
        return text, token_ids, logprobs, last

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answer, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():  # the client is gone: nobody reads what we would send
            answer.cancel()
            return Response(status_code=499)
        try:
            texts, token_ids, logprobs, last = answer.result()
        except EngineFault as e:
            raise _fault_error(e) from None
    finally:
        gone.cancel()
        stream.close()
    choices = []
    for i in range(req.n):
        choice = {"index": i, **kind.answer("".join(texts[i])),
                  "logprobs": kind.logprobs(logprobs[i], token_ids[i], 0, req.num_logprobs())
                  if req.num_logprobs() is not None else None,
                  "finish_reason": FINISH_REASONS.get(last[i].finish_reason, last[i].finish_reason)}
        if req.return_token_ids:
            choice["token_ids"] = token_ids[i]
        choices.append(choice)
    usage = _usage(last[0].num_prompt_tokens, sum(d.num_output_tokens for d in last))
    return JSONResponse({**head, "object": kind.object, "choices": choices, "usage": usage})

