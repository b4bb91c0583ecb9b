"""Running the HTTP server, and stopping it gracefully: SIGTERM (what docker, systemd and Kubernetes
send) and SIGINT (Ctrl-C) both drain. New requests get a 503 with an OpenAI error body at once;
requests already running get `serve.drain_timeout_s` to finish; those still open then end with an
error (a stream: an error event, then `data: [DONE]`; a whole answer: a 503 JSON error). Then
uvicorn closes the connections, the engine and its tensor-parallel ranks close, and one line says
what happened. A second signal ends the drain at once. uvicorn's own handling would cut streams
and, for SIGTERM, re-raise the signal and skip the clean shutdown: this server replaces it."""
import asyncio
import contextlib
import logging
import signal
import threading
import time

import uvicorn

from nvllm.server.engine_loop import EngineLoop

logger = logging.getLogger(__name__)
SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
DELIVERY_S = 5.0  # how long the ended requests' responses get to carry their error out


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine_loop: EngineLoop, state, drain_timeout_s: float,
                 ready_message: str):
        super().__init__(config)
        self.engine_loop, self.state, self.drain_timeout_s = engine_loop, state, drain_timeout_s
        self.ready_message = ready_message
        self.stopped_by: str | None = None  # the signal that began the drain
        self.finished = self.cut = 0  # requests that finished while draining / that the drain ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None
        self._hurry = False

    async def startup(self, sockets=None):
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:  # the address it really listens on (serve.port=0 takes any free port)
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            host = f"[{host}]" if ":" in host else host
            logger.info(f"{self.ready_message} http://{host}:{port} (OpenAI API under /v1; Ctrl-C stops)")

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, but a signal drains, and is not raised again once the server has stopped."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig, frame):
        if self.stopped_by is not None:  # a second signal: end what is left now
            self._hurry = True
            return
        self.stopped_by = SIGNALS.get(sig, signal.Signals(sig).name)
        self.state.draining = True
        if self._loop is None:  # not serving yet: nothing to drain
            self.should_exit = True
        else:
            self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self):
        self._drain_task = self._loop.create_task(self._drain())  # held: a task nobody references may vanish

    async def _drain(self):
        engine_loop = self.engine_loop
        running = engine_loop.open_requests
        deadline = time.monotonic() + self.drain_timeout_s
        while engine_loop.open_requests and time.monotonic() < deadline and not self._hurry:
            await asyncio.sleep(0.02)
        self.cut = engine_loop.open_requests
        self.finished = max(0, running - self.cut)
        if self.cut:
            engine_loop.end_all(f"the server is shutting down ({self.stopped_by}) and this request did not finish "
                                f"within serve.drain_timeout_s={self.drain_timeout_s:g} s")
            deadline = time.monotonic() + DELIVERY_S
            while engine_loop.open_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self.should_exit = True

    def summary(self) -> str:
        if self.stopped_by is None:
            return "stopped"
        line = f"stopped by {self.stopped_by}"
        if self.finished or self.cut:
            line += (f": {self.finished} request{'s' * (self.finished != 1)} finished while draining, {self.cut} "
                     f"ended after serve.drain_timeout_s={self.drain_timeout_s:g} s")
        return line


def run_server(app, engine_loop: EngineLoop, serve_config, ready_message: str) -> str:
    """Serve `app` until SIGTERM or Ctrl-C, draining then; returns the line saying how it stopped."""
    config = uvicorn.Config(app, host=serve_config.host, port=serve_config.port, log_level="warning",
                            access_log=False, timeout_graceful_shutdown=DELIVERY_S)
    server = DrainingServer(config, engine_loop, app.state.serving, serve_config.drain_timeout_s, ready_message)
    server.run()
    return server.summary()
