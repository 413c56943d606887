"""Suspend and signal from @app.task code, through real workers: a waiting task frees its slot,
resumes on a valid signal and sees it, times out per its behaviour, and rejects bad tokens."""

import json
import urllib.error
import urllib.request
from unittest.mock import ANY

import pytest

import ff_celery
from ff_celery.engine.core.errors import EngineError, ValidationError
from ff_celery.engine.work.signals import resume_execution, rotate_waitpoint_secret
from ff_celery.features.signals import suspended_waitpoint
from ff_celery.web.signals import SignalServer

from .conftest import execution, runs, wait_for


@pytest.fixture
def worker(start_worker):
    return start_worker(concurrency=1)


def waiting(ffapp, result):
    """The waitpoint of a task once it is SUSPENDED."""
    assert wait_for(lambda: result.state == "SUSPENDED"), result.state
    return suspended_waitpoint(result)


def test_a_suspended_task_frees_its_slot_and_resumes_with_the_signal(ffapp, app_url, worker):
    result = ffapp.await_approval.delay()
    point = waiting(ffapp, result)
    assert execution(ffapp, result.id).public_state == "suspended"
    assert result.info["signal_names"] == ["approve", "reject"]
    # the only slot is free while it waits
    assert ffapp.add.delay(20, 22).get(timeout=10) == 42

    outcome = ff_celery.send_signal(
        app_url, point.execution_id, point.waitpoint_id, point.token, "approve", {"by": "ada"}, source_identity="ada"
    )
    assert outcome.resumed
    assert result.get(timeout=15) == {"signals": [["approve", {"by": "ada"}, "ada"]]}
    snapshot = execution(ffapp, result.id)
    assert snapshot.public_state == "completed"
    assert len(snapshot.attempts) == 1  # the same attempt continued after the signal
    assert [event.split(":")[0] for event in runs(ffapp, result.id)] == ["run", "run", "resumed"]


def test_bad_tokens_are_rejected_every_time_and_the_task_keeps_waiting(ffapp, app_url, worker):
    result = ffapp.await_approval.delay()
    point = waiting(ffapp, result)
    forged = point.token.split(":")[0] + ":" + "0" * 40
    for token in (forged, point.token.upper(), "", "k1:short", "nokid"):
        with pytest.raises(ValidationError):
            ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, token, "approve")
    other = waiting(ffapp, ffapp.await_approval.delay())
    with pytest.raises(ValidationError, match="invalid_token"):  # a valid token of another waitpoint
        ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, other.token, "approve")
    assert result.state == "SUSPENDED"
    ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "reject")
    assert result.get(timeout=15)["signals"][0][0] == "reject"


def test_a_rotated_out_token_is_rejected_once_its_grace_ends(ffapp, app_url, worker):
    result = ffapp.await_approval.delay()
    point = waiting(ffapp, result)
    engine = ffapp.app.backend.engine
    rotate_waitpoint_secret(engine, f"rotated-{result.id[:8]}", "ab" * 32, grace_ms=0)
    # a zero grace ends with the rotation's own millisecond: a signal in that one still passes
    rotated_by = engine.server_time_ms()
    assert wait_for(lambda: engine.server_time_ms() > rotated_by, interval=0.001)
    with pytest.raises(ValidationError, match="token_expired"):
        ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "approve")
    resume_execution(engine, execution(ffapp, result.id).execution_id)  # an operator can still resume it
    assert result.get(timeout=15) == {"signals": []}


def test_duplicate_signals_are_deduplicated_by_idempotency_key(ffapp, app_url, worker):
    result = ffapp.await_approval.delay()
    point = waiting(ffapp, result)
    args = (app_url, point.execution_id, point.waitpoint_id, point.token)
    first = ff_celery.send_signal(*args, "nope", idempotency_key="delivery-7")
    again = ff_celery.send_signal(*args, "nope", idempotency_key="delivery-7")
    assert (again.duplicate, again.signal_id) == (True, first.signal_id)
    assert first.effect == "no_op"  # "nope" matches nothing: still waiting
    assert result.state == "SUSPENDED"
    ff_celery.send_signal(*args, "approve")
    assert result.get(timeout=15)["signals"][0][0] == "approve"


