"""From a parsed request to the token ids the engine runs, off the engine's thread: the size
limits checked first (stop strings, stop_token_ids, messages, prompt characters: a 400 naming the
serve.* key, before any tokenisation), then the chat template and the tokenizer in a pool of worker
processes, each with a copy of the tokenizer the edge loaded (as vLLM keeps tokenising out of its
engine core's process).
Processes, not threads: a 1 MB prompt takes a core for about a second, and in the server's process
it would take the GIL in turns with the engine thread; in its own process, at a lower CPU priority
(nice +10), it takes only the CPU the engine leaves. The workers are forked before the engine
thread starts (a fork with no other thread running, sharing the parent's pages): `nvllm.serve`
builds this first. The engine receives token ids and never tokenises a request itself."""
import asyncio
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from nvllm.engine.intake import encode, encode_chat
from nvllm.server.protocol import RequestError

CHARS_PER_TOKEN = 16  # serve.max_prompt_chars's default per token of max_model_len: no real text comes close


@dataclass
class Limits:
    max_prompt_chars: int
    max_messages: int
    max_stop: int
    max_stop_chars: int
    max_stop_token_ids: int

    @classmethod
    def from_config(cls, serve_config, max_model_len: int) -> "Limits":
        return cls(serve_config.max_prompt_chars or CHARS_PER_TOKEN * max_model_len, serve_config.max_messages,
                   serve_config.max_stop, serve_config.max_stop_chars, serve_config.max_stop_token_ids)

    def check(self, req):
        """A RequestError for the first limit `req` (a parsed request) exceeds."""
        stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
        if len(stop) > self.max_stop:
            raise _over("stop", f"{len(stop)} stop strings", f"at most {self.max_stop}", "serve.max_stop")
        if any(len(s) > self.max_stop_chars for s in stop):
            raise _over("stop", f"a stop string of {max(map(len, stop))} characters", f"at most {self.max_stop_chars}",
                        "serve.max_stop_chars")
        if req.stop_token_ids and len(req.stop_token_ids) > self.max_stop_token_ids:
            raise _over("stop_token_ids", f"{len(req.stop_token_ids)} stop_token_ids", f"at most {self.max_stop_token_ids}",
                        "serve.max_stop_token_ids")
        messages = getattr(req, "messages", None)
        if messages is not None and len(messages) > self.max_messages:
            raise _over("messages", f"{len(messages)} messages", f"at most {self.max_messages}", "serve.max_messages")
        chars = sum(len(m.text()) for m in messages) if messages is not None else \
            len(req.prompt) if isinstance(req.prompt, str) else 0
        if chars > self.max_prompt_chars:
            raise _over("messages" if messages is not None else "prompt", f"a prompt of {chars} characters",
                        f"at most {self.max_prompt_chars}", "serve.max_prompt_chars")


def _over(param: str, what: str, allowed: str, key: str) -> RequestError:
    return RequestError(f"{what}: this server takes {allowed} in one request (raise {key} to allow more)", param=param,
                        code="limit_exceeded")


class Tokenizers:
    """A pool of worker processes that template and tokenise prompts."""

    def __init__(self, model_path: str, tokenizer, workers: int = 2):
        """Call it before starting any thread: the workers are forked here, and inherit `tokenizer`
        (the model's, loaded once by the edge; None: prompts must be token ids)."""
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                         initializer=_start_worker, initargs=(model_path, tokenizer))
        # fork every worker now, with Ctrl-C and SIGTERM blocked so that they inherit them blocked (and
        # then ignore them): the server alone decides when they stop
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._pool.submit(_warm)  # a fork context starts every worker at the first submit
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    async def encode(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return prompt
        return await self._run(_encode, prompt, "prompt")

    async def encode_chat(self, conversation: list[dict]) -> list[int]:
        return await self._run(_encode_chat, conversation, "messages")

    async def _run(self, fn, arg, param: str) -> list[int]:
        try:
            ok, value = await asyncio.wrap_future(self._pool.submit(fn, arg))
        except BrokenProcessPool:
            raise RequestError("the tokenizer pool has stopped (the server is shutting down, or a worker died); "
                               "try again", status=503, type="service_unavailable", code="tokenizer_unavailable") from None
        if not ok:
            raise RequestError(value, param=param)
        return value

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)


# -- in a worker process ---------------------------------------------------------------------------
_tokenizer = None
_model_path = ""


def _start_worker(model_path: str, tokenizer):
    global _tokenizer, _model_path
    for sig in (signal.SIGINT, signal.SIGTERM):  # not the server's handlers, inherited with the fork
        signal.signal(sig, signal.SIG_IGN)
    os.nice(10)  # the engine's steps come first; this takes the CPU they leave
    _model_path, _tokenizer = model_path, tokenizer


def _warm() -> None:
    return None


def _encode(prompt: str) -> tuple[bool, list[int] | str]:
    try:
        return True, encode(prompt, _tokenizer, _model_path)
    except ValueError as e:  # no tokenizer
        return False, str(e)


def _encode_chat(conversation: list[dict]) -> tuple[bool, list[int] | str]:
    try:  # the conversion LLM.chat uses too
        return True, encode_chat(conversation, _tokenizer, _model_path)[1]
    except ValueError as e:
        return False, str(e)
