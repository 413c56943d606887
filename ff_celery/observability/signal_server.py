"""A tiny HTTP endpoint that turns callbacks (webhooks, approval links) into signals.

``POST /v1/signals/<execution id>/<waitpoint id>/<signal name>`` delivers one signal. The
waitpoint's HMAC token comes in the ``X-Waitpoint-Token`` header or the ``token`` query
parameter (for callers that cannot set headers); the body is the payload (JSON for
``application/json``, else bytes); ``Idempotency-Key`` and ``X-Signal-Source`` are
optional. The answer is JSON: ``202 {"signal_id", "effect", "duplicate"}``, or an error
``{"error": <code>, "detail": ...}`` with 401/403 (token), 404 (no such execution), 409
(waitpoint closed, not signalable), 413 (over 256 KiB), 429 (signal limit), 400 or 503.
``GET /healthz`` answers 200. It listens on 127.0.0.1 unless told otherwise.

Hostile clients: ``Content-Length`` must be a decimal number (no chunked bodies); a client
that has not sent its whole request ``timeout_s`` after connecting is dropped (a deadline per
request, however quick each read); at most ``max_requests`` connections are handled at once,
``max_per_client`` of them from one address (further ones are closed at once); bursts of
connections wait in a deep listen backlog; any unexpected error answers a bare 500; the
access log never shows a query string (tokens); the ``Server`` header names no Python.

    ff-celery signal-server --url redis://127.0.0.1:6379/0 --port 8765
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ff_celery.engine import MAX_SIGNAL_PAYLOAD_BYTES, EngineError, ExecutionId, TransportError, deliver_signal
from ff_celery.integration.context import engine_for_url

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: Seconds a client has to send its whole request (and for each write of the answer).
DEFAULT_TIMEOUT_S = 10.0
#: Connections handled at once (a thread each).
DEFAULT_MAX_REQUESTS = 256
#: Connections handled at once from one client address.
DEFAULT_MAX_PER_CLIENT = 16
#: Connections the kernel queues before they are accepted (capped by ``net.core.somaxconn``).
LISTEN_BACKLOG = 1024
STATUS_BY_CODE = {
    "missing_token": HTTPStatus.UNAUTHORIZED,
    "invalid_token": HTTPStatus.FORBIDDEN,
    "token_expired": HTTPStatus.FORBIDDEN,
    "execution_not_found": HTTPStatus.NOT_FOUND,
    "waitpoint_not_found": HTTPStatus.NOT_FOUND,
    "waitpoint_closed": HTTPStatus.CONFLICT,
    "target_not_signalable": HTTPStatus.CONFLICT,
    "payload_too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "signal_limit_exceeded": HTTPStatus.TOO_MANY_REQUESTS,
}


class BadRequest(Exception):
    """A request this endpoint refuses before reading its body."""


def content_length(headers: Any) -> int:
    """The declared body size: a plain decimal number, no chunked transfer."""
    if headers.get("Transfer-Encoding"):
        raise BadRequest("chunked or encoded bodies are not accepted; send Content-Length")
    declared = (headers.get("Content-Length") or "0").strip()
    if not declared.isdigit() or not declared.isascii():
        raise BadRequest("Content-Length must be a non-negative decimal number")
    return int(declared)


class DeadlineReader(io.RawIOBase):
    """A socket's bytes until ``deadline`` (monotonic): each read waits only for the time left."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.deadline = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than its deadline")
        self.connection.settimeout(left)
        return self.connection.recv_into(buffer)


class SignalHandler(BaseHTTPRequestHandler):
    server: SignalServer
    server_version = "ff-celery-signals"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self) -> None:
        self.reader.deadline = time.monotonic() + self.server.timeout_s
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.connection.settimeout(self.server.timeout_s)  # the answer's writes, past the request's deadline
        super().send_response(code, message)

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": "POST /v1/signals/<eid>/<wp>/<name>"})

    def do_POST(self) -> None:
        try:
            self._deliver()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # the client went quiet or away mid-request
        except Exception:
            log.exception("signal endpoint: unexpected error")
            self.close_connection = True
            self._answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal_error"})

    def _deliver(self) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(segment) for segment in parts.path.strip("/").split("/")]
        if len(segments) != 5 or segments[:2] != ["v1", "signals"]:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": "POST /v1/signals/<eid>/<wp>/<name>"})
            return
        execution_id, waitpoint_id, name = segments[2:]
        try:
            length = content_length(self.headers)
        except BadRequest as exc:
            self.close_connection = True
            self._answer(HTTPStatus.BAD_REQUEST, {"error": "bad_request", "detail": str(exc)})
            return
        if length > MAX_SIGNAL_PAYLOAD_BYTES:
            self._answer(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": "payload_too_large", "detail": f"{length} bytes > {MAX_SIGNAL_PAYLOAD_BYTES}"},
            )
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        token = self.headers.get("X-Waitpoint-Token") or parse_qs(parts.query).get("token", [""])[0]
        is_json = (self.headers.get("Content-Type") or "").startswith("application/json")
        try:
            outcome = deliver_signal(
                self.server.engine,
                ExecutionId(execution_id),
                waitpoint_id,
                token,
                name,
                body,
                source_type="http",
                source_identity=self.headers.get("X-Signal-Source") or self.client_address[0],
                idempotency_key=self.headers.get("Idempotency-Key") or "",
                payload_encoding="json" if is_json else "binary",
            )
        except TransportError:
            log.exception("signal endpoint: the engine is unavailable")
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "unavailable", "detail": "try again later"})
            return
        except EngineError as exc:
            self._answer(STATUS_BY_CODE.get(exc.code, HTTPStatus.BAD_REQUEST), {"error": exc.code, "detail": str(exc)})
            return
        self._answer(HTTPStatus.ACCEPTED, outcome.model_dump())

    def _answer(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"  # never the query: tokens
        log.info("%s %s %s %s", self.client_address[0], getattr(self, "command", "-"), path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], "request refused")  # stdlib errors echo the request line


class SignalServer(ThreadingHTTPServer):
    """The endpoint, bound to ``host:port`` (port 0 picks a free one)."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        url: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_per_client: int = DEFAULT_MAX_PER_CLIENT,
    ) -> None:
        self.engine = engine_for_url(url)
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.max_per_client = max_per_client
        self.active_requests = 0  # being handled now
        self._per_client: dict[str, int] = {}  # being handled now, by client address
        self._lock = threading.Lock()
        super().__init__((host, port), SignalHandler)
        self._thread: threading.Thread | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle in a thread if a slot is free, overall and for the client's address;
        otherwise close the connection at once."""
        client = client_address[0]
        with self._lock:
            full = self.active_requests >= self.max_requests or self._per_client.get(client, 0) >= self.max_per_client
            if not full:
                self.active_requests += 1
                self._per_client[client] = self._per_client.get(client, 0) + 1
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(client_address[0])

    def _done(self, client: str) -> None:
        with self._lock:
            self.active_requests -= 1
            if self._per_client[client] == 1:
                del self._per_client[client]
            else:
                self._per_client[client] -= 1

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    def start(self) -> SignalServer:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="ff-signal-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, which may never have run
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
