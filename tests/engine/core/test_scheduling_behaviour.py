"""Scheduling behaviour through the engine API: retry backoff, delayed promotion, priority
order, idempotency-key dedup, tags, execution deadlines and attempt timeouts.

Runs on the real embedded server. Delays are short (at most a few hundred ms) and measured
against engine (server) time.
"""

from __future__ import annotations

import time

import pytest
from conftest import engine_time

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import DELAY_SAFETY_MS, Engine
from ff_celery.engine.core.errors import ExecutionNotActiveError, ValidationError
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.engine.core.policy import (
    ExecutionPolicy,
    ExponentialBackoff,
    FixedBackoff,
    RetryPolicy,
    TimeoutPolicy,
)
from ff_celery.engine.duties.scanners import EngineScanners
from ff_celery.engine.work.claimed_task import ClaimedTask
from ff_celery.engine.work.claimer import Claimer

LANE = "default"


@pytest.fixture
def claimer(make_claimer) -> Claimer:
    return make_claimer([LANE], worker_id="worker-1", worker_instance_id="worker-1-a", lease_ttl_ms=30_000)


@pytest.fixture
def scanners(ff_engine: Engine) -> EngineScanners:
    return EngineScanners(ff_engine, lanes=[LANE])


def claim_now(claimer: Claimer) -> ClaimedTask | None:
    """One probe-and-claim pass, without waiting for a wake-up."""
    tasks = claimer.try_claim(1)
    return tasks[0] if tasks else None


def sleep_until(engine: Engine, at_ms: float) -> None:
    """Sleep until engine time reaches ``at_ms`` (plus a millisecond)."""
    remaining = at_ms - engine.server_time_ms()
    assert remaining < 1000, f"test would sleep {remaining} ms"
    if remaining >= 0:
        time.sleep((remaining + 2) / 1000)
    while engine.server_time_ms() <= at_ms:
        time.sleep(0.001)


def state(engine: Engine, eid: ExecutionId) -> dict[str, str]:
    return engine.read_core(
        eid,
        "lifecycle_phase",
        "public_state",
        "attempt_state",
        "terminal_outcome",
        "retry_count",
        "delay_until",
        "failure_reason",
    )


# -- retry backoff ----------------------------------------------------------------------------


def fail_and_measure(engine: Engine, task: ClaimedTask, reason: str) -> tuple[fn.FailOutcome, int, int]:
    """Fail ``task``; answers the outcome and engine time read just before and just after."""
    before = engine.server_time_ms()
    outcome = task.fail(reason)
    return outcome, before, engine.server_time_ms()


def run_retries(
    engine: Engine,
    claimer: Claimer,
    scanners: EngineScanners,
    policy: RetryPolicy,
    expected_delays: list[float],
) -> tuple[ExecutionId, list[ClaimedTask]]:
    """Submit, then claim and fail once per expected delay, promoting each retry when due.
    Checks every measured delay, the attempt types and retry counts, and that a scheduled
    retry is not claimable before it is promoted. Answers the execution and the tasks."""
    eid = engine.submit(LANE, b"job", policy=ExecutionPolicy(retry_policy=policy)).execution_id
    tasks: list[ClaimedTask] = []
    for number, expected in enumerate(expected_delays):
        task = claim_now(claimer)
        assert task is not None and task.execution_id == eid
        tasks.append(task)
        assert task.attempt_type == ("initial" if number == 0 else "retry")
        assert task.retry_count == number
        assert task.attempt_index == number

        outcome, before, after = fail_and_measure(engine, task, f"boom {number}")

        assert outcome.retry_scheduled and outcome.delay_until is not None
        # the function's own "now" lies between the two reads: delay_until - now == expected
        delay = outcome.delay_until - before
        assert expected <= delay <= expected + (after - before), f"retry {number}: {delay} ms, expected {expected}"
        failed_at = int(engine.read_core(eid, "last_transition_at")["last_transition_at"])  # that "now"
        assert outcome.delay_until - failed_at == expected, f"retry {number}"
        core = state(engine, eid)
        assert core["public_state"] == "delayed"
        assert core["attempt_state"] == "pending_retry_attempt"
        assert core["retry_count"] == str(number + 1)
        assert float(core["delay_until"]) == outcome.delay_until
        delayed_key = PartitionKeys(eid.partition).delayed(LANE)
        assert engine.redis.zscore(delayed_key, eid) == outcome.delay_until

        # not claimable, and not promotable, before its time (a millisecond early, by the
        # promoter's clock: however long a loaded machine took to get here)
        assert claim_now(claimer) is None
        with engine_time(scanners.engine, outcome.delay_until - 1):
            scanners.promote_delayed()
        assert state(engine, eid)["public_state"] == "delayed"

        sleep_until(engine, outcome.delay_until)
        scanners.promote_delayed()
        assert state(engine, eid)["public_state"] == "waiting"
    return eid, tasks


