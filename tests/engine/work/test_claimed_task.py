"""The claimed-execution handle, with real time: lease renewal, expiry, reclaim with a higher
epoch, fencing of the stale holder, and replay-safe terminal operations."""

import gc
import logging
import os
import signal
from collections.abc import Callable

import pytest
from conftest import wait_for
from prometheus_client import REGISTRY

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import ExecutionNotActiveError, StateError
from ff_celery.engine.core.policy import ExecutionPolicy, FixedBackoff, RetryPolicy
from ff_celery.engine.work.claimer import Claimer
from ff_celery.engine.work.renewal import LeaseRenewer


@pytest.fixture
def claimer(make_claimer) -> Callable[[int], Claimer]:
    """A claimer on ``default`` (worker ``worker-a``) for a lease TTL."""
    return lambda ttl_ms=30_000: make_claimer(worker_id="worker-a", lease_ttl_ms=ttl_ms)


def claim(engine, claimer, ttl_ms=30_000, **submit):
    eid = engine.submit("default", b"payload", **submit).execution_id
    task = claimer(ttl_ms).claim_one(timeout_s=10)
    assert task is not None and task.execution_id == eid
    return task


def mark_expired(engine, execution_id) -> str:
    """What ``ff_mark_lease_expired_if_due`` answers now."""
    return engine.call(fn.MarkLeaseExpiredIfDue(execution_id=execution_id)).reason


def test_a_renewed_lease_outlives_its_ttl(ff_engine, claimer):
    task = claim(ff_engine, claimer, ttl_ms=1200)  # renewed every 400 ms
    first_expiry = task.lease_expires_at
    # half a TTL past the first expiry, by engine time: only renewals kept the lease alive
    assert wait_for(lambda: ff_engine.server_time_ms() > first_expiry + 600)
    assert task.lease_expires_at > first_expiry
    assert task.is_lease_healthy() and task.consecutive_renewal_failures == 0
    assert mark_expired(ff_engine, task.execution_id) == "not_yet_expired"
    task.complete(b"done")
    assert ff_engine.snapshot(task.execution_id).public_state == "completed"


def test_a_lease_that_stops_being_renewed_expires_and_is_reclaimed_with_the_next_epoch(ff_engine, claimer):
    task = claim(ff_engine, claimer, ttl_ms=300)
    task.release()  # the worker stalls: no more renewals
    # polled: a renewal the renewer had already sent when release() returned can still land
    assert wait_for(lambda: mark_expired(ff_engine, task.execution_id) == "marked_expired")
    assert ff_engine.read_core(task.execution_id, "ownership_state") == {"ownership_state": "lease_expired_reclaimable"}

    other = {"worker_id": "worker-b", "worker_instance_id": "instance-b", "lane_id": "default"}
    ff_engine.call(fn.IssueReclaimGrant(execution_id=task.execution_id, **other))
    lease = ff_engine.call(
        fn.ReclaimExecution(
            execution_id=task.execution_id,
            **other,
            lease_id="lease-b",
            lease_ttl_ms=30_000,
            attempt_id="attempt-b",
            current_attempt_index=task.attempt_index,
        )
    )
    assert lease.lease_epoch == task.lease_epoch + 1
    assert (lease.attempt_index, lease.attempt_type) == (task.attempt_index + 1, "reclaim")

    fenced = {"operation": "ff_complete_execution", "code": "stale_lease"}
    fenced_before = REGISTRY.get_sample_value("ff_fenced_writes_total", fenced) or 0
    with pytest.raises(StateError) as stale:
        task.complete(b"late result from the stalled worker")
    assert stale.value.code == "stale_lease"
    assert ff_engine.result(task.execution_id) is None
    assert REGISTRY.get_sample_value("ff_fenced_writes_total", fenced) == fenced_before + 1


def test_a_stale_fence_is_refused_with_stale_lease(ff_engine, claimer):
    task = claim(ff_engine, claimer)
    wrong_epoch = fn.Fence(lease_id=task.lease.lease_id, lease_epoch=task.lease_epoch + 1, attempt_id=task.attempt_id)
    with pytest.raises(StateError, match="stale_lease"):
        ff_engine.call(fn.CompleteExecution(**{**task._holder(), "fence": wrong_epoch}))
    task.complete()


