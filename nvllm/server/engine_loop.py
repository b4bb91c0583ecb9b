"""The bridge between the HTTP event loop and the engine: one thread owns the engine for its
whole life (builds it, steps it, closes it), so every HTTP client is batched by the same
continuous-batching loop. Requests and aborts cross to it on a thread-safe queue, drained
between steps; what each step produced goes back to each request's asyncio queue through
`loop.call_soon_threadsafe` (one call per step). Nothing here imports the web framework."""
import asyncio
import logging
import queue
import signal
import threading
import traceback
from collections import deque
from dataclasses import dataclass, replace

from nvllm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

ACCEPTED = "accepted"  # first item on a request's queue once the engine took it


class EngineFault(RuntimeError):
    """This request ended without an answer: the engine failed on it (500; the engine goes on), or
    the server shut down before it finished (503)."""

    def __init__(self, message: str, status: int = 500, type: str = "internal_error", code: str = "engine_fault"):
        super().__init__(message)
        self.status, self.type, self.code = status, type, code


@dataclass
class EngineStats:
    """A snapshot the engine thread publishes after every step (read by /health)."""

    free_kv_blocks: int
    total_kv_blocks: int
    # requests added and not finished (waiting or running)
    live_requests: int
    # requests finished since the server started (aborted ones included): GET /metrics?skip= counts these
    finished_requests: int
    # of those, the ones that ended without their answer: the client went away, an engine fault, the shutdown
    failed_requests: int = 0
    # speculative decoding's counters under vLLM's names (SpecDecodingStats.as_dict); None: speculative=none
    spec_decode: dict | None = None