def test_exponential_backoff_delays_grow_by_the_multiplier_and_the_last_failure_is_terminal(
    ff_engine, claimer, scanners
):
    policy = RetryPolicy(
        max_retries=3, backoff=ExponentialBackoff(initial_delay_ms=100, multiplier=1.5, max_delay_ms=60_000)
    )
    eid, _ = run_retries(ff_engine, claimer, scanners, policy, [100, 150, 225])

    task = claim_now(claimer)
    assert task is not None
    assert (task.attempt_type, task.retry_count, task.attempt_index) == ("retry", 3, 3)
    outcome = task.fail("boom 3")

    assert outcome == fn.FailOutcome(retry_scheduled=False)
    snapshot = ff_engine.snapshot(eid)
    assert snapshot.public_state == "failed"
    assert snapshot.terminal_outcome == "failed"
    assert snapshot.core["failure_reason"] == "boom 3"
    assert snapshot.core["retry_count"] == "3"
    assert [a.attempt_type for a in snapshot.attempts] == ["initial", "retry", "retry", "retry"]
    assert [a.attempt_state for a in snapshot.attempts] == ["ended_failure"] * 4
    assert [a.fields.get("previous_attempt_index", "") for a in snapshot.attempts] == ["", "0", "1", "2"]
    assert [a.fields["failure_reason"] for a in snapshot.attempts] == ["boom 0", "boom 1", "boom 2", "boom 3"]
    assert claim_now(claimer) is None
    assert ff_engine.lane_counts(LANE)["terminal"] == 1


def test_fixed_backoff_gives_the_same_delay_for_every_retry(ff_engine, claimer, scanners):
    policy = RetryPolicy(max_retries=3, backoff=FixedBackoff(delay_ms=60))
    eid, _ = run_retries(ff_engine, claimer, scanners, policy, [60, 60, 60])

    task = claim_now(claimer)
    assert task is not None and task.retry_count == 3
    assert task.fail("last").retry_scheduled is False
    assert state(ff_engine, eid)["terminal_outcome"] == "failed"


def test_max_delay_caps_the_exponential_backoff(ff_engine, claimer, scanners):
    policy = RetryPolicy(max_retries=3, backoff=ExponentialBackoff(initial_delay_ms=40, multiplier=10, max_delay_ms=90))
    # uncapped this would be 40, 400, 4000
    run_retries(ff_engine, claimer, scanners, policy, [40, 90, 90])


def test_without_a_retry_policy_the_first_failure_is_terminal(ff_engine, claimer):
    eid = ff_engine.submit(LANE, b"job").execution_id
    task = claim_now(claimer)
    assert task is not None and task.attempt_type == "initial"

    outcome = task.fail("no retries", "transient")

    assert outcome == fn.FailOutcome(retry_scheduled=False)
    core = state(ff_engine, eid)
    assert core["public_state"] == "failed"
    assert core["terminal_outcome"] == "failed"
    assert core["failure_reason"] == "no retries"
    assert core["retry_count"] == "0"
    assert ff_engine.lane_counts(LANE) == {"eligible": 0, "delayed": 0, "active": 0, "suspended": 0, "terminal": 1}


