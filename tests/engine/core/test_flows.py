"""Flows on the engine: members created with their inbound edges in one transaction, the
completion cascade (by call, by the leader's listener and by the reconciler), skip
propagation and its cause, flow cancellation as one, and the flow scanners."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import subscribers, wait_for

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.flows import FlowRef
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ADMISSION_LANES_KEY, PartitionKeys, wake_channel
from ff_celery.engine.core.new_execution import ExecutionSpec
from ff_celery.engine.core.notices import Listener
from ff_celery.engine.duties.scanners import EngineScanners, ScannerSettings
from ff_celery.engine.work.claimer import Claimer

LANE = "default"


@pytest.fixture
def flow(ff_engine: Engine) -> FlowRef:
    """A new flow on the lane's own partition (its members are claimed like solo work)."""
    partition = ff_engine.partitions.lane_partition(LANE)
    return FlowRef(ff_engine.partitions.new_flow_id(partition), partition)


@pytest.fixture
def claimer(make_claimer) -> Claimer:
    return make_claimer([LANE], worker_id="w", lease_ttl_ms=30_000)


def member(engine: Engine, flow: FlowRef, *upstream: ExecutionId, lane: str = LANE, **fields) -> ExecutionId:
    """A new member of ``flow`` waiting for ``upstream``."""
    new = engine.new_execution(ExecutionSpec(lane, b"step", **fields), ExecutionId.mint(flow.partition))
    (created,) = engine.submit_flow(flow, [replace(new, upstream=tuple(upstream))])
    return created.execution_id


def state(engine: Engine, eid: ExecutionId) -> str:
    return engine.read_core(eid, "public_state")["public_state"]


def run(claimer: Claimer, eid: ExecutionId, *, succeed: bool = True) -> None:
    """Claim ``eid`` (the only eligible execution) and end it."""
    task = claimer.claim_one(timeout_s=15)
    assert task is not None and task.execution_id == eid
    if succeed:
        task.complete(b"done")
    else:
        task.fail("boom", "permanent", retry_policy=None)


def test_new_flow_ids_land_on_the_asked_partition(ff_engine):
    config = ff_engine.partitions
    for partition in (0, 1, 86, config.num_flow_partitions - 1):
        assert config.flow_partition(config.new_flow_id(partition)) == partition
    with pytest.raises(ValueError):
        config.new_flow_id(config.num_flow_partitions)


def test_members_created_together_wait_for_each_other_from_the_start(ff_engine, flow):
    partition = flow.partition
    first = ff_engine.new_execution(ExecutionSpec(LANE, b"1", alias="task-1"), ExecutionId.mint(partition))
    second = ff_engine.new_execution(ExecutionSpec(LANE, b"2", alias="task-2"), ExecutionId.mint(partition))
    second = replace(second, upstream=(first.request.execution_id,))
    created = ff_engine.submit_flow(flow, [first, second])
    assert [c.public_state for c in created] == ["waiting", "waiting"]
    assert (state(ff_engine, created[0].execution_id), state(ff_engine, created[1].execution_id)) == (
        "waiting",
        "waiting_children",
    )
    assert ff_engine.resolve_many(["task-1", "task-2"]) == [c.execution_id for c in created]
    assert ff_engine.flows.describe(flow).upstream_of(created[1].execution_id) == [created[0].execution_id]


def test_a_member_with_upstreams_is_created_waiting_and_never_eligible(ff_engine, flow):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    assert (state(ff_engine, first), state(ff_engine, second)) == ("waiting", "waiting_children")
    eligible = PartitionKeys(flow.partition).eligible(LANE)
    assert ff_engine.redis.zscore(eligible, second) is None
    assert ff_engine.redis.zscore(PartitionKeys(flow.partition).blocked(LANE, "dependencies"), second) is not None
    view = ff_engine.flows.describe(flow)
    assert set(view.members) == {first, second} and view.upstream_of(second) == [first]
    assert view.record["node_count"] == "2" and view.record["edge_count"] == "1"


@pytest.mark.parametrize("hot_path", [False, True], ids=["cascade_call", "in_the_completion"])
def test_the_cascade_makes_the_child_eligible_and_names_it_in_a_wake_up(ff_engine, flow, claimer, hot_path):
    """By a cascade call after the completion (the contract calls), or inside the completion
    itself (``ffc_complete``), which leaves the cascade call nothing to do."""
    ff_engine.hot_path = hot_path
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    wakes = Listener(ff_engine.redis)
    wakes.subscribe(wake_channel(LANE))
    assert wait_for(lambda: subscribers(ff_engine.redis, wake_channel(LANE)) >= 1)
    run(claimer, first)
    assert ff_engine.flows.cascade(first, flow.flow_id) == (0 if hot_path else 1)
    assert state(ff_engine, second) == "waiting"
    assert wait_for(lambda: (notice := wakes.get(0.5)) is not None and notice.data == second.encode())
    wakes.close()
    assert ff_engine.flows.cascade(first, flow.flow_id) == 0  # idempotent: nothing left to resolve


