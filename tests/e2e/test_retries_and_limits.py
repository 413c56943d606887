"""Retries are attempts of one execution, decided by the engine; time limits end attempts."""

import time

import pytest
from celery.exceptions import MaxRetriesExceededError, SoftTimeLimitExceeded, TimeLimitExceeded

from .conftest import execution, runs, wait_for


@pytest.fixture(autouse=True)
def worker(module_worker):
    return module_worker


def attempt_times(ffapp, task_id):
    return [float(entry.rsplit(":", 1)[1]) for entry in runs(ffapp, task_id)]


def test_self_retry_runs_again_as_attempts_of_the_same_execution(ffapp):
    result = ffapp.flaky.delay(2)
    assert result.get(timeout=15) == 2  # request.retries counted by the engine
    snapshot = execution(ffapp, result.id)
    assert [(a.attempt_type, a.attempt_state) for a in snapshot.attempts] == [
        ("initial", "ended_failure"),
        ("retry", "ended_failure"),
        ("retry", "ended_success"),
    ]
    assert snapshot.core["retry_count"] == "2"
    assert [entry.split(":")[0] for entry in runs(ffapp, result.id)] == ["attempt0", "attempt1", "attempt2"]


def test_a_retry_with_new_arguments_runs_them_in_the_next_attempt(ffapp):
    result = ffapp.retried_with_new_arguments.delay("old", by="call")
    assert result.get(timeout=15) == [["new"], {"by": "retry"}, 1]
    assert [a.attempt_type for a in execution(ffapp, result.id).attempts] == ["initial", "retry"]


def test_a_task_waiting_for_its_retry_is_in_the_retry_state(ffapp):
    result = ffapp.flaky.delay(1, countdown=2)
    # Celery's RETRY meta is written just before the engine schedules the next attempt
    assert wait_for(
        lambda: result.state == "RETRY" and execution(ffapp, result.id).public_state in ("delayed", "waiting"),
        timeout=10,
    )
    assert isinstance(result.info, ConnectionError)
    assert result.get(timeout=15) == 1


def test_the_retry_countdown_is_the_engines_backoff(ffapp):
    result = ffapp.flaky.delay(1, countdown=1.5)
    result.get(timeout=15)
    first, second = attempt_times(ffapp, result.id)
    assert second - first >= 1.4


def test_exceeding_max_retries_fails_the_execution(ffapp):
    result = ffapp.flaky.delay(10)  # max_retries=3
    with pytest.raises(ConnectionError):
        result.get(timeout=20)
    assert result.state == "FAILURE"
    snapshot = execution(ffapp, result.id)
    assert snapshot.public_state == "failed"
    assert len(snapshot.attempts) == 4


def test_autoretry_for_with_backoff_retries_then_fails(ffapp):
    result = ffapp.autoretried.delay()
    with pytest.raises((ConnectionError, MaxRetriesExceededError)):
        result.get(timeout=20)
    times = attempt_times(ffapp, result.id)
    assert len(times) == 3  # max_retries=2
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9  # retry_backoff=1: 1 s, 2 s
    assert len(execution(ffapp, result.id).attempts) == 3


def test_a_soft_time_limit_fails_the_attempt(ffapp):
    result = ffapp.soft_limited.delay()
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=15)
    assert execution(ffapp, result.id).public_state == "failed"
    assert [entry.split(":")[0] for entry in runs(ffapp, result.id)] == ["soft-limit"]


def test_a_hard_time_limit_ends_the_attempt_from_the_main_process(ffapp):
    started = time.monotonic()
    result = ffapp.hard_limited.delay()
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=20)
    assert time.monotonic() - started < 30  # the task itself sleeps 30 s
    snapshot = execution(ffapp, result.id)
    assert snapshot.public_state == "failed"
    assert snapshot.attempts[0].fields["failure_category"] == "timeout"