def test_renewal_stops_and_reports_a_lost_lease_when_it_is_revoked(ff_engine, claimer):
    task = claim(ff_engine, claimer, ttl_ms=600)
    lost = []
    task.on_lease_lost = lambda handle, error: lost.append(error.code)
    ff_engine.revoke_lease(task.execution_id, reason="operator test")
    assert wait_for(lambda: lost)
    assert lost == ["lease_revoked"]
    assert not task.is_lease_healthy()
    assert task.lease_lost is not None and task.lease_lost.code == "lease_revoked"


@pytest.mark.parametrize(
    "own_outcome",
    [
        fn.CompleteExecution,
        lambda **holder: fn.FailExecution(**holder, failure_reason="boom", failure_category="transient",
                                          retry_policy_json=RetryPolicy(max_retries=3).model_dump_json()),
    ],
    ids=["completed", "retry-scheduled"],
)  # fmt: skip
def test_a_renewal_that_finds_the_attempts_own_outcome_ends_the_handle_without_a_lost_lease(
    ff_engine, claimer, caplog, own_outcome
):
    task = claim(ff_engine, claimer)
    eid, lost = str(task.execution_id), []
    task.on_lease_lost = lambda handle, error: lost.append(error.code)
    ff_engine.call(own_outcome(**task._holder()))  # the outcome, recorded by the process that ran it
    with caplog.at_level(logging.WARNING, logger="ff_celery.engine.work.claimed_task"):
        task._renewer.renew([task])  # a renewal sent before the holder heard of it
        assert task.finished and task.lease_lost is None and not lost
        assert task._renewer.tracked == 0
        del task
        gc.collect()
    assert not [record for record in caplog.records if eid in record.getMessage()]


def test_consecutive_renewal_failures_make_the_lease_unhealthy_then_lost():
    with DevServer() as server:
        engine = Engine.from_url(server.url, socket_timeout=0.25, socket_connect_timeout=0.25)
        engine.bootstrap()
        engine.submit("default", b"x")
        claimer = Claimer(engine, ["default"], worker_id="w", lease_ttl_ms=600)
        try:
            task = claimer.claim_one(timeout_s=10)
            os.kill(server.pid, signal.SIGSTOP)  # the server stalls: renewals time out
            try:
                # each attempt takes its 0.25 s socket timeout, the next follows ttl/3 later
                assert wait_for(lambda: task.consecutive_renewal_failures >= 3, timeout=30)
                assert not task.is_lease_healthy()
                assert task.lease_lost is None  # transient failures never end renewal by themselves
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert wait_for(lambda: task.lease_lost is not None)
            assert task.lease_lost.code == "lease_expired"
        finally:
            claimer.close()
            engine.close()


def test_complete_replayed_after_a_lost_reply_succeeds(ff_engine, claimer):
    task = claim(ff_engine, claimer)
    ff_engine.call(fn.CompleteExecution(**task._holder(), result_payload=b"first"))  # reply "lost"
    task.complete(b"first")
    assert task.finished
    assert ff_engine.result(task.execution_id) == b"first"


def test_fail_replayed_after_a_lost_reply_reports_what_was_committed(ff_engine, claimer):
    retrying = claim(ff_engine, claimer, policy=ExecutionPolicy(retry_policy=RetryPolicy(max_retries=1)))
    ff_engine.call(
        fn.FailExecution(
            **retrying._holder(), failure_reason="x", retry_policy_json=retrying.policy.retry_policy_json()
        )
    )
    assert retrying.fail("x") == fn.FailOutcome(retry_scheduled=True, delay_until=None)

    terminal = claim(ff_engine, claimer)
    ff_engine.call(fn.FailExecution(**terminal._holder(), failure_reason="x"))
    assert terminal.fail("x") == fn.FailOutcome(retry_scheduled=False)


def test_cancel_and_delay_replayed_after_a_lost_reply_succeed(ff_engine, claimer):
    cancelled = claim(ff_engine, claimer)
    cancelled.cancel("first")
    cancelled.cancel("again")
    assert ff_engine.snapshot(cancelled.execution_id).public_state == "cancelled"

    delayed = claim(ff_engine, claimer)
    until = ff_engine.server_time_ms() + 60_000
    ff_engine.call(fn.DelayExecution(**delayed._holder(), delay_until=until))
    delayed.delay(until)
    assert ff_engine.snapshot(delayed.execution_id).public_state == "delayed"


def test_a_replay_after_a_different_outcome_raced_in_is_not_reconciled(ff_engine, claimer):
    task = claim(ff_engine, claimer)
    ff_engine.cancel(task.execution_id, "operator stop")
    with pytest.raises(ExecutionNotActiveError) as raised:
        task.complete(b"too late")
    assert raised.value.terminal_outcome == "cancelled"