def test_a_failure_skips_everything_after_it_and_names_itself_as_the_cause(ff_engine, flow, claimer):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    third = member(ff_engine, flow, second)
    run(claimer, first, succeed=False)
    assert ff_engine.flows.cascade(first, flow.flow_id) == 2
    assert (state(ff_engine, second), state(ff_engine, third)) == ("skipped", "skipped")
    assert ff_engine.flows.skip_cause(third) == first
    assert ff_engine.flows.skip_cause(first) is None


def test_an_upstream_that_ended_before_the_edge_existed_is_resolved_at_once(ff_engine, flow, claimer):
    first = member(ff_engine, flow)
    run(claimer, first)
    second = member(ff_engine, flow, first)
    assert state(ff_engine, second) == "waiting"


def test_a_join_waits_for_every_upstream(ff_engine, flow, claimer):
    left, right = member(ff_engine, flow), member(ff_engine, flow)
    join = member(ff_engine, flow, left, right)
    for _ in range(2):
        task = claimer.claim_one(timeout_s=15)
        task.complete(b"part")
        ff_engine.flows.cascade(task.execution_id, flow.flow_id)
    assert state(ff_engine, join) == "waiting"


def test_cancelling_a_flow_cancels_every_member_that_has_not_ended(ff_engine, flow, claimer):
    done = member(ff_engine, flow)
    run(claimer, done)
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    assert set(ff_engine.flows.cancel(flow, "user asked")) == {first, second}
    assert (state(ff_engine, first), state(ff_engine, second), state(ff_engine, done)) == (
        "cancelled",
        "cancelled",
        "completed",
    )
    assert not ff_engine.redis.exists(flow.keys.pending_cancels)
    assert ff_engine.flows.cancel(flow, "again") == []


def test_a_flow_cancel_counts_members_a_racing_cancel_stopped_first(ff_engine, flow):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    ff_engine.call(fn.CancelFlow(flow_id=flow.flow_id, partition=flow.partition, reason="stop", grace_ms=0))
    ff_engine.cancel(first, "a reconciler got there first")  # cancelled, not yet acknowledged
    assert set(ff_engine.flows.cancel(flow, "user asked")) == {first, second}
    assert not ff_engine.redis.exists(flow.keys.pending_cancels)


def test_a_flow_cancel_stops_downstream_members_first_so_no_cascade_skips_one(ff_engine, flow, monkeypatch):
    chain = [member(ff_engine, flow)]
    for _ in range(5):
        chain.append(member(ff_engine, flow, chain[-1]))
    cancel = ff_engine.cancel

    def cancel_then_cascade(execution_id, reason):  # as if the leader's listener heard each end at once
        outcome = cancel(execution_id, reason)
        ff_engine.flows.cascade(execution_id, flow.flow_id)
        return outcome

    monkeypatch.setattr(ff_engine, "cancel", cancel_then_cascade)
    assert set(ff_engine.flows.cancel(flow, "user asked")) == set(chain)
    assert [state(ff_engine, eid) for eid in chain] == ["cancelled"] * len(chain)


def test_the_flow_of_a_member_is_known_and_a_solo_execution_has_none(ff_engine, flow):
    eid = member(ff_engine, flow)
    assert ff_engine.flows.flow_of(eid) == flow
    solo = ff_engine.submit(LANE, b"").execution_id
    assert ff_engine.flows.flow_of(solo) is None


# -- the flow scanners ---------------------------------------------------------------------------


def test_the_leaders_completion_listener_runs_the_cascade(ff_engine, flow, claimer):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    scanners = EngineScanners(ff_engine.fork(), settings=ScannerSettings(leader_ttl_s=3.0)).start()
    try:
        assert wait_for(lambda: scanners.is_leader)
        assert wait_for(lambda: scanners.flows._completions is not None)
        run(claimer, first)
        assert wait_for(lambda: state(ff_engine, second) == "waiting")
    finally:
        scanners.stop()


