"""What every HTTP request passes before a route sees it (an ASGI middleware, outside the app):
the Host header against the allowed hosts (a page on another site that rebinds its DNS name to
127.0.0.1 sends its own name), the server still accepting work (503 once it drains), the API key on
every /v1 route (`Authorization: Bearer <key>`, compared in constant time, as vLLM's --api-key), and
for a POST a JSON content type (415 otherwise: a web page can POST text/plain without a CORS
preflight) and a body within `max_body_bytes` (413, counted as it arrives, before anything parses
it). Refusals are OpenAI error bodies."""
import hmac
import ipaddress
import json
import socket

from nvllm.errors import short_repr
from nvllm.server.protocol import RequestError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class BodyTooLarge(RequestError):
    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than {limit} bytes; send less, or raise serve.max_body_bytes",
                         status=413, code="body_too_large")


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address to bind) reaches this machine only."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "localhost:8000" -> "localhost", "[::1]:80" -> "::1"."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    def __init__(self, app, *, api_key: str | None, allowed_hosts: list[str] | None, max_body_bytes: int, state):
        """`allowed_hosts`: None or ["*"] answers any Host; `state.draining` turns new requests away."""
        self.app, self.max_body_bytes, self.state = app, max_body_bytes, state
        self.api_key = api_key.encode() if api_key else None
        self.allowed_hosts = None if allowed_hosts is None or "*" in allowed_hosts else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self.check(scope, headers)
        except RequestError as e:
            return await _send_error(send, e)
        if scope["method"] == "POST":
            receive = self.counting(receive)
        await self.app(scope, receive, send)

    def check(self, scope, headers: dict):
        host = host_name(headers.get("host", "")).lower()
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            raise RequestError(f"Host {short_repr(host)} is not allowed: this server answers {', '.join(sorted(self.allowed_hosts))} "
                               f"(serve.allowed_hosts)", code="host_not_allowed")
        if self.state.draining:
            raise RequestError("the server is shutting down and takes no new requests", status=503,
                               type="service_unavailable", code="shutting_down")
        if self.api_key is not None and scope["path"].startswith("/v1/"):
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key):
                raise RequestError("a valid API key is required: send `Authorization: Bearer <key>` (the server's "
                                   "serve.api_key or NVLLM_API_KEY)", status=401, code="invalid_api_key")
        if scope["method"] == "POST":
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                raise RequestError(f"the request body must be JSON sent as Content-Type: application/json, not "
                                   f"{media_type or 'no content type'}", status=415, code="unsupported_media_type")
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)

    def counting(self, receive):
        """`receive` that refuses a body growing past the limit (a chunked one has no Content-Length)."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
            return message

        return wrapped


async def _send_error(send, e: RequestError):
    body = json.dumps(e.body()).encode()
    await send({"type": "http.response.start", "status": e.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