def test_zero_max_retries_is_the_same_as_no_retry_policy(ff_engine, claimer):
    policy = ExecutionPolicy(retry_policy=RetryPolicy(max_retries=0))
    eid = ff_engine.submit(LANE, b"job", policy=policy).execution_id
    task = claim_now(claimer)
    assert task is not None
    assert task.fail("once").retry_scheduled is False
    assert state(ff_engine, eid)["terminal_outcome"] == "failed"


# -- delayed executions -----------------------------------------------------------------------


def create_delayed(engine: Engine, delay_until: int) -> ExecutionId:
    """A delayed execution due at ``delay_until``, created through the FCALL model because
    ``Engine.submit`` treats any delay under DELAY_SAFETY_MS as "now"."""
    engine.register_lane(LANE)
    created = engine.call(
        fn.CreateExecution(
            execution_id=ExecutionId.mint(engine.partitions.lane_partition(LANE)),
            namespace=engine.namespace,
            lane_id=LANE,
            execution_kind="task",
            input_payload=b"later",
            delay_until=delay_until,
        )
    )
    assert created.public_state == "delayed"
    return created.execution_id


def test_delayed_execution_is_not_claimable_until_promoted_when_due(ff_engine, claimer, scanners):
    delay_until = ff_engine.server_time_ms() + 300
    eid = create_delayed(ff_engine, delay_until)

    assert claim_now(claimer) is None
    with engine_time(ff_engine, delay_until - 1):  # a millisecond early, however late we got here
        scanners.promote_delayed()
    assert state(ff_engine, eid)["public_state"] == "delayed"
    assert claim_now(claimer) is None

    sleep_until(ff_engine, delay_until)
    assert claim_now(claimer) is None  # due, but not yet promoted
    scanners.promote_delayed()

    core = state(ff_engine, eid)
    assert core["public_state"] == "waiting"
    assert core["delay_until"] == ""
    task = claim_now(claimer)
    assert task is not None and task.execution_id == eid
    assert task.payload == b"later"
    assert task.attempt_type == "initial"
    task.complete()


def test_submit_with_a_delay_over_a_second_is_delayed_and_promoted_exactly_at_its_time(ff_engine, claimer, scanners):
    delay_until = ff_engine.server_time_ms() + DELAY_SAFETY_MS + 2000
    created = ff_engine.submit(LANE, b"later", delay_until=delay_until)
    eid = created.execution_id

    assert created.public_state == "delayed"
    assert claim_now(claimer) is None
    scanners.promote_delayed()
    assert state(ff_engine, eid)["public_state"] == "delayed"

    # ff_promote_delayed trusts its now_ms: one millisecond early it is not yet due
    promote = fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=delay_until - 1)
    assert ff_engine.call(promote) == "not_yet_due"
    assert ff_engine.call(promote.model_copy(update={"now_ms": delay_until})) == "promoted"

    task = claim_now(claimer)
    assert task is not None and task.execution_id == eid
    task.complete()


def test_submit_with_a_delay_under_a_second_is_eligible_now(ff_engine, claimer):
    created = ff_engine.submit(LANE, b"soon", delay_until=ff_engine.server_time_ms() + 300)

    assert created.public_state == "waiting"
    assert state(ff_engine, created.execution_id)["delay_until"] == ""
    task = claim_now(claimer)
    assert task is not None and task.execution_id == created.execution_id
    task.complete()


def test_submit_with_a_delay_in_the_past_is_eligible_now(ff_engine, claimer):
    created = ff_engine.submit(LANE, b"late", delay_until=ff_engine.server_time_ms() - 5000)
    assert created.public_state == "waiting"
    task = claim_now(claimer)
    assert task is not None and task.execution_id == created.execution_id
    task.complete()


# -- priority ---------------------------------------------------------------------------------


