"""Finding work: claiming up to a limit, home-partition probes and the flow-partition rotation,
waking on new work without polling, resumed claims, capabilities and concurrent claimers."""

import threading
import time

from conftest import command_calls, subscribers, wait_for

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import wake_channel
from ff_celery.engine.core.notices import Listener
from ff_celery.engine.core.policy import ExecutionPolicy, RoutingRequirements
from ff_celery.engine.duties.scanners import EngineScanners


def test_claims_up_to_the_requested_number_and_leaves_the_rest_eligible(ff_engine, make_claimer):
    for n in range(5):
        ff_engine.submit("default", str(n).encode())
    tasks = make_claimer().claim(max_tasks=3)
    assert len(tasks) == 3
    assert ff_engine.lane_counts("default")["eligible"] == 2
    for task in tasks:
        task.complete()


def test_returns_nothing_after_the_timeout_when_no_work_is_eligible(make_claimer):
    started = time.monotonic()
    assert make_claimer(poll_interval_s=0.1).claim(max_tasks=1, timeout_s=0.3) == []
    assert time.monotonic() - started >= 0.3


def test_solo_executions_are_probed_on_the_lanes_home_partition(ff_engine, make_claimer):
    eid = ff_engine.submit("hot", b"x").execution_id
    assert eid.partition == 205
    task = make_claimer(lanes=("hot",)).claim_one(timeout_s=10)
    assert task.execution_id == eid and task.lane_id == "hot"
    task.complete()


def test_executions_on_other_partitions_are_found_by_the_rotation(ff_engine, make_claimer):
    # A flow member of lane "default" lives on its flow's partition, not on 86.
    member = ExecutionId.mint(3)
    ff_engine.submit("default", b"member", execution_id=member)
    claimer = make_claimer(flow_scan_interval_s=0.0)
    found = None
    for _ in range(8):  # 256 partitions / 32 per scan
        found = claimer.claim_one()
        if found:
            break
    assert found is not None and found.execution_id == member
    found.complete()


def test_a_waiting_claimer_wakes_when_work_is_submitted_instead_of_polling(ff_engine, make_claimer, monkeypatch):
    # Unwoken, the claim would look again only when its 60 s timeout ends (the poll interval is
    # longer still), so taking less than half of that is proof of the wake-up without betting
    # on how fast a loaded machine is.
    claimer = make_claimer(poll_interval_s=120.0)
    claimer.listen()
    assert wait_for(lambda: subscribers(ff_engine.redis, wake_channel("default")) >= 1)  # subscribed
    waiting, wait = threading.Event(), claimer.wait

    def noted_wait(timeout_s: float) -> bool:
        waiting.set()
        return wait(timeout_s)

    monkeypatch.setattr(claimer, "wait", noted_wait)
    results = []
    waiter = threading.Thread(target=lambda: results.append((claimer.claim(1, timeout_s=60), time.monotonic())))
    waiter.start()
    assert waiting.wait(timeout=30)  # its probe found nothing: it waits for a wake-up
    submitted_at = time.monotonic()
    ff_engine.submit("default", b"wake up")
    waiter.join(timeout=90)
    tasks, claimed_at = results[0]
    assert len(tasks) == 1
    assert claimed_at - submitted_at < 30  # woken by the notification
    tasks[0].complete()


def test_a_wake_up_naming_the_submitted_execution_is_claimed_without_probing(ff_engine, make_claimer, monkeypatch):
    monkeypatch.setattr("ff_celery.engine.work.claimer.CANDIDATE_TTL_S", 600.0)  # the last probe stays recent
    claimer = make_claimer()
    claimer.listen()
    assert wait_for(lambda: subscribers(ff_engine.redis, wake_channel("default")) >= 1)
    assert claimer.try_claim() == []  # probed: nothing yet
    submitted = ff_engine.submit("default", b"named").execution_id

    assert wait_for(lambda: claimer.wait(1))
    before = command_calls(ff_engine.redis, "zrangebyscore")
    tasks = claimer.try_claim()

    assert [task.execution_id for task in tasks] == [submitted]
    assert command_calls(ff_engine.redis, "zrangebyscore") == before
    tasks[0].complete()