def test_an_oversized_signal_payload_is_refused(ffapp, app_url, worker):
    result = ffapp.await_approval.delay()
    point = waiting(ffapp, result)
    with pytest.raises(EngineError) as refused:
        ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "approve", "x" * 300_000)
    assert refused.value.code == "payload_too_large"
    assert result.state == "SUSPENDED"


def test_signals_sent_before_the_task_waits_are_kept(ffapp, app_url, worker):
    result = ffapp.early_waiter.delay()
    key = f"ffapp:waitpoint:{result.id}"
    assert wait_for(lambda: ffapp.runs().get(key))
    point = json.loads(ffapp.runs().get(key))
    outcome = ff_celery.send_signal(app_url, point["execution_id"], point["waitpoint_id"], point["token"], "go")
    assert outcome.effect == "buffered_for_pending_waitpoint"
    ffapp.runs().set(f"ffapp:go:{result.id}", 1)
    assert result.get(timeout=15) == ["go"]
    assert [e.split(":")[0] for e in runs(ffapp, result.id)] == ["waiting"]  # it never had to suspend


@pytest.mark.parametrize(
    ("on_timeout", "state", "public_state"),
    [("fail", "FAILURE", "failed"), ("cancel", "REVOKED", "cancelled"), ("auto_resume", "SUCCESS", "completed")],
)
def test_a_wait_that_times_out_applies_its_timeout_behaviour(ffapp, worker, on_timeout, state, public_state):
    result = ffapp.await_approval.delay(timeout=0.5, on_timeout=on_timeout)
    assert wait_for(lambda: execution(ffapp, result.id).public_state == public_state, timeout=20)
    assert wait_for(lambda: result.state == state)
    if on_timeout == "auto_resume":
        assert result.get(timeout=5) == {"timed_out": True}
    elif on_timeout == "fail":
        assert "suspension_timeout:fail" in str(result.result)


def test_an_escalated_wait_stays_suspended_for_an_operator(ffapp, app_url, worker):
    result = ffapp.await_approval.delay(timeout=0.3, on_timeout="escalate")
    point = waiting(ffapp, result)
    assert wait_for(lambda: execution(ffapp, result.id).core["blocking_reason"] == "paused_by_operator", timeout=20)
    assert result.state == "SUSPENDED"
    ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "approve")
    assert result.get(timeout=15)["signals"][0][0] == "approve"


def post(url, body=b"", headers=None):
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_signed_http_callback_resumes_the_task_and_bad_ones_are_refused(ffapp, app_url, worker):
    server = SignalServer(app_url, port=0).start()
    try:
        result = ffapp.await_approval.delay()
        point = waiting(ffapp, result)
        url = point.callback_url(server.base_url, "approve")
        assert url.startswith("http://127.0.0.1:")

        forged = url.replace(point.token.split(":")[1], "0" * 40)
        assert post(forged, b'{"by": "mallory"}') == (403, {"error": "invalid_token", "detail": ANY})
        assert post(url.split("?")[0])[1]["error"] == "missing_token"
        assert post(url, b"x" * 300_000)[0] == 413
        other = url.replace(point.waitpoint_id, "00000000-0000-0000-0000-000000000000")
        assert post(other)[0] == 403  # an unknown waitpoint is indistinguishable from a bad token
        assert result.state == "SUSPENDED"

        headers = {"Content-Type": "application/json", "Idempotency-Key": "cb-1", "X-Signal-Source": "approvals"}
        status, body = post(url, b'{"by": "grace"}', headers)
        assert status == 202 and body["effect"] == "resume_condition_satisfied"
        assert result.get(timeout=15) == {"signals": [["approve", {"by": "grace"}, "approvals"]]}
        assert post(url, b'{"by": "grace"}', headers) == (409, {"error": "target_not_signalable", "detail": ANY})
    finally:
        server.stop()