def submit_in_order(engine: Engine, priorities: list[float]) -> list[ExecutionId]:
    """Submit one execution per priority, each in a later engine millisecond (FIFO ties)."""
    ids = []
    for priority in priorities:
        eid = engine.submit(LANE, b"", priority=priority).execution_id
        ids.append(eid)
        created_at = int(engine.read_core(eid, "created_at")["created_at"])
        while engine.server_time_ms() <= created_at:
            time.sleep(0.001)
    return ids


def claim_order(claimer: Claimer, count: int) -> list[ExecutionId]:
    order = []
    for _ in range(count):
        task = claim_now(claimer)
        assert task is not None
        order.append(task.execution_id)
        task.complete()
    assert claim_now(claimer) is None
    return order


def test_higher_priority_is_claimed_first_and_equal_priorities_in_submission_order(ff_engine, claimer):
    low, high, mid_first, mid_second, mid_third = submit_in_order(ff_engine, [1, 9, 5, 5, 5])

    assert claim_order(claimer, 5) == [high, mid_first, mid_second, mid_third, low]


def test_priorities_are_clamped_to_the_range_0_to_9000(ff_engine, claimer):
    below, zero, top, above = submit_in_order(ff_engine, [-5, 0, 9000, 20_000])

    assert ff_engine.read_core(below, "priority") == {"priority": "0"}
    assert ff_engine.read_core(above, "priority") == {"priority": "9000"}
    # clamped values tie with the in-range ones, so submission order decides
    assert claim_order(claimer, 4) == [top, above, below, zero]


def test_change_priority_reorders_waiting_work_and_clamps(ff_engine, claimer):
    first, second = submit_in_order(ff_engine, [1, 1])

    assert ff_engine.change_priority(second, 12_345) == (1.0, 9000.0)

    assert ff_engine.read_core(second, "priority") == {"priority": "9000"}
    assert claim_order(claimer, 2) == [second, first]


# -- idempotency-key dedup ----------------------------------------------------------------------


def test_same_idempotency_key_returns_the_first_execution_as_a_duplicate(ff_engine):
    first = ff_engine.submit(LANE, b"original", idempotency_key="order-17")
    again = ff_engine.submit(LANE, b"changed", idempotency_key="order-17")

    assert first.duplicate is False and first.public_state == "waiting"
    assert again.duplicate is True
    assert again.execution_id == first.execution_id
    assert again.public_state is None
    partition = PartitionKeys(first.execution_id.partition)
    assert ff_engine.redis.smembers(partition.all_executions) == {first.execution_id.encode()}
    assert ff_engine.lane_counts(LANE)["eligible"] == 1
    assert ff_engine.payload(first.execution_id) == b"original"
    idem = partition.idempotency(ff_engine.namespace, "order-17")
    assert ff_engine.redis.get(idem) == first.execution_id.encode()
    assert ff_engine.redis.pttl(idem) == -1  # as long as the execution: retention deletes it with it


def test_a_different_idempotency_key_creates_another_execution(ff_engine):
    first = ff_engine.submit(LANE, b"a", idempotency_key="order-17")
    other = ff_engine.submit(LANE, b"b", idempotency_key="order-18")
    plain = ff_engine.submit(LANE, b"c")

    assert other.duplicate is False and plain.duplicate is False
    assert len({first.execution_id, other.execution_id, plain.execution_id}) == 3
    assert ff_engine.lane_counts(LANE)["eligible"] == 3


def test_idempotency_key_still_dedups_after_the_first_execution_finished(ff_engine, claimer):
    first = ff_engine.submit(LANE, b"a", idempotency_key="once")
    task = claim_now(claimer)
    assert task is not None
    task.complete(b"done")

    again = ff_engine.submit(LANE, b"a", idempotency_key="once")

    assert again.duplicate is True and again.execution_id == first.execution_id
    assert ff_engine.result(first.execution_id) == b"done"
    assert claim_now(claimer) is None


