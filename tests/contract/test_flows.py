"""Contract tests: flows and dependency edges (``lua/flow.lua``).

Covers ff_create_flow, ff_add_execution_to_flow, ff_set_flow_tags, ff_stage_dependency_edge,
ff_set_edge_group_policy, ff_apply_dependency_to_child, ff_resolve_dependency (all_of and the
any_of / quorum path), ff_evaluate_flow_eligibility, ff_promote_blocked_to_eligible,
ff_cancel_flow, ff_ack_cancel_member and the sibling-cancel pair, against
/work/shared/spec/flowfabric-suspend-budget-stream-flow.md §1.5 and §8, on a real server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import ConflictError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import DAG_COMPLETIONS_CHANNEL, ExecKeys, FlowKeys, PartitionKeys
from ff_celery.engine.core.partitions import PartitionConfig

from .support import expect_error, grant_and_claim, hash_of, keyspace, raw, server_ms

FLOW_ID = "5d3c1a2b-7e8f-4a9b-8c0d-1e2f3a4b5c6d"
PARTITION = PartitionConfig().flow_partition(FLOW_ID)
FK = FlowKeys(FLOW_ID, PARTITION)
IDX = PartitionKeys(PARTITION)
LANE = "default"
NOW = 1_700_000_000_000


# -- helpers ------------------------------------------------------------------------------------


def create_flow(flow_id: str = FLOW_ID) -> fn.CreateFlow:
    return fn.CreateFlow(flow_id=flow_id, partition=PARTITION, flow_kind="dag", namespace="ns")


def member(engine: Engine, *, priority: int = 0) -> ExecutionId:
    """A new execution on the flow's partition, added to the flow."""
    eid = engine.submit(LANE, b"payload", priority=priority, execution_id=ExecutionId.mint(PARTITION)).execution_id
    engine.call(fn.AddExecutionToFlow(flow_id=FLOW_ID, partition=PARTITION, execution_id=eid))
    return eid


def revision(r: redis.Redis) -> int:
    return int(r.hget(FK.core, "graph_revision"))


def stage(r: redis.Redis, upstream: ExecutionId, downstream: ExecutionId, **fields: Any) -> fn.StageDependencyEdge:
    fields = {
        "flow_id": FLOW_ID,
        "edge_id": new_uuid(),
        "expected_graph_revision": revision(r),
        "now_ms": NOW,
        **fields,
    }
    return fn.StageDependencyEdge(partition=PARTITION, upstream_id=upstream, downstream_id=downstream, **fields)


def apply(edge: fn.StageDependencyEdge, graph_revision: int = 1) -> fn.ApplyDependencyToChild:
    return fn.ApplyDependencyToChild(
        execution_id=edge.downstream_id,
        flow_id=FLOW_ID,
        edge_id=edge.edge_id,
        upstream_id=edge.upstream_id,
        graph_revision=graph_revision,
        data_passing_ref=edge.data_passing_ref,
        lane_id=LANE,
        now_ms=NOW + 1,
    )


def link(engine: Engine, r: redis.Redis, upstream: ExecutionId, downstream: ExecutionId, **fields: Any) -> str:
    """Stage and apply ``upstream -> downstream``; the edge id."""
    edge = stage(r, upstream, downstream, **fields)
    engine.call(edge)
    engine.call(apply(edge))
    return edge.edge_id


def resolve(edge_id: str, upstream: ExecutionId, child: ExecutionId, outcome: str) -> fn.ResolveDependency:
    return fn.ResolveDependency(
        execution_id=child,
        flow_id=FLOW_ID,
        edge_id=edge_id,
        upstream_id=upstream,
        upstream_outcome=outcome,
        lane_id=LANE,
        now_ms=NOW + 5,
    )


