"""The Celery state of an execution that has not completed, from its exec_core fields and
what its worker recorded (``ff_celery.mapping.states.celery_state``)."""

import pytest
from celery import states

from ff_celery.mapping.states import BLOCKED, SUSPENDED, celery_state

RUNNING = {"public_state": "active", "lifecycle_phase": "active"}


@pytest.mark.parametrize(
    ("public_state", "expected"),
    [("failed", states.FAILURE), ("cancelled", states.REVOKED), ("expired", states.REVOKED)],
)
def test_an_execution_that_ended_without_completing_is_failed_or_revoked(public_state, expected):
    assert celery_state({"public_state": public_state}, None) == expected
    assert celery_state({"public_state": public_state}, "PROGRESS") == expected  # whatever was recorded


def test_an_execution_waiting_for_its_next_attempt_is_retry():
    core = {"public_state": "delayed", "lifecycle_phase": "runnable", "attempt_state": "pending_retry_attempt"}
    assert celery_state(core, None) == states.RETRY


def test_an_execution_held_back_by_a_budget_or_quota_is_blocked():
    core = {"public_state": "rate_limited", "lifecycle_phase": "runnable", "blocking_reason": "waiting_for_budget"}
    assert celery_state(core, None) == BLOCKED


def test_a_suspended_execution_is_suspended_and_once_resumed_no_longer():
    assert celery_state({"public_state": "suspended", "lifecycle_phase": "suspended"}, None) == SUSPENDED
    waiting_again = {"public_state": "waiting", "lifecycle_phase": "runnable"}
    assert celery_state(waiting_again, SUSPENDED) == states.PENDING


def test_a_running_execution_shows_the_state_its_worker_announced():
    assert celery_state(RUNNING, states.STARTED) == states.STARTED
    assert celery_state(RUNNING, "PROGRESS") == "PROGRESS"
    assert celery_state(RUNNING, None) == states.PENDING


def test_a_recorded_final_state_does_not_outlive_a_new_attempt():
    assert celery_state(RUNNING, states.SUCCESS) == states.PENDING
    assert celery_state({"public_state": "waiting", "lifecycle_phase": "runnable"}, states.FAILURE) == states.PENDING


def test_a_recorded_retry_holds_until_the_next_attempt_announces_itself():
    assert celery_state({"public_state": "waiting", "lifecycle_phase": "runnable"}, states.RETRY) == states.RETRY