def test_alias_of_a_duplicate_submit_resolves_to_the_execution_the_submit_returned(ff_engine):
    first = ff_engine.submit(LANE, b"a", idempotency_key="order-17", alias="celery-task-a")
    again = ff_engine.submit(LANE, b"a", idempotency_key="order-17", alias="celery-task-b")

    assert again.duplicate is True
    assert ff_engine.resolve("celery-task-a") == first.execution_id
    assert ff_engine.resolve("celery-task-b") == again.execution_id == first.execution_id


def test_reading_by_alias_follows_an_alias_repointed_by_another_process(ff_engine):
    first = ff_engine.submit(LANE, b"a", alias="celery-task-r")  # this process remembers first
    other = ff_engine.fork()  # another process's engine replaces the task
    replacement = other.submit(LANE, b"b", alias="celery-task-r", alias_replaces=True)

    read = ff_engine.read_aliased("celery-task-r", ("public_state",))

    assert replacement.execution_id != first.execution_id
    assert read.execution_id == replacement.execution_id
    assert read.core == {"public_state": "waiting"}


def test_reading_an_unknown_alias_finds_no_execution_and_still_reads_the_extra_keys(ff_engine):
    ff_engine.redis.set("app:meta:unknown", b"stored")

    read = ff_engine.read_aliased("never-submitted", ("public_state",), also_get=["app:meta:unknown"])

    assert (read.execution_id, read.core, read.result, read.extras) == (None, {}, None, [b"stored"])


# -- tags ---------------------------------------------------------------------------------------


def test_tags_given_at_submit_are_stored(ff_engine):
    eid = ff_engine.submit(LANE, b"", tags={"app.owner": "alice", "app.team": "billing"}).execution_id
    assert ff_engine.snapshot(eid).tags == {"app.owner": "alice", "app.team": "billing"}


def test_set_tags_adds_namespaced_tags_and_overwrites_existing_values(ff_engine):
    eid = ff_engine.submit(LANE, b"", tags={"app.owner": "alice"}).execution_id

    assert ff_engine.set_tags(eid, {"celery.task": "tasks.add", "app.owner": "bob"}) == 2

    assert ff_engine.snapshot(eid).tags == {"app.owner": "bob", "celery.task": "tasks.add"}


def test_set_tags_with_an_invalid_key_is_rejected_and_keeps_the_tags(ff_engine):
    eid = ff_engine.submit(LANE, b"", tags={"app.owner": "alice"}).execution_id

    with pytest.raises(ValidationError) as raised:
        ff_engine.set_tags(eid, {"Owner": "bob"})

    assert raised.value.code == "invalid_tag_key"
    assert raised.value.details == ["Owner"]
    assert ff_engine.snapshot(eid).tags == {"app.owner": "alice"}


def test_claimed_task_sees_the_tags(ff_engine, claimer):
    ff_engine.submit(LANE, b"", tags={"app.owner": "alice"})
    task = claim_now(claimer)
    assert task is not None
    assert task.tags == {"app.owner": "alice"}
    task.complete()


# -- execution deadlines and attempt timeouts ------------------------------------------------------


def test_execution_past_its_deadline_is_expired_by_the_deadline_scanner(ff_engine, claimer, scanners):
    deadline = ff_engine.server_time_ms() + 150
    eid = ff_engine.submit(LANE, b"", execution_deadline_at=deadline).execution_id
    deadline_index = PartitionKeys(eid.partition).execution_deadline
    assert ff_engine.redis.zscore(deadline_index, eid) == deadline

    with engine_time(ff_engine, deadline - 1):  # a millisecond early, however late we got here
        assert scanners.expire_due("execution_deadline") == 0
    assert state(ff_engine, eid)["public_state"] == "waiting"

    sleep_until(ff_engine, deadline)
    assert scanners.expire_due("execution_deadline") == 1

    core = state(ff_engine, eid)
    assert core["lifecycle_phase"] == "terminal"
    assert core["terminal_outcome"] == "expired"
    assert core["public_state"] == "expired"
    assert core["failure_reason"] == "execution_deadline"
    assert ff_engine.redis.zscore(deadline_index, eid) is None
    assert ff_engine.lane_counts(LANE) == {"eligible": 0, "delayed": 0, "active": 0, "suspended": 0, "terminal": 1}
    assert claim_now(claimer) is None
    assert scanners.expire_due("execution_deadline") == 0


