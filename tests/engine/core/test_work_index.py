"""Where work may be: scanners and claimers read the lanes' own partitions and those ff_celery
recorded (flows, executions minted elsewhere), a slow full sweep finds what other clients wrote
anywhere else, recorded partitions that hold nothing leave the record, and an idle worker's
scanners and claimer cost a few commands a second however many partitions there are."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from conftest import each_node, engine_time, wait_for

from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.flows import FlowRef
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import PARTITION_CONFIG_KEY, PARTITIONS_IN_USE_KEY, PartitionKeys
from ff_celery.engine.core.new_execution import ExecutionSpec
from ff_celery.engine.core.work_index import forget_unused_partitions, partitions_of, recorded_partitions
from ff_celery.engine.duties.scanners import EngineScanners, Scanner, ScannerSettings
from ff_celery.engine.work.claimer import Claimer

LANE = "default"
FAST = ScannerSettings(promote_interval_s=0.1, lease_expiry_interval_s=0.1, full_sweep_interval_s=0.3)


def away_from(engine: Engine, lane: str) -> int:
    """A partition other than the lane's own."""
    return (engine.partitions.lane_partition(lane) + 7) % engine.partitions.num_flow_partitions


@pytest.fixture
def flow(ff_engine: Engine) -> FlowRef:
    """A new flow on a partition other than its members' lane's."""
    partition = away_from(ff_engine, LANE)
    return FlowRef(ff_engine.partitions.new_flow_id(partition), partition)


def member(engine: Engine, flow: FlowRef, *upstream: ExecutionId, **fields) -> ExecutionId:
    new = engine.new_execution(ExecutionSpec(LANE, b"step", **fields), ExecutionId.mint(flow.partition))
    (created,) = engine.submit_flow(flow, [replace(new, upstream=upstream)])
    return created.execution_id


def state(engine: Engine, eid: ExecutionId) -> str:
    return engine.read_core(eid, "public_state")["public_state"]


def written_by_another_client(engine: Engine, partition: int, **fields) -> ExecutionId:
    """An execution of LANE created on ``partition`` with the bare FCALL, recording nothing."""
    request = engine.new_execution(ExecutionSpec(LANE, b"foreign", **fields), ExecutionId.mint(partition)).request
    return engine.call(request).execution_id


def test_a_flows_partition_is_recorded_before_its_members_are_created(ff_engine, flow):
    member(ff_engine, flow)
    assert recorded_partitions(ff_engine) == [flow.partition]
    assert partitions_of(ff_engine, [LANE]) == sorted({flow.partition, ff_engine.partitions.lane_partition(LANE)})


def test_a_delayed_member_off_its_lanes_partition_is_promoted(ff_engine, flow):
    due = ff_engine.server_time_ms() + 60_000
    eid = member(ff_engine, flow, delay_until=due)
    assert state(ff_engine, eid) == "delayed"
    scanners = EngineScanners(ff_engine)
    with engine_time(ff_engine, due):
        assert scanners.promote_delayed() == 1
    assert state(ff_engine, eid) == "waiting"


def test_a_member_off_its_lanes_partition_expires_at_its_deadline(ff_engine, flow):
    eid = member(ff_engine, flow, execution_deadline_at=ff_engine.server_time_ms() + 300)
    scanners = EngineScanners(ff_engine)
    assert wait_for(lambda: scanners.expire_due("execution_deadline") == 1)  # once the server's clock passed it
    assert ff_engine.read_core(eid, "public_state", "failure_reason") == {
        "public_state": "expired",
        "failure_reason": "execution_deadline",
    }


def test_a_lapsed_lease_off_its_lanes_partition_is_requeued(ff_engine, flow):
    eid = member(ff_engine, flow)
    claimer = Claimer(ff_engine, [LANE], worker_id="w", lease_ttl_ms=300)
    try:
        crashed = claimer.claim_one(timeout_s=10)
        assert crashed is not None and crashed.execution_id == eid
        crashed.release()  # the worker died: nobody renews
        scanners = EngineScanners(ff_engine)
        assert wait_for(lambda: scanners.expire_leases() == 1)
        rerun = claimer.claim_one(timeout_s=10)
        assert rerun is not None and rerun.execution_id == eid and rerun.attempt_index == 1
        rerun.complete()
    finally:
        claimer.close()


def test_the_flow_scanners_reconcile_and_project_a_flow_off_its_lanes_partition(ff_engine, flow):
    ff_engine.hot_path = False  # completed by a client of the contract calls alone: no cascade
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    claimer = Claimer(ff_engine, [LANE], worker_id="w")
    try:
        task = claimer.claim_one(timeout_s=10)
        assert task is not None and task.execution_id == first
        task.complete(b"done")
    finally:
        claimer.close()
    duties = EngineScanners(ff_engine).flows
    assert duties.reconcile_dependencies() == 1
    assert state(ff_engine, second) == "waiting"
    assert duties.project_flows() == 1
    assert ff_engine.redis.hget(flow.keys.summary, "members_completed") == b"1"