def group_policy(child: ExecutionId, policy: str, on_satisfied: str = "", k: int = 0) -> fn.SetEdgeGroupPolicy:
    return fn.SetEdgeGroupPolicy(
        flow_id=FLOW_ID,
        partition=PARTITION,
        downstream_id=child,
        policy=policy,
        on_satisfied=on_satisfied,
        k=k,
        now_ms=NOW,
    )


def state_of(r: redis.Redis, eid: ExecutionId) -> tuple[str, str, str]:
    core = hash_of(r, ExecKeys(eid).core)
    return core["eligibility_state"], core["terminal_outcome"], core["public_state"]


@pytest.fixture
def flow(ff_engine: Engine) -> Engine:
    """An engine with the flow created."""
    assert ff_engine.call(create_flow())
    return ff_engine


@pytest.fixture
def completions(ff_redis: redis.Redis) -> Iterator[redis.client.PubSub]:
    pubsub = ff_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(DAG_COMPLETIONS_CHANNEL)
    assert pubsub.get_message(timeout=5) is None or True  # the subscribe confirmation
    yield pubsub
    pubsub.close()


def published(pubsub: redis.client.PubSub) -> list[dict[str, str]]:
    messages = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        messages.append(json.loads(message["data"]))
    return messages


# -- the flow and its members -------------------------------------------------------------------


def test_create_flow_stores_the_open_flow_and_indexes_it(flow, ff_redis):
    core = hash_of(ff_redis, FK.core)
    assert core["created_at"] == core["last_mutation_at"]
    assert {k: v for k, v in core.items() if not k.endswith("_at")} == {
        "flow_id": FLOW_ID,
        "flow_kind": "dag",
        "namespace": "ns",
        "graph_revision": "0",
        "node_count": "0",
        "edge_count": "0",
        "public_flow_state": "open",
    }
    assert ff_redis.smembers(IDX.flow_index) == {FLOW_ID.encode()}


def test_create_flow_again_is_already_satisfied_and_heals_the_index(flow, ff_redis):
    ff_redis.delete(IDX.flow_index)
    assert raw(ff_redis, create_flow()) == [1, "ALREADY_SATISFIED", FLOW_ID]
    assert ff_redis.smembers(IDX.flow_index) == {FLOW_ID.encode()}


def test_add_member_stamps_the_flow_on_the_execution_and_bumps_count_and_revision(flow, ff_redis):
    eid = flow.submit(LANE, execution_id=ExecutionId.mint(PARTITION)).execution_id
    add = fn.AddExecutionToFlow(flow_id=FLOW_ID, partition=PARTITION, execution_id=eid)
    assert flow.call(add) == fn.FlowMembership(added=True, node_count=1)
    assert ff_redis.hget(ExecKeys(eid).core, "flow_id").decode() == FLOW_ID
    assert ff_redis.smembers(FK.members) == {eid.encode()}
    assert (revision(ff_redis), ff_redis.hget(FK.core, "node_count")) == (1, b"1")
    assert raw(ff_redis, add) == [1, "ALREADY_SATISFIED", eid, "1"]
    assert revision(ff_redis) == 1


def test_add_member_refuses_a_missing_flow_a_missing_execution_and_an_ended_flow(flow, ff_redis):
    eid = flow.submit(LANE, execution_id=ExecutionId.mint(PARTITION)).execution_id
    other = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    expect_error(flow, fn.AddExecutionToFlow(flow_id=other, partition=PARTITION, execution_id=eid), "flow_not_found")
    missing = ExecutionId.mint(PARTITION)
    add_missing = fn.AddExecutionToFlow(flow_id=FLOW_ID, partition=PARTITION, execution_id=missing)
    expect_error(flow, add_missing, "execution_not_found")
    flow.call(fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="stop"))
    add = fn.AddExecutionToFlow(flow_id=FLOW_ID, partition=PARTITION, execution_id=eid)
    expect_error(flow, add, "flow_already_terminal")