class EngineLoop:
    def __init__(self, build_engine):
        """`build_engine()` returns the engine; it runs on the engine thread."""
        self._build_engine = build_engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, asyncio.Queue] = {}  # touched only on the event loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvllm-engine", daemon=True)
        self.startup_error: BaseException | None = None
        self.fault: str | None = None  # why the loop stopped, if a fault stopped it
        self.stats: EngineStats | None = None
        self._num_finished = self._num_failed = 0
        # engine-side timings of finished requests, in finishing order (aborted ones as failed);
        # the oldest are dropped past the bound
        self.finished_timings: deque = deque(maxlen=100_000)
        self.engine = None  # for read-only facts (tokenizer, config); only the engine thread steps it
        self.observer = None  # nvllm.server.prometheus.PrometheusMetrics, told of every step and finished request

    # -- on the main thread ---------------------------------------------------------------------
    def start(self):
        """Build the engine on its thread; raise what building it raised."""
        self._thread.start()
        self._ready.wait()
        if self.startup_error is not None:
            self._thread.join()
            raise self.startup_error

    def stop(self, timeout: float = 60):
        """Finish the step in flight, close the engine (and its tensor-parallel ranks)."""
        if self._thread.is_alive():
            self._commands.put(("stop",))
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- on the event loop ------------------------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop

    async def add(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                  arrival: float | None = None) -> "RequestStream":
        """Queue a request; once the engine took it, its stream of deltas. A request the engine
        refuses raises its ValueError here; one it failed on, EngineFault. `arrival`
        (time.perf_counter()): when the server received it, so the engine's TTFT counts the time
        it waited for the engine thread too."""
        if not self.alive:  # the reason is in the server's log: it may hold another request's data
            raise EngineFault("the engine has stopped after a failure; restart the server")
        stream = asyncio.Queue()
        self._streams[request_id] = stream
        self._commands.put(("add", request_id, prompt, params, arrival))
        first = await stream.get()
        if isinstance(first, BaseException):
            self._streams.pop(request_id, None)
            raise first
        return RequestStream(self, request_id, stream)

    def abort(self, request_id: str):
        self._streams.pop(request_id, None)
        self._commands.put(("abort", request_id))

    @property
    def open_requests(self) -> int:
        """Requests added and not yet answered in full (their responses still read them)."""
        return len(self._streams)

    def end_all(self, message: str):
        """End every request in the engine now (the shutdown): each reader gets an EngineFault (503)."""
        self._commands.put(("end_all", message))

    def timings_since(self, skip: int) -> list:
        """Engine-side timings of the requests that finished after the first `skip`."""
        timings = list(self.finished_timings)
        dropped = self._num_finished - len(timings)
        return timings[max(0, skip - dropped):]

    def _fail_all(self, error: EngineFault):
        for stream in self._streams.values():
            stream.put_nowait(error)

    def _deliver(self, events: list):
        for request_id, item in events:
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.put_nowait(item)

    # -- on the engine thread ---------------------------------------------------------------------
    def _run(self):
        # Signals go to the main thread (uvicorn's Ctrl-C handling), and tensor-parallel ranks
        # spawned from this thread inherit the mask: Ctrl-C on the terminal reaches the server
        # alone, which then closes the ranks in order.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            engine = self.engine = self._build_engine()
        except BaseException as e:
            self.startup_error = e
            self._ready.set()
            return
        live: dict[str, list] = {}  # request id -> its completions' Sequences (for their timings)
        self._publish_stats(engine, live)
        self._ready.set()
        try:
            while True:
                events: list = []
                if not self._drain(engine, live, events, block=not engine.has_unfinished_requests()):
                    break
                if engine.has_unfinished_requests():
                    self._step(engine, live, events)
                if events and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._deliver, events)
                self._publish_stats(engine, live)
        except BaseException as e:  # never leave a reader waiting on a loop that is gone
            self.fault = f"the engine loop stopped: {type(e).__name__}: {e}"
            traceback.print_exc()
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._fail_all, EngineFault(
                    f"the engine loop stopped ({type(e).__name__}; the server's log has the details)"))
        finally:
            engine.close()

    def _drain(self, engine, live: dict, events: list, block: bool) -> bool:
        """Apply every queued command (waiting for one if `block`); False once told to stop."""
        while True:
            try:
                command = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command[0] == "stop":
                return False
            if command[0] == "end_all":
                fault = EngineFault(command[1], status=503, type="service_unavailable", code="shutting_down")
                engine.abort_requests(list(live), quiet=True)
                for request_id, seqs in live.items():
                    events.append((request_id, fault))
                    self._finished(seqs[0], command[1], reason="abort")
                live.clear()
                continue
            request_id = command[1]
            if command[0] == "add":
                try:
                    seq = engine.add_request(request_id, *command[2:])
                    live[request_id] = engine.sequences(request_id)
                    if self.observer is not None:
                        self.observer.on_added(seq.num_prompt_tokens)
                except ValueError as e:
                    events.append((request_id, e))
                except Exception as e:  # not a refusal: a bug the request ran into
                    traceback.print_exc()
                    events.append((request_id, EngineFault(f"the engine failed to add this request: {type(e).__name__}: {e}")))
                else:
                    events.append((request_id, ACCEPTED))
            elif request_id in live:  # abort: the reader is gone; the engine frees its blocks now
                engine.abort_request(request_id)
                self._finished(live.pop(request_id)[0], "aborted: the client went away", reason="abort")

    def _step(self, engine, live: dict, events: list):
        try:
            deltas = engine.step()
        except Exception as e:  # a bug or a dead rank: fail the requests in flight, keep serving
            self.fault = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            for request_id, seqs in live.items():
                try:
                    engine.abort_request(request_id)
                except Exception:
                    pass
                events.append((request_id, EngineFault(f"the engine failed in a step this request was part of "
                                                       f"({type(e).__name__}; the server's log has the details)")))
                self._finished(seqs[0], self.fault)
            live.clear()
            return
        if self.observer is not None:
            self.observer.on_step(engine, deltas, live)
        for delta in deltas:
            events.append((delta.request_id, delta))
            if delta.finished and delta.request_id in live:  # an aborted one was counted at its abort
                self._finished(live.pop(delta.request_id)[0], delta.error)

    def _finished(self, seq, error: str | None = None, reason: str | None = None):
        """`error`: why it ended without its answer; `reason`: its finish reason for the metrics, where
        not the engine's (abort: the client went away or the server shut down; error: a fault)."""
        timing = engine_timing(seq, error)
        self.finished_timings.append(timing)
        self._num_finished += 1
        self._num_failed += error is not None
        if self.observer is not None:
            self.observer.on_finished(timing, reason or ("error" if error else seq.finish_reason or "abort"))
        ttft = f"TTFT {timing.token_times[0] - timing.arrival:.3f} s, " if timing.token_times else ""
        end = timing.token_times[-1] if timing.token_times else seq.finish_time or timing.arrival
        logger.info(f"request {seq.request_id}: {timing.input_len} prompt + {timing.output_len} output tokens, "
                    f"{ttft}{end - timing.arrival:.3f} s in all, {error or seq.finish_reason}")

    def _publish_stats(self, engine, live: dict):
        self.stats = EngineStats(free_kv_blocks=engine.kv_cache.num_free_blocks,
                                 total_kv_blocks=engine.kv_cache.num_blocks, live_requests=len(live),
                                 finished_requests=self._num_finished, failed_requests=self._num_failed,
                                 spec_decode=engine.stats.spec_decode and engine.stats.spec_decode.as_dict())


def engine_timing(seq, error: str | None = None):
    """The engine-side RequestTiming of a finished request, from the engine's record of it."""
    from nvllm.metrics import RequestTiming

    return RequestTiming(seq.arrival_time, list(seq.token_times), seq.num_prompt_tokens, seq.num_completion_tokens,
                         success=error is None, error=error, first_scheduled=seq.first_scheduled_time,
                         preemptions=seq.num_preemptions)


class RequestStream:
    """One request's deltas, in order, until it finishes. Closing it before then aborts the
    request in the engine (its KV blocks are freed at once)."""

    def __init__(self, engine_loop: EngineLoop, request_id: str, items: asyncio.Queue):
        self._engine_loop, self.request_id, self._items = engine_loop, request_id, items
        self.finished = False
        self._fault: EngineFault | None = None  # raised after the last delta's text has been handed out

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.finished:
            raise StopAsyncIteration
        item = self._fault or await self._items.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finish_reason == "error":  # a fault ended this request: its text so far, then the EngineFault
            self._fault = EngineFault(item.error)
            if not (item.new_text or item.new_token_ids):
                return await self.__anext__()
            return replace(item, finished=False, finish_reason=None)
        if item.finished:
            self.finished = True
        return item

    def close(self):
        if self.finished:
            self._engine_loop._streams.pop(self.request_id, None)
        else:
            self.finished = True
            self._engine_loop.abort(self.request_id)