def test_failure_with_the_stored_retry_policy_schedules_the_next_attempt(ff_engine, claimer):
    policy = ExecutionPolicy(retry_policy=RetryPolicy(max_retries=2, backoff=FixedBackoff(delay_ms=50)))
    task = claim(ff_engine, claimer, policy=policy)
    outcome = task.fail("boom", "transient")
    assert outcome.retry_scheduled and outcome.delay_until is not None
    assert ff_engine.snapshot(task.execution_id).core["retry_count"] == "1"


def test_an_abandoned_handle_logs_a_warning_and_its_lease_expires(ff_engine, claimer, caplog):
    made = claimer(300)
    eid = ff_engine.submit("default", b"x").execution_id
    task = made.claim_one(timeout_s=10)
    assert made.renewer.tracked == 1
    with caplog.at_level(logging.WARNING, logger="ff_celery.engine.work.claimed_task"):
        del task
        gc.collect()
    assert "dropped without a terminal operation" in caplog.text
    assert made.renewer.tracked == 0
    # polled: a renewal the renewer had already sent when the handle was dropped can still land
    assert wait_for(lambda: mark_expired(ff_engine, eid) == "marked_expired")


def test_the_renewer_survives_errors_it_does_not_expect_and_counts_them():
    with DevServer() as primary, DevServer() as empty, DevServer() as replica:
        engine = Engine.from_url(primary.url)
        engine.bootstrap()
        replica_engine = Engine.from_url(replica.url)
        replica_engine.redis.execute_command("REPLICAOF", "127.0.0.1", empty.port)
        assert wait_for(lambda: replica_engine.redis.info("replication")["master_link_status"] == "up", timeout=30)
        # renewals sent to a read-only replica without the library (a failover gone wrong): the
        # engine's reload of the library is refused there, an error no renewal expects
        renewer = LeaseRenewer(replica_engine)
        engine.submit("default", b"x")
        claimer = Claimer(engine, ["default"], worker_id="w", lease_ttl_ms=900, renewer=renewer)
        try:
            task = claimer.claim_one(timeout_s=10)
            assert wait_for(lambda: task.consecutive_renewal_failures >= 3, timeout=30)
            assert not task.is_lease_healthy() and task.lease_lost is None
            assert renewer._thread is not None and renewer._thread.is_alive()
        finally:
            claimer.close()
            renewer.stop()
            engine.close()


def test_a_lease_whose_renewals_stopped_happening_is_unhealthy_whatever_the_thread_does(ff_engine):
    renewer = LeaseRenewer(ff_engine.fork())
    ff_engine.submit("default", b"x")
    claimer = Claimer(ff_engine, ["default"], worker_id="w", lease_ttl_ms=900, renewer=renewer)
    try:
        task = claimer.claim_one(timeout_s=10)
        assert wait_for(lambda: task.is_lease_healthy() and renewer.tracked == 1)
        renewer.stop()  # the thread is gone without a single failed renewal to count
        assert wait_for(lambda: not task.is_lease_healthy(), timeout=30)
        assert task.consecutive_renewal_failures == 0
    finally:
        claimer.close()


class RecordingRenewer(LeaseRenewer):
    """A renewer that remembers which leases each of its round trips renewed."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.round_trips: list[set[str]] = []

    def renew(self, tasks: list) -> None:
        self.round_trips.append({str(task.execution_id) for task in tasks})
        super().renew(tasks)


def test_leases_claimed_apart_are_renewed_together_in_one_round_trip(ff_engine):
    """A lease past half its interval rides along with the one due: the second lease, claimed
    half a second after the first (interval 3 s), is renewed in the first one's round trip."""
    renewer = RecordingRenewer(ff_engine.fork())
    first, second = (ff_engine.submit("default", b"x").execution_id for _ in range(2))
    claimer = Claimer(ff_engine, ["default"], worker_id="w", lease_ttl_ms=9000, renewer=renewer)
    try:
        (one,) = claimer.claim(1, timeout_s=10)
        claimed_at = ff_engine.now_ms()
        assert wait_for(lambda: ff_engine.now_ms() >= claimed_at + 500)
        (two,) = claimer.claim(1, timeout_s=10)
        assert {str(one.execution_id), str(two.execution_id)} == {first, second}
        assert wait_for(lambda: renewer.round_trips, timeout=30)
        assert renewer.round_trips[0] == {first, second}
        one.complete(b"")
        two.complete(b"")
    finally:
        claimer.close()
        renewer.stop()