def test_a_member_of_another_flow_is_refused_with_that_flows_id(flow, ff_redis):
    eid = member(flow)
    other = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    flow.call(create_flow(other))
    error = expect_error(
        flow,
        fn.AddExecutionToFlow(flow_id=other, partition=PARTITION, execution_id=eid),
        "already_member_of_different_flow",
        [FLOW_ID],
    )
    assert isinstance(error, ConflictError)


def test_set_flow_tags_moves_tags_once_kept_in_flow_core_and_counts_the_new_ones(flow, ff_redis):
    ff_redis.hset(FK.core, "legacy.owner", "ops")
    tags = fn.SetFlowTags(flow_id=FLOW_ID, partition=PARTITION, tags={"cairn.run": "7", "ffc.kind": "chain"})
    assert flow.call(tags) == 2
    assert hash_of(ff_redis, FK.tags) == {"legacy.owner": "ops", "cairn.run": "7", "ffc.kind": "chain"}
    core = hash_of(ff_redis, FK.core)
    assert "legacy.owner" not in core and core["tags_migrated"] == "1"


def test_set_flow_tags_refuses_odd_pairs_bad_names_and_a_missing_flow(flow, ff_redis):
    tags = fn.SetFlowTags(flow_id=FLOW_ID, partition=PARTITION, tags={"x": "1"})
    expect_error(flow, tags, "invalid_tag_key", ["x"])
    assert raw(ff_redis, tags, argv=["a.b"]) == [
        0,
        "invalid_input",
        "tags must be non-empty even-length key/value pairs",
    ]
    missing = fn.SetFlowTags(flow_id=new_uuid(), partition=PARTITION, tags={"a.b": "1"})
    expect_error(flow, missing, "flow_not_found")


# -- staging edges -------------------------------------------------------------------------------


def test_stage_edge_records_it_on_the_flow_and_bumps_the_revision(flow, ff_redis):
    a, b = member(flow), member(flow)
    edge = stage(ff_redis, a, b, data_passing_ref="result")
    assert flow.call(edge) == 3
    assert hash_of(ff_redis, FK.edge(edge.edge_id)) == {
        "edge_id": edge.edge_id,
        "flow_id": FLOW_ID,
        "upstream_execution_id": a,
        "downstream_execution_id": b,
        "dependency_kind": "success_only",
        "satisfaction_condition": "all_required",
        "data_passing_ref": "result",
        "edge_state": "pending",
        "created_at": str(NOW),
        "created_by": "engine",
    }
    assert ff_redis.smembers(FK.outgoing(a)) == ff_redis.smembers(FK.incoming(b)) == {edge.edge_id.encode()}
    assert ff_redis.hget(FK.core, "edge_count") == b"1"


def test_stage_edge_checks_in_the_contracts_order(flow, ff_redis):
    a, b, c = member(flow), member(flow), member(flow)
    outsider = flow.submit(LANE, execution_id=ExecutionId.mint(PARTITION)).execution_id
    expect_error(flow, stage(ff_redis, a, a), "self_referencing_edge")
    expect_error(flow, stage(ff_redis, a, b, flow_id=new_uuid()), "flow_not_found")
    expect_error(flow, stage(ff_redis, a, b, expected_graph_revision=1), "stale_graph_revision")
    expect_error(flow, stage(ff_redis, a, outsider), "execution_not_in_flow")
    flow.call(stage(ff_redis, a, b))
    flow.call(stage(ff_redis, b, c))
    expect_error(flow, stage(ff_redis, c, a), "cycle_detected")
    edge = stage(ff_redis, a, c)
    flow.call(edge)
    again = stage(ff_redis, a, c, edge_id=edge.edge_id)
    expect_error(flow, again, "dependency_already_exists")


def test_an_ended_flow_takes_no_edges(flow, ff_redis):
    a, b = member(flow), member(flow)
    flow.call(fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="stop", cancellation_policy="cancel_none"))
    expect_error(flow, stage(ff_redis, a, b), "flow_already_terminal")


