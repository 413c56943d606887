"""The ASGI application of ``ff-celery serve`` and running it on uvicorn: the console (pages,
actions, live events, its static files), the signal endpoint (:mod:`ff_celery.web.signals`)
and ``/metrics``, with ``/healthz``; bound to 127.0.0.1 unless told otherwise, guarded against
hostile clients (:mod:`ff_celery.web.server`), and usable behind a reverse proxy (a root path,
and the ``X-Forwarded-*`` headers of the proxies it trusts)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import celery
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ff_celery.engine import DEFAULT_STATE_INTERVAL_S, Engine, EngineStateCollector
from ff_celery.integration.context import engine_for_url
from ff_celery.web.auth import Operators
from ff_celery.web.metrics import metrics_route

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8800
#: Every page's headers: nothing is loaded from elsewhere, no page may frame the console.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: Paths anyone may read even when the console asks viewers to sign in.
OPEN_PATHS = ("/login", "/static/", "/healthz", "/metrics", "/v1/")


@dataclass(frozen=True)
class WebSettings:
    """What ``ff-celery serve`` serves, and for whom."""

    url: str
    console: bool = True
    metrics: bool = False
    operators: Operators = field(default_factory=Operators)
    audit_log: Path = Path("ff-console-audit.jsonl")
    login_to_read: bool = False
    metrics_need_login: bool = False
    metrics_interval_s: float = DEFAULT_STATE_INTERVAL_S
    lanes: tuple[str, ...] = ()


def celery_url(url: str) -> str:
    """``url`` as a ``flowfabric://`` URL (the scheme Celery's result backend and control use)."""
    scheme, separator, rest = url.partition("://")
    return {"redis": "flowfabric", "rediss": "flowfabrics"}.get(scheme, scheme) + separator + rest


class Guard:
    """Security headers on every answer; pages only for signed-in viewers if so configured (an
    ASGI middleware: live event streams pass through untouched)."""

    def __init__(self, app: ASGIApp, login_to_read: bool) -> None:
        self.app, self.login_to_read = app, login_to_read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        root = scope.get("root_path", "")
        path = request.url.path[len(root) :] or "/"
        console = request.app.state.console
        if (
            self.login_to_read
            and console is not None
            and request.method == "GET"
            and not path.startswith(OPEN_PATHS)
            and console.sessions.current(request) is None
        ):
            wanted = f"{path}?{request.url.query}" if request.url.query else path
            await RedirectResponse(f"{root}/login?{urlencode({'next': wanted})}", status_code=303)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def json_answer(document: dict[str, str], status_code: int = 200) -> Response:
    return Response(json.dumps(document), status_code=status_code, media_type="application/json")


def healthz(request: Request) -> Response:
    return json_answer({"status": "ok"})


async def not_found(request: Request, exc: Exception) -> Response:
    """What a server without the console answers for paths it does not serve."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return json_answer({"error": "not_found", "detail": "POST /v1/signals/<eid>/<wp>/<name>"}, status)


def _console(settings: WebSettings, engine: Engine) -> tuple[Any, list[BaseRoute]]:
    """The console's shared state and routes (imported here: they need the ``web`` extra)."""
    try:
        from ff_celery.web import actions, pages, sse
        from ff_celery.web.audit import AuditLog
    except ImportError as exc:
        raise RuntimeError(f"the console needs the web extra: pip install 'ff-celery[web]' ({exc})") from exc
    app_url = celery_url(settings.url)
    console = pages.Console(
        engine=engine,
        celery_app=celery.Celery("ff-celery-console", broker=app_url, backend=app_url, set_as_current=False),
        operators=settings.operators,
        audit=AuditLog(settings.audit_log),
        login_to_read=settings.login_to_read,
    )
    return console, [*pages.ROUTES, *actions.ROUTES, *sse.ROUTES, Mount("/static", StaticFiles(directory=STATIC))]


def create_app(settings: WebSettings, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI application ``settings`` describe, with ``extra_routes`` (the signal endpoint's:
    :data:`ff_celery.web.signals.ROUTES`). Routes find the engine as ``app.state.engine``."""
    engine = engine_for_url(settings.url)
    routes: list[BaseRoute] = [Route("/healthz", healthz), *extra_routes]
    state = None
    if settings.metrics:
        state = EngineStateCollector(engine, lambda: set(settings.lanes) | engine.lanes(), settings.metrics_interval_s)
        routes.append(metrics_route(state, settings.operators, settings.metrics_need_login))
    console = None
    if settings.console:
        console, console_routes = _console(settings, engine)
        routes += console_routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state is not None:
            state.start()
        try:
            yield
        finally:
            if state is not None:
                state.stop()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, login_to_read=settings.login_to_read)],
        lifespan=lifespan,
        exception_handlers={} if settings.console else {404: not_found, 405: not_found},
    )
    app.state.console = console
    app.state.engine = engine
    return app