def test_the_dependency_reconciler_resolves_edges_whose_completion_went_unheard(ff_engine, flow, claimer):
    ff_engine.hot_path = False  # completed by a client of the contract calls alone (a Rust worker)
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    run(claimer, first)  # nobody listens: no cascade
    assert state(ff_engine, second) == "waiting_children"
    assert EngineScanners(ff_engine).flows.reconcile_dependencies() == 1
    assert state(ff_engine, second) == "waiting"


def test_the_cancel_reconciler_cancels_what_a_flow_cancellation_still_owes(ff_engine, flow):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    ff_engine.call(fn.CancelFlow(flow_id=flow.flow_id, partition=flow.partition, reason="stop", grace_ms=0))
    assert EngineScanners(ff_engine).flows.reconcile_cancels() == 2
    assert (state(ff_engine, first), state(ff_engine, second)) == ("cancelled", "cancelled")
    assert ff_engine.redis.zscore(PartitionKeys(flow.partition).cancel_backlog, flow.flow_id) is None


def test_the_edge_cancel_dispatcher_cancels_the_siblings_of_a_fired_any_of_group(ff_engine, flow, claimer):
    fast, slow = member(ff_engine, flow), member(ff_engine, flow)
    # an any_of join, built by hand (ff_celery's canvases use all_of); on a lane nobody claims
    join = member(ff_engine, flow, lane="joins")
    now = ff_engine.now_ms()
    where = {"flow_id": flow.flow_id, "partition": flow.partition}
    policy = fn.SetEdgeGroupPolicy(
        **where, downstream_id=join, policy="any_of", on_satisfied="cancel_remaining", now_ms=now
    )
    ff_engine.call(policy)
    for upstream in (fast, slow):
        revision = int(ff_engine.redis.hget(flow.keys.core, "graph_revision"))
        edge_id = new_uuid()
        stage = fn.StageDependencyEdge(
            **where,
            edge_id=edge_id,
            upstream_id=upstream,
            downstream_id=join,
            expected_graph_revision=revision,
            now_ms=now,
        )
        ff_engine.call(stage)
        apply = fn.ApplyDependencyToChild(
            execution_id=join,
            flow_id=flow.flow_id,
            edge_id=edge_id,
            upstream_id=upstream,
            graph_revision=revision + 1,
            lane_id="joins",
            now_ms=now,
        )
        ff_engine.call(apply)
    task = claimer.claim_one(timeout_s=15)
    task.complete(b"")
    ff_engine.flows.cascade(task.execution_id, flow.flow_id)
    sibling = slow if task.execution_id == fast else fast
    duties = EngineScanners(ff_engine).flows
    assert duties.dispatch_sibling_cancels() == 1
    assert state(ff_engine, sibling) == "cancelled"
    assert not ff_engine.redis.smembers(PartitionKeys(flow.partition).pending_cancel_groups)
    assert duties.reconcile_sibling_cancels() == 0


def test_the_projector_summarises_a_flow_and_drops_it_from_the_index_once_all_ended(ff_engine, flow, claimer):
    first = member(ff_engine, flow)
    second = member(ff_engine, flow, first)
    duties = EngineScanners(ff_engine).flows
    assert duties.project_flows() == 1
    summary = {k.decode(): v.decode() for k, v in ff_engine.redis.hgetall(flow.keys.summary).items()}
    assert (summary["public_flow_state"], summary["members_waiting"], summary["members_waiting_children"]) == (
        "blocked",
        "1",
        "1",
    )
    run(claimer, first)
    ff_engine.flows.cascade(first, flow.flow_id)
    run(claimer, second)
    duties.project_flows()
    assert ff_engine.redis.hget(flow.keys.summary, "public_flow_state") == b"completed"
    assert not ff_engine.redis.sismember(PartitionKeys(flow.partition).flow_index, flow.flow_id)


def test_a_member_under_a_budget_puts_its_lane_under_admission_before_it_can_be_claimed(ff_engine, flow):
    eid = member(ff_engine, flow, budget_ids=["flow-budget"])
    assert ff_engine.redis.sismember(ADMISSION_LANES_KEY, LANE)
    assert ff_engine.read_core(eid, "budget_ids")["budget_ids"]


def test_the_projector_drops_a_flow_whose_record_is_gone_from_the_index(ff_engine, flow):
    member(ff_engine, flow)
    ff_engine.redis.delete(flow.keys.core)
    assert EngineScanners(ff_engine).flows.project_flows() == 0
    assert not ff_engine.redis.sismember(PartitionKeys(flow.partition).flow_index, flow.flow_id)