# -- edge-group policy ---------------------------------------------------------------------------


def test_edge_group_policy_is_set_once_and_validated(flow, ff_redis):
    child = member(flow)
    assert flow.call(group_policy(child, "quorum", "let_run", k=2)) is True
    assert hash_of(ff_redis, FK.edge_group(child)) == {
        "policy_variant": "quorum",
        "on_satisfied": "let_run",
        "k": "2",
        "n": "0",
        "succeeded": "0",
        "failed": "0",
        "skipped": "0",
        "group_state": "pending",
        "created_at": str(NOW),
    }
    assert flow.call(group_policy(child, "quorum", "let_run", k=2)) is False
    bad = [
        (group_policy(child, "any_of"), "on_satisfied required for any_of/quorum: cancel_remaining | let_run"),
        (group_policy(child, "quorum", "let_run"), "quorum k must be >= 1"),
    ]
    for model, detail in bad:
        expect_error(flow, model, "invalid_input", [detail])
    assert raw(ff_redis, group_policy(child, "all_of"), argv=["first_of", "", "0", str(NOW)]) == [
        0,
        "invalid_input",
        "unsupported_policy_variant: first_of",
    ]


def test_edge_group_policy_is_fixed_once_an_edge_is_applied(flow, ff_redis):
    a, child = member(flow), member(flow)
    link(flow, ff_redis, a, child)
    expect_error(
        flow,
        group_policy(child, "any_of", "let_run"),
        "invalid_input",
        ["edge_group_policy_already_fixed: dependencies already staged"],
    )


# -- applying edges to the child -----------------------------------------------------------------


def test_apply_records_the_dependency_and_blocks_the_child(flow, ff_redis):
    a, child = member(flow), member(flow)
    edge = stage(ff_redis, a, child)
    flow.call(edge)
    assert flow.call(apply(edge, graph_revision=3)) == 1
    x = ExecKeys(child)
    assert hash_of(ff_redis, x.dep(edge.edge_id)) == {
        "edge_id": edge.edge_id,
        "flow_id": FLOW_ID,
        "upstream_execution_id": a,
        "downstream_execution_id": child,
        "dependency_kind": "success_only",
        "state": "unsatisfied",
        "data_passing_ref": "",
        "last_resolved_at": "",
    }
    assert hash_of(ff_redis, x.deps_meta) == {
        "unsatisfied_required_count": "1",
        "flow_id": FLOW_ID,
        "last_flow_graph_revision": "3",
        "last_dependency_update_at": str(NOW + 1),
    }
    assert ff_redis.smembers(x.deps_unresolved) == ff_redis.smembers(x.deps_all_edges) == {edge.edge_id.encode()}
    assert hash_of(ff_redis, FK.edge_group(child)) == {
        "policy_variant": "all_of",
        "n": "1",
        "succeeded": "0",
        "group_state": "pending",
    }
    core = hash_of(ff_redis, x.core)
    assert (core["eligibility_state"], core["blocking_reason"], core["public_state"]) == (
        "blocked_by_dependencies",
        "waiting_for_children",
        "waiting_children",
    )
    assert core["blocking_detail"] == f"1 dep(s) unresolved incl {edge.edge_id}"
    assert ff_redis.zscore(IDX.eligible(LANE), child) is None
    assert ff_redis.zscore(IDX.blocked(LANE, "dependencies"), child) == float(core["created_at"])
    assert raw(ff_redis, apply(edge)) == [1, "OK", "already_applied"]


def test_apply_refuses_a_child_of_another_flow(flow, ff_redis):
    a, child = member(flow), member(flow)
    edge = stage(ff_redis, a, child)
    flow.call(edge)
    foreign = apply(edge).model_copy(update={"flow_id": new_uuid()})
    expect_error(flow, foreign, "execution_already_in_flow")


