"""Engine duties: leader-elected scanners that promote delayed work, requeue lapsed leases and
expire timed-out executions, with their intervals as settings."""

import threading

import pytest
from conftest import engine_time, wait_for

from ff_celery.engine.core.keys import SCANNER_LEADER_KEY, ExecKeys, PartitionKeys
from ff_celery.engine.core.policy import ExecutionPolicy
from ff_celery.engine.duties.scanners import EngineScanners, Scanner, ScannerSettings
from ff_celery.engine.work.claimer import Claimer

FAST = ScannerSettings(
    promote_interval_s=0.1,
    lease_expiry_interval_s=0.1,
    attempt_timeout_interval_s=0.1,
    deadline_interval_s=0.1,
    leader_ttl_s=0.6,
)
#: A leader whose thread is held up longer than 2/3 of the TTL (a scanner cycle over every
#: partition on a loaded machine) loses the lock while it still thinks it leads.
LEADERSHIP = FAST.model_copy(update={"leader_ttl_s": 3.0})


@pytest.fixture
def claimer(make_claimer) -> Claimer:
    return make_claimer(worker_id="w", lease_ttl_ms=300)


def leadership_attempts(scanners: EngineScanners, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The outcome of each leadership attempt ``scanners`` makes from now on, in order."""
    outcomes: list[bool] = []
    hold = scanners._hold_leadership

    def recorded() -> bool:
        outcomes.append(hold())
        return outcomes[-1]

    monkeypatch.setattr(scanners, "_hold_leadership", recorded)
    return outcomes


def test_only_one_instance_leads_and_another_takes_over_when_it_stops(ff_engine, monkeypatch):
    first = EngineScanners(ff_engine.fork(), settings=LEADERSHIP)
    second = EngineScanners(ff_engine.fork(), settings=LEADERSHIP)
    attempts = [leadership_attempts(scanners, monkeypatch) for scanners in (first, second)]
    first.start()
    second.start()
    try:
        # each has tried twice: its first outcome is in is_leader, and both tried while the lock was held
        assert wait_for(lambda: all(len(outcomes) >= 2 for outcomes in attempts))
        assert first.is_leader != second.is_leader
        leader, follower = (first, second) if first.is_leader else (second, first)
        assert ff_engine.redis.get(SCANNER_LEADER_KEY).decode() == leader.instance_id
        leader.stop()
        assert wait_for(lambda: follower.is_leader)
    finally:
        first.stop()
        second.stop()


def test_stopping_waits_for_the_running_scanner_only_not_the_rest_of_its_cycle(ff_engine):
    scanners = EngineScanners(ff_engine.fork(), settings=LEADERSHIP)
    running, release, ran = threading.Event(), threading.Event(), []

    def slow() -> int:
        running.set()
        release.wait(30)
        return 0

    def following() -> int:
        ran.append("following")
        return 0

    scanners.scanners = [Scanner("slow", 60.0, slow), Scanner("following", 60.0, following)]
    scanners.start()
    assert running.wait(15)  # the first scanner of a cycle is running
    stopping = threading.Thread(target=scanners.stop)
    stopping.start()
    assert wait_for(lambda: scanners.stopping)
    release.set()
    stopping.join(15)
    assert not stopping.is_alive() and ran == []  # the rest of the cycle was left for the next leader


def test_a_scanner_busy_past_the_stop_timeout_is_left_to_finish_and_named(ff_engine, caplog):
    scanners = EngineScanners(ff_engine.fork(), settings=LEADERSHIP)
    running, release = threading.Event(), threading.Event()

    def stuck() -> int:
        running.set()
        release.wait(30)
        return 0

    scanners.scanners = [Scanner("stuck", 60.0, stuck)]
    scanners.start()
    try:
        assert running.wait(15)
        scanners.stop(timeout_s=0.2)  # returns while the scanner still runs
        assert not release.is_set() and "last scanner: stuck" in caplog.text
    finally:
        release.set()


def test_the_promoter_makes_due_delayed_work_claimable(ff_engine, claimer):
    # more than DELAY_SAFETY_MS (1 s) ahead when submit reads the clock, or it is eligible at once
    due = ff_engine.server_time_ms() + 2_000
    created = ff_engine.submit("default", b"x", delay_until=due)
    assert created.public_state == "delayed"
    eid = created.execution_id
    scanners = EngineScanners(ff_engine, settings=FAST).start()
    try:
        early = claimer.claim(1)
        if ff_engine.server_time_ms() < due:  # asked before it was due (a loaded machine may be later)
            assert early == []
        task = early[0] if early else claimer.claim_one(timeout_s=15)
        assert task is not None and task.execution_id == eid
        task.complete()
    finally:
        scanners.stop()


def test_the_promoter_serves_lanes_from_the_lane_registry(ff_engine):
    due = ff_engine.server_time_ms() + 60_000
    eid = ff_engine.submit("reports", b"x", delay_until=due).execution_id
    scanners = EngineScanners(ff_engine)
    assert scanners.promote_delayed() == 0
    with engine_time(ff_engine, due):
        assert scanners.promote_delayed() == 1
    assert ff_engine.read_core(eid, "public_state") == {"public_state": "waiting"}


def test_a_lapsed_lease_is_requeued_and_runs_again_elsewhere(ff_engine, claimer):
    eid = ff_engine.submit("default", b"x").execution_id
    crashed = claimer.claim_one(timeout_s=10)
    crashed.release()  # the worker died: nobody renews
    # polled: a renewal the renewer had already sent when release() returned can still land
    scanners = EngineScanners(ff_engine)
    assert wait_for(lambda: scanners.expire_leases() == 1)

    other = Claimer(ff_engine, ["default"], worker_id="survivor")
    try:
        rerun = other.claim_one(timeout_s=10)
        assert rerun.execution_id == eid
        assert rerun.attempt_index == crashed.attempt_index + 1
        assert rerun.lease_epoch > crashed.lease_epoch
        rerun.complete(b"ok")
    finally:
        other.close()
    snapshot = ff_engine.snapshot(eid)
    assert snapshot.public_state == "completed"
    assert snapshot.core["lease_reclaim_count"] == "1"
    assert [a.attempt_type for a in snapshot.attempts] == ["initial", "reclaim"]
    assert snapshot.attempts[0].attempt_state == "interrupted_reclaimed"
    events = [f[b"event"].decode() for _, f in ff_engine.redis.xrange(ExecKeys(eid).lease_history)]
    assert events == ["acquired", "expired", "reclaimed", "released", "acquired", "released"]


def test_repeated_crashes_end_in_failure_at_the_reclaim_cap(ff_engine, claimer):
    eid = ff_engine.submit("default", b"poison", policy=ExecutionPolicy(max_reclaim_count=1)).execution_id
    scanners = EngineScanners(ff_engine)

    def handled() -> bool:
        """The lapsed lease was requeued (1), or failed the execution at the cap."""
        requeued = scanners.expire_leases()
        return requeued == 1 or ff_engine.read_core(eid, "public_state")["public_state"] == "failed"

    for _ in range(2):
        claimer.claim_one(timeout_s=10).release()
        assert wait_for(handled)  # polled: the lease lapses 300 ms after its last renewal
    core = ff_engine.read_core(eid, "public_state", "failure_reason")
    assert core == {"public_state": "failed", "failure_reason": "max_reclaims_exceeded"}


def test_the_background_thread_expires_executions_past_their_deadline(ff_engine):
    eid = ff_engine.submit("default", b"x", execution_deadline_at=ff_engine.server_time_ms() + 300).execution_id
    scanners = EngineScanners(ff_engine, settings=FAST).start()
    try:
        assert wait_for(lambda: ff_engine.read_core(eid, "public_state")["public_state"] == "expired")
    finally:
        scanners.stop()
    assert ff_engine.read_core(eid, "failure_reason") == {"failure_reason": "execution_deadline"}


def test_intervals_are_settings(ff_engine):
    settings = ScannerSettings(promote_interval_s=3.5, lease_expiry_interval_s=4.5)
    intervals = {s.name: s.interval_s for s in EngineScanners(ff_engine, settings=settings).scanners}
    assert intervals["delayed_promoter"] == 3.5 and intervals["lease_expiry"] == 4.5


def test_malformed_index_members_are_skipped_and_never_stall_a_lane_or_a_scan(ff_engine, claimer, caplog):
    partition = ff_engine.partitions.lane_partition("default")
    index = PartitionKeys(partition)
    junk = [b"not-an-id", b"\xff\xfe", b"{fp:1}:NOT-A-UUID"]
    for member in junk:  # ahead of everything real: lowest scores
        ff_engine.redis.zadd(index.eligible("default"), {member: -(10**15)})
        ff_engine.redis.zadd(index.delayed("default"), {member: 0})
        ff_engine.redis.zadd(index.lease_expiry, {member: 0})
    due = ff_engine.server_time_ms() - 1
    delayed = ff_engine.submit("default", b"later", delay_until=ff_engine.server_time_ms() + 60_000)
    waiting = ff_engine.submit("default", b"now")
    task = claimer.claim_one(timeout_s=10)
    assert task is not None and task.execution_id == waiting.execution_id  # the lane is not stalled
    task.complete()
    scanners = EngineScanners(ff_engine, settings=FAST)
    with engine_time(ff_engine, due + 120_000):
        assert scanners.promote_delayed() == 1  # the real one, past the junk
        scanners.expire_leases()
    assert claimer.claim_one(timeout_s=10).execution_id == delayed.execution_id
    assert "not an execution id" in caplog.text


def test_lanes_without_any_execution_leave_the_lane_registry_and_come_back_with_work(ff_engine):
    ff_engine.submit("busy", b"waiting")
    ff_engine.submit("later", b"delayed", delay_until=ff_engine.server_time_ms() + 60_000)
    ff_engine.register_lane("idle")
    ff_engine.register_lane("configured")
    scanners = EngineScanners(ff_engine, settings=FAST, lanes=["configured"])
    assert scanners.forget_idle_lanes() == 1
    assert ff_engine.lanes() == {"busy", "later", "configured"}
    ff_engine.submit("idle", b"work again")  # publishing puts its lane back
    assert "idle" in ff_engine.lanes()
    assert scanners.forget_idle_lanes() == 0
