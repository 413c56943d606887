"""What a signed-in operator can do from the console, each through the engine or Celery's own
call: deliver a signal to a waiting task, cancel an execution, revoke a Celery task (its
whole flow for a canvas member), replay an ended one. Every attempt is written to the audit
log, refused ones included; a refused action answers 403 and changes nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ff_celery.engine import (
    EngineError,
    ExecutionId,
    deliver_signal,
    error_for_code,
    read_waitpoint,
    resolve_target,
    text_encoding,
)
from ff_celery.web.auth import CSRF_FIELD
from ff_celery.web.pages import Console, render

Form = dict[str, str]


def _signal(console: Console, execution_id: ExecutionId, form: Form, who: str) -> str:
    """Deliver the form's signal to the waitpoint it names, as the operator (the token is read
    from the waitpoint, as ``ff-celery signal`` does without ``--token``)."""
    waitpoint_id = form.get("waitpoint_id", "")
    record = read_waitpoint(console.engine, execution_id, waitpoint_id) if waitpoint_id else None
    if record is None:
        raise error_for_code("waitpoint_not_found", [waitpoint_id or "no waitpoint given"])
    body = form.get("payload", "").encode()
    encoding = text_encoding(body)
    outcome = deliver_signal(
        console.engine,
        execution_id,
        waitpoint_id,
        record.token,
        form.get("name", "").strip(),
        body,
        source_type="operator",
        source_identity=who,
        payload_encoding=encoding,
    )
    return f"duplicate of signal {outcome.signal_id}" if outcome.duplicate else f"signal {outcome.effect}"


def _cancel(console: Console, execution_id: ExecutionId, form: Form, who: str) -> str:
    phase = console.engine.cancel(execution_id, form.get("reason") or f"cancelled by {who} from the console")
    return f"cancelled (was {phase})"


def _revoke(console: Console, execution_id: ExecutionId, form: Form, who: str) -> str:
    task_id = console.engine.read_tags([execution_id])[0].get("celery.id")
    if not task_id:
        raise error_for_code("invalid_input", [f"{execution_id} is not a Celery task"])
    console.celery_app.control.revoke(task_id)
    return "revoked"


def _replay(console: Console, execution_id: ExecutionId, form: Form, who: str) -> str:
    console.engine.replay(execution_id)
    return "replay scheduled"


ACTIONS: dict[str, Callable[[Console, ExecutionId, Form, str], str]] = {
    "signal": _signal,
    "cancel": _cancel,
    "revoke": _revoke,
    "replay": _replay,
}


def _act(name: str, console: Console, target: str, form: Form, who: str) -> tuple[ExecutionId, str]:
    """Run action ``name`` on the execution of ``target`` (a task or execution id)."""
    execution_id = resolve_target(console.engine, target)
    return execution_id, ACTIONS[name](console, execution_id, form, who)


def _endpoint(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        console: Console = request.app.state.console
        form = {key: value for key, value in (await request.form()).items() if isinstance(value, str)}
        target = form.get("execution_id", "")
        session = console.sessions.current(request)
        address = request.client.host if request.client else ""
        record = console.audit.record
        if session is None or not console.sessions.csrf_ok(session, form.get(CSRF_FIELD, "")):
            why = "not signed in" if session is None else "bad or missing CSRF token"
            record(who=session.operator if session else "anonymous", address=address, action=name, target=target,
                   outcome=f"refused: {why}")  # fmt: skip
            return render(request, "refused.html", {"action": name, "why": why}, status_code=403)
        try:
            execution_id, message = await run_in_threadpool(_act, name, console, target, form, session.operator)
        except EngineError as exc:
            record(who=session.operator, address=address, action=name, target=target, outcome=f"error: {exc}")
            return render(request, "refused.html", {"action": name, "why": str(exc)}, status_code=409)
        details = {"signal": form.get("name", "")} if name == "signal" else {}
        record(who=session.operator, address=address, action=name, target=str(execution_id), outcome=message,
               **details)  # fmt: skip
        query = urlencode({"id": str(execution_id), "done": f"{name}: {message}"})
        return RedirectResponse(f"{request.scope.get('root_path', '')}/execution?{query}", status_code=303)

    return endpoint


ROUTES = [Route(f"/actions/{name}", _endpoint(name), methods=["POST"]) for name in ACTIONS]