# -- resolution: all_of --------------------------------------------------------------------------


def test_the_last_satisfied_edge_makes_the_child_eligible_by_priority(flow, ff_redis):
    a, b, child = member(flow), member(flow), member(flow, priority=3)
    edge_a, edge_b = link(flow, ff_redis, a, child), link(flow, ff_redis, b, child)
    first = flow.call(resolve(edge_a, a, child, "success"))
    assert first == fn.DependencyResolution(outcome="satisfied")
    assert state_of(ff_redis, child) == ("blocked_by_dependencies", "none", "waiting_children")
    assert flow.call(resolve(edge_b, b, child, "success")).outcome == "satisfied"
    assert state_of(ff_redis, child) == ("eligible_now", "none", "waiting")
    created_at = int(ff_redis.hget(ExecKeys(child).core, "created_at"))
    assert ff_redis.zscore(IDX.eligible(LANE), child) == -3 * 10**12 + created_at
    assert ff_redis.zscore(IDX.blocked(LANE, "dependencies"), child) is None
    assert hash_of(ff_redis, FK.edge_group(child))["group_state"] == "satisfied"
    assert raw(ff_redis, resolve(edge_a, a, child, "success")) == [1, "OK", "already_resolved"]


def test_a_data_passing_edge_copies_the_upstreams_result_over_the_childs_payload(flow, ff_redis):
    a, child = member(flow), member(flow)
    edge_id = link(flow, ff_redis, a, child, data_passing_ref="result")
    ff_redis.set(ExecKeys(a).result, b"42")
    assert flow.call(resolve(edge_id, a, child, "success")).detail == "data_injected"
    assert ff_redis.get(ExecKeys(child).payload) == b"42"


def test_a_failed_upstream_skips_the_child_and_announces_it(flow, ff_redis, completions):
    a, child = member(flow), member(flow)
    edge_id = link(flow, ff_redis, a, child)
    resolution = flow.call(resolve(edge_id, a, child, "failed"))
    assert resolution == fn.DependencyResolution(outcome="impossible", detail="child_skipped")
    assert state_of(ff_redis, child) == ("not_applicable", "skipped", "skipped")
    assert ff_redis.zscore(IDX.terminal(LANE), child) == NOW + 5
    meta = hash_of(ff_redis, ExecKeys(child).deps_meta)
    assert (meta["unsatisfied_required_count"], meta["impossible_required_count"]) == ("0", "1")
    assert published(completions) == [{"execution_id": child, "flow_id": FLOW_ID, "outcome": "skipped"}]


def test_a_running_child_that_is_skipped_ends_its_attempt_as_cancelled(flow, ff_redis):
    a, child = member(flow), member(flow)
    edge = stage(ff_redis, a, child)
    flow.call(edge)
    grant_and_claim(flow, child)
    flow.call(apply(edge))
    flow.call(resolve(edge.edge_id, a, child, "cancelled"))
    attempt = hash_of(ff_redis, ExecKeys(child).attempt(0))
    assert (attempt["attempt_state"], attempt["failure_reason"]) == ("ended_cancelled", "dependency_impossible")
    assert hash_of(ff_redis, ExecKeys(child).core)["attempt_state"] == "attempt_terminal"


def test_resolving_an_unknown_edge_is_invalid_dependency(flow, ff_redis):
    a, child = member(flow), member(flow)
    expect_error(flow, resolve(new_uuid(), a, child, "success"), "invalid_dependency")


# -- resolution: any_of and quorum ---------------------------------------------------------------


