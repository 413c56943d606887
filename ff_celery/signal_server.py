"""A tiny HTTP endpoint that turns callbacks (webhooks, approval links) into signals.

``POST /v1/signals/<execution id>/<waitpoint id>/<signal name>`` delivers one signal. The
waitpoint's HMAC token comes in the ``X-Waitpoint-Token`` header or the ``token`` query
parameter (for callers that cannot set headers); the body is the payload (JSON for
``application/json``, else bytes); ``Idempotency-Key`` and ``X-Signal-Source`` are
optional. The answer is JSON: ``202 {"signal_id", "effect", "duplicate"}``, or an error
``{"error": <code>, "detail": ...}`` with 401/403 (token), 404 (no such execution), 409
(waitpoint closed, not signalable), 413 (over 256 KiB), 429 (signal limit), 400 or 503.
``GET /healthz`` answers 200. It listens on 127.0.0.1 unless told otherwise.

    ff-celery signal-server --url redis://127.0.0.1:6379/0 --port 8765
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ff_celery.context import engine_for_url
from ff_celery.engine import waitpoints
from ff_celery.engine.errors import EngineError, TransportError
from ff_celery.engine.ids import ExecutionId

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
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


class SignalHandler(BaseHTTPRequestHandler):
    server: SignalServer

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/healthz":
            self._answer(HTTPStatus.OK, {"status": "ok"})
        else:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": "POST /v1/signals/<eid>/<wp>/<name>"})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(segment) for segment in parts.path.strip("/").split("/")]
        if len(segments) != 5 or segments[:2] != ["v1", "signals"]:
            self._answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": "POST /v1/signals/<eid>/<wp>/<name>"})
            return
        execution_id, waitpoint_id, name = segments[2:]
        length = int(self.headers.get("Content-Length") or 0)
        if length > waitpoints.MAX_SIGNAL_PAYLOAD_BYTES:
            self._answer(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": "payload_too_large", "detail": f"{length} bytes > {waitpoints.MAX_SIGNAL_PAYLOAD_BYTES}"},
            )
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        token = self.headers.get("X-Waitpoint-Token") or parse_qs(parts.query).get("token", [""])[0]
        is_json = (self.headers.get("Content-Type") or "").startswith("application/json")
        try:
            outcome = waitpoints.deliver_signal(
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
        except EngineError as exc:
            status = HTTPStatus.SERVICE_UNAVAILABLE if isinstance(exc, TransportError) else HTTPStatus.BAD_REQUEST
            self._answer(STATUS_BY_CODE.get(exc.code, status), {"error": exc.code, "detail": str(exc)})
            return
        self._answer(HTTPStatus.ACCEPTED, outcome.model_dump())

    def _answer(self, status: HTTPStatus, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.client_address[0], format % args)


class SignalServer(ThreadingHTTPServer):
    """The endpoint, bound to ``host:port`` (port 0 picks a free one)."""

    daemon_threads = True

    def __init__(self, url: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self.engine = engine_for_url(url)
        super().__init__((host, port), SignalHandler)
        self._thread: threading.Thread | None = None

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
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
