"""A tiny HTTP endpoint that turns callbacks (webhooks, approval links) into signals.

``POST /v1/signals/<execution id>/<waitpoint id>/<signal name>`` delivers one signal. The
waitpoint's HMAC token comes in the ``X-Waitpoint-Token`` header or the ``token`` query
parameter (for callers that cannot set headers); the body is the payload (JSON for
``application/json``, else bytes); ``Idempotency-Key`` and ``X-Signal-Source`` are
optional. The answer is JSON: ``202 {"signal_id", "effect", "duplicate"}``, or an error
``{"error": <code>, "detail": ...}`` with 401/403 (token), 404 (no such execution), 409
(waitpoint closed, not signalable), 413 (over 256 KiB), 429 (signal limit), 400 or 503.
``GET /healthz`` answers 200. It listens on 127.0.0.1 unless told otherwise.

These are routes of the ASGI app of ``ff-celery serve --signals`` (:mod:`ff_celery.web`, on
uvicorn), which :class:`SignalServer` runs alone. Hostile clients:
``Content-Length`` must be a decimal number (no chunked bodies); a client that has not sent
its whole request ``timeout_s`` after connecting is dropped (a deadline per request, however
quick each read); at most ``max_requests`` connections are handled at once,
``max_per_client`` of them from one address (further ones are closed at once); bursts of
connections wait in a deep listen backlog (:mod:`ff_celery.web.server`); any unexpected
error answers a bare 500; the access log never shows a query string (tokens); the
``Server`` header names no Python.

    ff-celery signal-server --url redis://127.0.0.1:6379/0 --port 8765
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ff_celery.engine import MAX_SIGNAL_PAYLOAD_BYTES, EngineError, ExecutionId, TransportError, deliver_signal
from ff_celery.web.app import WebSettings, create_app
from ff_celery.web.server import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_CLIENT,
    DEFAULT_TIMEOUT_S,
    ConnectionLimits,
    WebServer,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: Connections handled at once.
DEFAULT_MAX_REQUESTS = DEFAULT_MAX_CONNECTIONS
__all__ = ["DEFAULT_MAX_PER_CLIENT", "DEFAULT_MAX_REQUESTS", "DEFAULT_PORT", "DEFAULT_TIMEOUT_S", "ROUTES"]
__all__ += ["SignalServer"]
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
USAGE = "POST /v1/signals/<eid>/<wp>/<name>"
#: What a request the HTTP parser cannot read is answered (as one with a bad length).
UNREADABLE = json.dumps({"error": "bad_request", "detail": "malformed HTTP request"}).encode()


class BadRequest(Exception):
    """A request this endpoint refuses before reading its body."""


def content_length(headers: Headers) -> int:
    """The declared body size: a plain decimal number, no chunked transfer."""
    if headers.get("Transfer-Encoding"):
        raise BadRequest("chunked or encoded bodies are not accepted; send Content-Length")
    declared = (headers.get("Content-Length") or "0").strip()
    if not declared.isdigit() or not declared.isascii():
        raise BadRequest("Content-Length must be a non-negative decimal number")
    return int(declared)


def answer(status: HTTPStatus, document: dict[str, Any], *, close: bool = False) -> Response:
    headers = {"Connection": "close"} if close else None
    return Response(json.dumps(document), status_code=status, media_type="application/json", headers=headers)


def _segments(request: Request) -> list[str]:
    """The path's segments after the root path, each decoded on its own (an encoded ``/`` stays inside)."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    root = request.scope.get("root_path", "").encode()
    if root and raw.startswith(root):
        raw = raw[len(root) :]
    return [unquote(segment) for segment in raw.decode("latin-1").strip("/").split("/")]


async def deliver(request: Request) -> Response:
    """``POST /v1/signals/<execution id>/<waitpoint id>/<name>``."""
    client = request.client.host if request.client else "-"
    try:
        response = await _deliver(request, client)
    except Exception:
        log.exception("signal endpoint: unexpected error")
        response = answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal_error"}, close=True)
    log.info("%s %s %s %s", client, request.method, request.url.path, response.status_code)  # never the query: tokens
    return response


async def _deliver(request: Request, client: str) -> Response:
    segments = _segments(request)
    if len(segments) != 5 or segments[:2] != ["v1", "signals"]:
        return answer(HTTPStatus.NOT_FOUND, {"error": "not_found", "detail": USAGE})
    execution_id, waitpoint_id, name = segments[2:]
    try:
        length = content_length(request.headers)
    except BadRequest as exc:
        return answer(HTTPStatus.BAD_REQUEST, {"error": "bad_request", "detail": str(exc)}, close=True)
    if length > MAX_SIGNAL_PAYLOAD_BYTES:
        detail = f"{length} bytes > {MAX_SIGNAL_PAYLOAD_BYTES}"
        return answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "payload_too_large", "detail": detail}, close=True)
    body = await request.body() if length else b""
    headers = request.headers
    token = headers.get("X-Waitpoint-Token") or request.query_params.get("token", "")
    is_json = (headers.get("Content-Type") or "").startswith("application/json")
    try:
        outcome = await run_in_threadpool(
            deliver_signal,
            request.app.state.engine,
            ExecutionId(execution_id),
            waitpoint_id,
            token,
            name,
            body,
            source_type="http",
            source_identity=headers.get("X-Signal-Source") or client,
            idempotency_key=headers.get("Idempotency-Key") or "",
            payload_encoding="json" if is_json else "binary",
        )
    except TransportError:
        log.exception("signal endpoint: the engine is unavailable")
        return answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "unavailable", "detail": "try again later"})
    except EngineError as exc:
        return answer(STATUS_BY_CODE.get(exc.code, HTTPStatus.BAD_REQUEST), {"error": exc.code, "detail": str(exc)})
    return answer(HTTPStatus.ACCEPTED, outcome.model_dump())


ROUTES = [Route("/v1/signals/{rest:path}", deliver, methods=["POST"])]


class SignalServer(WebServer):
    """The endpoint alone (``ff-celery serve --signals``), bound to ``host:port`` (port 0 picks
    a free one) and listening from creation on; :meth:`start` serves in a background thread."""

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
        app = create_app(WebSettings(url=url, console=False), ROUTES)
        limits = ConnectionLimits(max_connections=max_requests, max_per_client=max_per_client, timeout_s=timeout_s)
        super().__init__(app, host, port, limits=limits, bad_request_body=UNREADABLE)