def test_any_of_fires_once_on_the_first_success_and_names_the_siblings_to_cancel(flow, ff_redis):
    a, b, c, child = member(flow), member(flow), member(flow), member(flow)
    flow.call(group_policy(child, "any_of", "cancel_remaining"))
    edges = [link(flow, ff_redis, upstream, child) for upstream in (a, b, c)]
    grant_and_claim(flow, c)
    flow.call(fn.CancelExecution(execution_id=b, reason="gone", source="operator_override", lane_id=LANE))
    assert flow.call(resolve(edges[0], a, child, "success")).outcome == "satisfied"
    group = hash_of(ff_redis, FK.edge_group(child))
    assert (group["group_state"], group["succeeded"], group["cancel_siblings_reason"]) == (
        "satisfied",
        "1",
        "sibling_quorum_satisfied",
    )
    # a is still runnable in this test (nobody completed it) and c is running: both listed.
    assert set(group["cancel_siblings_pending_members"].split("|")) == {a, c}
    assert ff_redis.smembers(IDX.pending_cancel_groups) == {f"{FLOW_ID}|{child}".encode()}
    assert state_of(ff_redis, child) == ("eligible_now", "none", "waiting")
    assert raw(ff_redis, resolve(edges[1], b, child, "cancelled"))[2:] == ["already_fired", ""]


def test_quorum_turns_impossible_once_k_can_no_longer_succeed(flow, ff_redis):
    ups = [member(flow) for _ in range(3)]
    child = member(flow)
    flow.call(group_policy(child, "quorum", "let_run", k=2))
    edges = [link(flow, ff_redis, upstream, child) for upstream in ups]
    assert raw(ff_redis, resolve(edges[0], ups[0], child, "failed"))[2:] == ["pending", ""]
    assert flow.call(resolve(edges[1], ups[1], child, "skipped")).child_skipped
    group = hash_of(ff_redis, FK.edge_group(child))
    assert (group["group_state"], group["failed"], group["skipped"]) == ("impossible", "1", "1")
    assert "cancel_siblings_pending_flag" not in group
    assert state_of(ff_redis, child)[1] == "skipped"


def test_sibling_cancel_groups_drain_and_reconcile(flow, ff_redis):
    a, b, child = member(flow), member(flow), member(flow)
    flow.call(group_policy(child, "any_of", "cancel_remaining"))
    edges = [link(flow, ff_redis, upstream, child) for upstream in (a, b)]
    flow.call(resolve(edges[0], a, child, "success"))
    group = {"flow_id": FLOW_ID, "partition": PARTITION, "downstream_id": child}
    assert flow.call(fn.ReconcileSiblingCancelGroup(**group)) == "no_op"  # a and b still runnable
    assert flow.call(fn.DrainSiblingCancelGroup(**group)) == "drained"
    assert "cancel_siblings_pending_flag" not in hash_of(ff_redis, FK.edge_group(child))
    assert flow.call(fn.DrainSiblingCancelGroup(**group)) == "already_drained"
    assert raw(ff_redis, fn.ReconcileSiblingCancelGroup(**group)) == [1, "OK", "no_op", "not_in_set"]
    ff_redis.sadd(IDX.pending_cancel_groups, f"{FLOW_ID}|{child}")
    assert raw(ff_redis, fn.ReconcileSiblingCancelGroup(**group)) == [1, "OK", "sremmed_stale", "flag_cleared"]
    assert raw(ff_redis, fn.DrainSiblingCancelGroup(**group), argv=["", child]) == [
        0,
        "invalid_args",
        "flow_id and downstream_eid required",
    ]


# -- eligibility and promotion -------------------------------------------------------------------


def test_evaluate_flow_eligibility_reports_each_state(flow, ff_redis):
    a, b, child = member(flow), member(flow), member(flow)

    def status(eid: ExecutionId) -> str:
        return flow.call(fn.EvaluateFlowEligibility(execution_id=eid))

    assert status(child) == "eligible"
    assert status(ExecutionId.mint(PARTITION)) == "not_found"
    edge_id = link(flow, ff_redis, a, child)
    assert status(child) == "blocked_by_dependencies"
    grant_and_claim(flow, b)
    assert status(b) == "not_runnable"
    flow.call(resolve(edge_id, a, child, "failed"))
    assert status(child) == "not_runnable"
    ff_redis.hset(ExecKeys(child).core, mapping={"lifecycle_phase": "runnable"})
    assert status(child) == "terminal"
    ff_redis.hset(ExecKeys(child).core, mapping={"terminal_outcome": "none"})
    assert status(child) == "impossible"


