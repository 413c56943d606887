"""The console's pages, rendered on the server from the templates shipped in this package:
lanes, executions (by state, task id or task name), one execution, a flow, the waiting
tasks, the audit log, and signing in and out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import celery
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from ff_celery.cli.common import when
from ff_celery.engine import (
    STATE_INDEXES,
    Engine,
    EngineError,
    ExecutionId,
    describe_execution,
    lease_history,
    read_waitpoint,
    resolve_target,
)
from ff_celery.web import dag, reads
from ff_celery.web.audit import AuditLog
from ff_celery.web.auth import CSRF_FIELD, SESSION_COOKIE, Operators, Sessions

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.filters["when"] = when
#: Executions a listing shows at most.
LIST_LIMIT = 200


@dataclass
class Console:
    """What the pages and actions share: the engine, a Celery app on the same server (results,
    revoke), the operator's credentials, sessions and the audit log."""

    engine: Engine
    celery_app: celery.Celery
    operators: Operators
    audit: AuditLog
    login_to_read: bool = False
    sessions: Sessions = field(default_factory=Sessions)
    rates: reads.LaneRates = field(default_factory=reads.LaneRates)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A page, with what every page needs: the root path, the signed-in operator and the CSRF token."""
    console: Console = request.app.state.console
    session = console.sessions.current(request)
    common = {
        "base": request.scope.get("root_path", ""),
        "operator": session.operator if session else None,
        "csrf_field": CSRF_FIELD,
        "csrf_token": console.sessions.csrf_token(session) if session else "",
        "can_sign_in": console.operators.configured,
    }
    return TEMPLATES.TemplateResponse(request, template, {**common, **context}, status_code=status_code)


def _console(request: Request) -> Console:
    return request.app.state.console


def lanes(request: Request) -> Response:
    console = _console(request)
    return render(request, "lanes.html", {"rows": reads.lanes_overview(console.engine, console.rates)})


def lanes_table(request: Request) -> Response:
    """The lanes table alone (what the lanes page refreshes live)."""
    console = _console(request)
    return render(request, "lanes_table.html", {"rows": reads.lanes_overview(console.engine, console.rates)})


def executions(request: Request) -> Response:
    console, params = _console(request), request.query_params
    query = params.get("q", "").strip()
    if query:
        found = reads.resolve(console.engine, query)
        if found is not None:
            return RedirectResponse(f"{request.scope.get('root_path', '')}/execution?{urlencode({'id': found})}", 303)
    known_lanes = sorted(console.engine.lanes())
    lane = params.get("lane", "")
    states = [s for s in params.getlist("state") if s in STATE_INDEXES] or list(reads.OPEN_STATES)
    found_executions = reads.find_executions(console.engine, [lane] if lane else known_lanes, states, query, LIST_LIMIT)
    context = {
        "lanes": known_lanes,
        "lane": lane,
        "all_states": sorted(STATE_INDEXES),
        "states": states,
        "query": query,
        "executions": found_executions,
    }
    return render(request, "executions.html", context)


def _missing(request: Request, what: str, error: Exception) -> Response:
    return render(request, "missing.html", {"what": what, "error": str(error)}, status_code=404)


def execution(request: Request) -> Response:
    console, target = _console(request), request.query_params.get("id", "")
    try:
        execution_id = resolve_target(console.engine, target)
        report = describe_execution(console.engine, execution_id)
    except EngineError as exc:
        return _missing(request, f"execution {target}", exc)
    open_waitpoints = {
        view.waitpoint_id: read_waitpoint(console.engine, execution_id, view.waitpoint_id)
        for view in report.waitpoints
        if view.state in ("pending", "active")
    }
    context = {
        "report": report,
        "core": report.snapshot.core,
        "task": reads.celery_task(console.engine, console.celery_app, report),
        "lease_history": lease_history(console.engine, ExecutionId(report.execution_id), reads.LEASE_HISTORY_SHOWN),
        "open_waitpoints": {k: v for k, v in open_waitpoints.items() if v is not None},
        "done": request.query_params.get("done", ""),
    }
    return render(request, "execution.html", context)


def flow(request: Request) -> Response:
    console, target = _console(request), request.query_params.get("id", "")
    try:
        page = reads.flow_page(console.engine, target)
    except EngineError as exc:
        return _missing(request, f"flow {target}", exc)
    return render(request, "flow.html", {"page": page, "drawing": dag.draw(page.members)})


def waiting(request: Request) -> Response:
    return render(request, "waiting.html", {"tasks": reads.waiting_tasks(_console(request).engine)})


def audit(request: Request) -> Response:
    console = _console(request)
    if console.sessions.current(request) is None:
        return render(request, "refused.html", {"action": "read the audit log", "why": "not signed in"}, 403)
    return render(request, "audit.html", {"entries": console.audit.recent()})


def login_form(request: Request) -> Response:
    return render(request, "login.html", {"next": request.query_params.get("next", ""), "failed": False})


async def login(request: Request) -> Response:
    console = _console(request)
    form = await request.form()
    token, user, password = (str(form.get(name, "")) for name in ("token", "user", "password"))
    operator = console.operators.by_token(token) if token else console.operators.by_password(user, password)
    address = request.client.host if request.client else ""
    if operator is None:
        console.audit.record(who=user or "anonymous", address=address, action="sign in", target="", outcome="refused")
        return render(request, "login.html", {"next": form.get("next", ""), "failed": True}, status_code=403)
    console.audit.record(who=operator, address=address, action="sign in", target="", outcome="signed in")
    base = request.scope.get("root_path", "")
    next_page = str(form.get("next", ""))
    if not next_page.startswith("/") or next_page.startswith("//") or "\\" in next_page:
        next_page = "/"  # only a page of this console: never another site's (//host, /\\host)
    response = RedirectResponse(base + next_page, status_code=303)
    response.set_cookie(
        SESSION_COOKIE, console.sessions.issue(operator), max_age=console.sessions.ttl_s, path=base or "/",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )  # fmt: skip
    return response


async def logout(request: Request) -> Response:
    console = _console(request)
    session = console.sessions.current(request)
    form = await request.form()
    base = request.scope.get("root_path", "")
    if session is None or not console.sessions.csrf_ok(session, str(form.get(CSRF_FIELD, ""))):
        return render(request, "refused.html", {"action": "sign out", "why": "bad or missing CSRF token"}, 403)
    response = RedirectResponse(base + "/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=base or "/")
    return response


ROUTES = [
    Route("/", lanes),
    Route("/lanes/table", lanes_table),
    Route("/executions", executions),
    Route("/execution", execution),
    Route("/flow", flow),
    Route("/waiting", waiting),
    Route("/audit", audit),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