def test_a_wake_up_naming_an_execution_that_is_not_eligible_costs_one_claim_attempt(
    ff_engine, make_claimer, monkeypatch
):
    monkeypatch.setattr("ff_celery.engine.work.claimer.CANDIDATE_TTL_S", 600.0)
    claimer = make_claimer()
    claimer.listen()
    assert wait_for(lambda: subscribers(ff_engine.redis, wake_channel("default")) >= 1)
    assert claimer.try_claim() == []
    ff_engine.notify(wake_channel("default"), ExecutionId.mint(0))  # names nothing on the lane
    submitted = ff_engine.submit("default", b"real").execution_id

    assert wait_for(lambda: claimer.wait(1))
    assert claimer.try_claim() == []  # the forged hint fails its claim grant ...
    tasks = claimer.try_claim()  # ... and the next claim probes

    assert [task.execution_id for task in tasks] == [submitted]
    tasks[0].complete()


def test_an_interrupted_attempt_is_claimed_through_the_resumed_path(ff_engine, make_claimer):
    claimer = make_claimer()
    ff_engine.submit("default", b"x")
    task = claimer.claim_one(timeout_s=10)
    due = ff_engine.server_time_ms() + 100
    task.delay(due)
    assert wait_for(lambda: ff_engine.server_time_ms() > due)  # engine time passes the delay
    EngineScanners(ff_engine).promote_delayed()
    resumed = claimer.claim_one(timeout_s=10)
    assert resumed.execution_id == task.execution_id
    assert resumed.attempt_type == "resumed"
    assert (resumed.attempt_index, resumed.attempt_id) == (task.attempt_index, task.attempt_id)
    assert resumed.lease_epoch == task.lease_epoch + 1
    resumed.complete()


def test_required_capabilities_keep_work_from_workers_that_lack_them(ff_engine, make_claimer):
    policy = ExecutionPolicy(routing_requirements=RoutingRequirements(required_capabilities=["gpu"]))
    eid = ff_engine.submit("default", b"x", policy=policy).execution_id
    assert make_claimer(worker_id="cpu-only").claim(1) == []
    assert ff_engine.read_core(eid, "last_capability_mismatch_at")
    task = make_claimer(worker_id="gpu-box", capabilities=["gpu", "cuda"]).claim_one()
    assert task.execution_id == eid
    task.complete()


def test_concurrent_claimers_never_claim_the_same_execution(ff_engine, make_claimer):
    submitted = {str(ff_engine.submit("default", str(n).encode()).execution_id) for n in range(30)}
    claimers = [make_claimer(worker_id=f"w{n}") for n in range(3)]
    claimed: list[list[str]] = [[] for _ in claimers]

    def drain(index: int) -> None:
        while True:
            tasks = claimers[index].claim(max_tasks=2)
            if not tasks:
                return
            for task in tasks:
                claimed[index].append(str(task.execution_id))
                task.complete()

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    everything = [eid for per_worker in claimed for eid in per_worker]
    assert sorted(everything) == sorted(submitted)
    assert len(set(everything)) == len(everything)


def test_claimed_tasks_carry_payload_tags_policy_and_claim_state(ff_engine, make_claimer):
    policy = ExecutionPolicy(max_replay_count=3)
    ff_engine.submit("default", b"body", tags={"celery.task": "proj.add"}, policy=policy, priority=4)
    task = make_claimer().claim_one(timeout_s=10)
    assert task.payload == b"body"
    assert task.tags == {"celery.task": "proj.add"}
    assert task.policy.max_replay_count == 3
    assert task.core["priority"] == "4" and task.core["retry_count"] == "0"
    task.complete()


def next_wake(listener) -> bytes:
    """The payload of the next wake-up the listener receives."""
    received = []
    assert wait_for(lambda: received.append(listener.get(1)) or received[-1] is not None)
    return received[-1].data


def test_a_wake_up_names_only_an_execution_that_needs_no_admission(ff_engine):
    listener = Listener(ff_engine.redis)
    listener.subscribe(wake_channel("default"))
    try:
        assert wait_for(lambda: subscribers(ff_engine.redis, wake_channel("default")) >= 1)
        plain = ff_engine.submit("default", b"plain").execution_id
        assert next_wake(listener) == plain.encode()
        ff_engine.purge_lane("default")  # the lane is idle again: the next submit wakes it
        ff_engine.submit("default", b"under a budget", budget_ids=["team-budget"])
        assert next_wake(listener) == b"1"  # the claimer probes, and learns the lane needs admission
    finally:
        listener.close()