def test_a_delayed_execution_another_client_wrote_on_an_unrecorded_partition_waits_for_the_full_sweep(ff_engine):
    partition = away_from(ff_engine, LANE)
    due = ff_engine.server_time_ms() + 60_000
    eid = written_by_another_client(ff_engine, partition, delay_until=due)
    assert recorded_partitions(ff_engine) == []
    scanners = EngineScanners(ff_engine, lanes=[LANE])  # a lane this worker consumes
    with engine_time(ff_engine, due):
        assert scanners.promote_delayed() == 0  # not read: neither its lane's partition nor recorded
        assert scanners.run_all(full_sweep=True)["delayed_promoter"] == 1
    assert state(ff_engine, eid) == "waiting"


def test_the_scanners_thread_sweeps_every_partition_on_its_interval(ff_engine):
    scanners = EngineScanners(ff_engine.fork(), settings=FAST, lanes=[LANE]).start()
    try:
        # created after the first cycles (each a full sweep) have begun: found by a later sweep
        assert wait_for(lambda: scanners.is_leader)
        due = ff_engine.server_time_ms() + 1_500
        eid = written_by_another_client(ff_engine, away_from(ff_engine, LANE), delay_until=due)
        assert wait_for(lambda: state(ff_engine, eid) == "waiting")
    finally:
        scanners.stop()


def test_a_claimer_finds_work_another_client_wrote_on_an_unrecorded_partition_by_its_sweep(ff_engine):
    eid = written_by_another_client(ff_engine, away_from(ff_engine, LANE))
    claimer = Claimer(ff_engine, [LANE], worker_id="w", partition_sweep_interval_s=0.0)
    try:
        found = None
        for _ in range(ff_engine.partitions.num_flow_partitions // 32):  # 32 partitions a sweep
            found = claimer.claim_one()
            if found:
                break
        assert found is not None and found.execution_id == eid
        found.complete()
    finally:
        claimer.close()


def test_a_recorded_partition_leaves_the_record_once_it_holds_nothing(ff_engine, flow):
    eid = member(ff_engine, flow)
    assert forget_unused_partitions(ff_engine, grace_ms=0) == 0  # holds a flow and its member
    ff_engine.cancel(eid, "test")
    index = PartitionKeys(flow.partition)
    ff_engine.redis.delete(index.all_executions, index.flow_index)  # as retention leaves them, at last
    assert forget_unused_partitions(ff_engine) == 0  # recorded within the grace period
    assert forget_unused_partitions(ff_engine, grace_ms=0) == 1
    assert recorded_partitions(ff_engine) == []
    member(ff_engine, FlowRef(ff_engine.partitions.new_flow_id(flow.partition), flow.partition))
    assert recorded_partitions(ff_engine) == [flow.partition]  # in use again


def test_a_recorded_member_that_names_no_partition_is_skipped_and_logged(ff_engine, flow, caplog):
    member(ff_engine, flow)
    ff_engine.redis.zadd(PARTITIONS_IN_USE_KEY, {"not-a-partition": 0, "-3": 0})
    assert recorded_partitions(ff_engine) == [flow.partition]
    assert EngineScanners(ff_engine).run_all()["flow_projector"] == 1
    assert "not a partition number" in caplog.text


def all_calls(client) -> int:
    """Commands the server (every node of a cluster) ran so far; one more: this INFO."""
    return sum(fields["calls"] for node in each_node(client) for name, fields in node.info("commandstats").items())


IDLE_LANES = [f"queue{n}" for n in range(11)]
#: Seconds measured; an upper bound holds however slow a loaded machine makes the threads.
IDLE_WINDOW_S = 5.0
#: Generous bounds, one server and a cluster: measured ~15 a second on one server, 65-180 on
#: a 3+3 cluster (one EXISTS per lane's partition per cycle, counted on every node, replicas
#: included); reading every partition (1 024 here) costs thousands a second either way.
IDLE_COMMANDS_PER_S = {False: 150, True: 400}


@pytest.mark.parametrize("partitions", [64, 1024])
def test_idle_scanners_and_claimer_cost_a_few_commands_a_second_however_many_partitions(ff_engine, partitions):
    ff_engine.redis.hset(PARTITION_CONFIG_KEY, "num_flow_partitions", partitions)
    engine = Engine(ff_engine.redis)  # reads the partition count afresh
    scanners = EngineScanners(engine.fork(), lanes=IDLE_LANES)  # FlowFabric's intervals
    started = threading.Event()
    # every scanner is due at start and runs in turn: this one, last, sees the first cycles done
    scanners.scanners.append(Scanner("started", 3600.0, lambda: started.set() or 0))
    claimer, stop = Claimer(engine.fork(), IDLE_LANES, worker_id="idle"), threading.Event()

    def poll() -> None:  # a consumer with nothing to do: claims wait on wake-ups, poll every second
        while not stop.is_set():
            claimer.claim(1, timeout_s=1.0)

    polling = threading.Thread(target=poll, daemon=True)
    scanners.start()
    polling.start()
    try:
        assert started.wait(60)
        before = all_calls(ff_engine.redis)
        time.sleep(IDLE_WINDOW_S)
        spent = all_calls(ff_engine.redis) - before - len(each_node(ff_engine.redis))
    finally:
        scanners.stop()
        stop.set()
        polling.join(timeout=30)
        claimer.close()
    assert spent / IDLE_WINDOW_S < IDLE_COMMANDS_PER_S[len(each_node(ff_engine.redis)) > 1]
