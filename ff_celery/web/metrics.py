"""``GET /metrics`` on the console's app: this process's counters and the engine state as
the background collector last read it (:class:`~ff_celery.engine.EngineStateCollector`),
so a scrape costs the server no command; optionally only for the operator's credentials
(``Authorization: Bearer <token>`` or Basic)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ff_celery.engine import EngineStateCollector, registry_for
from ff_celery.web.auth import Operators


def metrics_route(state: EngineStateCollector, operators: Operators, need_login: bool) -> Route:
    """The ``/metrics`` route serving ``state`` (started and stopped with the app)."""
    registry: Any = registry_for(state)  # RuntimeError without prometheus_client
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(request: Request) -> Response:
        if need_login and operators.by_header(request.headers.get("authorization", "")) is None:
            challenge = {"WWW-Authenticate": 'Bearer realm="ff-celery"'}
            return PlainTextResponse("operator credentials needed", 401, challenge)
        body = await run_in_threadpool(generate_latest, registry)  # waits for the first reading, at most 10 s
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics)