def test_running_execution_past_its_deadline_is_expired_and_loses_its_lease(ff_engine, claimer, scanners):
    deadline = ff_engine.server_time_ms() + 150
    eid = ff_engine.submit(LANE, b"", execution_deadline_at=deadline).execution_id
    task = claim_now(claimer)
    assert task is not None

    sleep_until(ff_engine, deadline)
    assert scanners.expire_due("execution_deadline") == 1

    snapshot = ff_engine.snapshot(eid)
    assert (snapshot.terminal_outcome, snapshot.core["failure_reason"]) == ("expired", "execution_deadline")
    assert snapshot.lease == {}
    assert snapshot.attempts[0].attempt_state == "ended_failure"
    with pytest.raises(ExecutionNotActiveError) as raised:
        task.complete()
    assert raised.value.terminal_outcome == "expired"


def test_a_worker_attempt_timeout_expires_a_claimed_execution_after_the_timeout(ff_engine, scanners):
    # As in FlowFabric, the attempt timeout is set by the claiming worker, not read from the policy.
    eid = ff_engine.submit(LANE, b"").execution_id
    timed = Claimer(ff_engine, [LANE], worker_id="worker-t", attempt_timeout_ms=200)
    before_claim = ff_engine.server_time_ms()
    task = claim_now(timed)
    after_claim = ff_engine.server_time_ms()
    timed.close()
    assert task is not None and task.execution_id == eid
    timeout_index = PartitionKeys(eid.partition).attempt_timeout
    timeout_at = ff_engine.redis.zscore(timeout_index, eid)
    assert timeout_at is not None
    assert before_claim + 200 <= timeout_at <= after_claim + 200

    with engine_time(ff_engine, timeout_at - 1):  # a millisecond early, however late we got here
        assert scanners.expire_due("attempt_timeout") == 0
    assert state(ff_engine, eid)["public_state"] == "active"

    sleep_until(ff_engine, timeout_at)
    assert scanners.expire_due("attempt_timeout") == 1

    snapshot = ff_engine.snapshot(eid)
    assert snapshot.lifecycle_phase == "terminal"
    assert snapshot.terminal_outcome == "expired"
    assert snapshot.public_state == "expired"
    assert snapshot.core["failure_reason"] == "attempt_timeout"
    assert snapshot.attempts[0].attempt_state == "ended_failure"
    assert snapshot.attempts[0].fields["failure_reason"] == "attempt_timeout"
    assert ff_engine.redis.zscore(timeout_index, eid) is None
    assert ff_engine.lane_counts(LANE)["active"] == 0
    with pytest.raises(ExecutionNotActiveError):
        task.complete()


def test_finishing_before_the_attempt_timeout_clears_it(ff_engine, claimer, scanners):
    policy = ExecutionPolicy(timeout_policy=TimeoutPolicy(attempt_timeout_ms=100))
    eid = ff_engine.submit(LANE, b"", policy=policy).execution_id
    task = claim_now(claimer)
    assert task is not None
    task.complete(b"ok")

    assert ff_engine.redis.zscore(PartitionKeys(eid.partition).attempt_timeout, eid) is None
    sleep_until(ff_engine, ff_engine.server_time_ms() + 110)
    assert scanners.expire_due("attempt_timeout") == 0
    assert ff_engine.snapshot(eid).public_state == "completed"


def test_without_a_timeout_policy_no_attempt_timeout_is_indexed(ff_engine, claimer):
    eid = ff_engine.submit(LANE, b"").execution_id
    task = claim_now(claimer)
    assert task is not None
    assert ff_engine.redis.zscore(PartitionKeys(eid.partition).attempt_timeout, eid) is None
    task.complete()
