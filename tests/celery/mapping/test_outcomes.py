"""How a task's exception reads on its execution: a ``Type: message`` reason and a category."""

from celery.exceptions import TimeLimitExceeded, WorkerLostError

from ff_celery.mapping.outcomes import describe, failure_category


def test_an_exception_raw_or_encoded_by_celery_reads_as_type_and_message():
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert describe({"exc_type": "KeyError", "exc_message": ["nope"]}) == "KeyError: nope"
    assert describe({"exc_type": "E", "exc_message": ["a", "b"]}) == "E: a, b"
    assert len(describe(ValueError("x" * 5000))) == 1000


def test_timeouts_crashes_and_budget_breaches_have_their_own_category():
    assert failure_category(TimeLimitExceeded(1)) == "timeout"
    assert failure_category(WorkerLostError()) == "infra_crash"
    assert failure_category({"exc_type": "BudgetExceeded"}) == "budget_exceeded"
    assert failure_category(ValueError()) == "transient"