def test_promote_needs_every_dependency_satisfied(flow, ff_redis):
    a, child = member(flow), member(flow)
    link(flow, ff_redis, a, child)
    promote = fn.PromoteBlockedToEligible(execution_id=child, lane_id=LANE, now_ms=NOW + 9)
    expect_error(flow, promote, "deps_not_satisfied", ["1", "1"])
    expect_error(flow, promote.model_copy(update={"execution_id": a}), "not_blocked_by_deps")
    x = ExecKeys(child)
    ff_redis.hset(x.deps_meta, "unsatisfied_required_count", 0)
    ff_redis.delete(x.deps_unresolved)
    flow.call(promote)
    assert state_of(ff_redis, child) == ("eligible_now", "none", "waiting")
    assert ff_redis.hget(x.core, "last_transition_at") == str(NOW + 9).encode()


# -- cancellation --------------------------------------------------------------------------------


def test_cancel_flow_marks_it_cancelled_and_owes_each_member_a_cancel(flow, ff_redis):
    members = {member(flow), member(flow)}
    before = server_ms(ff_redis)
    cancelled = flow.call(fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="user", grace_ms=5000))
    assert cancelled.cancellation_policy == "cancel_all" and set(cancelled.members) == members
    core = hash_of(ff_redis, FK.core)
    assert (core["public_flow_state"], core["cancel_reason"], core["cancellation_policy"]) == (
        "cancelled",
        "user",
        "cancel_all",
    )
    assert {m.decode() for m in ff_redis.smembers(FK.pending_cancels)} == members
    assert before + 5000 <= ff_redis.zscore(IDX.cancel_backlog, FLOW_ID) <= server_ms(ff_redis) + 5000
    expect_error(flow, fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="again"), "flow_already_terminal")
    first, second = sorted(members)
    flow.call(fn.AckCancelMember(flow_id=FLOW_ID, partition=PARTITION, execution_id=first))
    assert ff_redis.zscore(IDX.cancel_backlog, FLOW_ID) is not None
    flow.call(fn.AckCancelMember(flow_id=FLOW_ID, partition=PARTITION, execution_id=second))
    assert ff_redis.zscore(IDX.cancel_backlog, FLOW_ID) is None


def test_cancel_flow_with_another_policy_owes_nothing(flow, ff_redis):
    member(flow)
    model = fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="user", cancellation_policy="cancel_none")
    assert len(flow.call(model).members) == 1
    assert not ff_redis.exists(FK.pending_cancels, IDX.cancel_backlog)


@pytest.mark.parametrize("grace", ["-1", "1.5", "nan", "inf", "x", "9007199254740992"])
def test_cancel_flow_refuses_a_bad_grace_and_writes_nothing(flow, ff_redis, grace):
    model = fn.CancelFlow(flow_id=FLOW_ID, partition=PARTITION, reason="user")
    before = keyspace(ff_redis)
    assert raw(ff_redis, model, argv=[FLOW_ID, "user", "cancel_all", "0", grace]) == [0, "invalid_grace_ms"]
    assert keyspace(ff_redis) == before


def test_a_flow_members_completion_is_announced_for_the_cascade(flow, ff_redis, completions):
    eid = member(flow)
    _, fence = grant_and_claim(flow, eid)
    flow.call(
        fn.CompleteExecution(
            execution_id=eid, fence=fence, lane_id=LANE, worker_instance_id="worker-a-1", attempt_index=0
        )
    )
    assert published(completions) == [{"execution_id": eid, "flow_id": FLOW_ID, "outcome": "success"}]
