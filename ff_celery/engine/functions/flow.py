"""Typed calls of ``lua/flow.lua``: flows, their members and dependency edges, edge-group
policies, resolution when an upstream ends, flow cancellation, sibling-cancel bookkeeping,
and replay of an ended execution.

A flow and its members share one ``{fp:N}`` partition: pass ``partition`` from
``PartitionConfig.flow_partition(flow_id)`` and mint members with ``ExecutionId.mint`` on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import ExecKeys, FlowKeys, PartitionKeys
from ff_celery.engine.functions.base import ExecutionFcall, Fcall, Reply, ResultT, optional_number

__all__ = [
    "AckCancelMember",
    "AddExecutionToFlow",
    "ApplyDependencyToChild",
    "CancelFlow",
    "CreateFlow",
    "DependencyResolution",
    "DrainSiblingCancelGroup",
    "EdgePolicy",
    "EvaluateFlowEligibility",
    "FlowCancellation",
    "FlowFcall",
    "FlowMembership",
    "PromoteBlockedToEligible",
    "ReconcileSiblingCancelGroup",
    "ReplayExecution",
    "ResolveDependency",
    "SetEdgeGroupPolicy",
    "SetFlowTags",
    "StageDependencyEdge",
    "UpstreamOutcome",
]

EdgePolicy = Literal["all_of", "any_of", "quorum"]
#: How an upstream ended, as ``ff_resolve_dependency`` takes it: only success satisfies.
UpstreamOutcome = Literal["success", "failed", "cancelled", "expired", "skipped"]


class FlowFcall(Fcall[ResultT]):
    """An FCALL on a flow's partition."""

    flow_id: str
    partition: int

    @property
    def flow_keys(self) -> FlowKeys:
        return FlowKeys(self.flow_id, self.partition)

    @property
    def index(self) -> PartitionKeys:
        return PartitionKeys(self.partition)


# -- the flow and its members -----------------------------------------------------------------


class CreateFlow(FlowFcall[bool]):
    """``ff_create_flow``; True when created, False when it already existed."""

    function = "ff_create_flow"
    flow_kind: str
    namespace: str

    def keys(self) -> list[str]:
        return [self.flow_keys.core, self.flow_keys.members, self.index.flow_index]

    def argv(self) -> list[str | bytes]:
        return [self.flow_id, self.flow_kind, self.namespace, "0"]

    def parse(self, reply: Reply) -> bool:
        return reply.status == "OK"


class FlowMembership(BaseModel):
    """``added`` is False when the execution was already a member."""

    added: bool
    node_count: int


class AddExecutionToFlow(FlowFcall[FlowMembership]):
    """``ff_add_execution_to_flow``: makes ``execution_id`` (minted on the flow's partition)
    a member and stamps ``flow_id`` on it."""

    function = "ff_add_execution_to_flow"
    execution_id: ExecutionId

    def keys(self) -> list[str]:
        flow = self.flow_keys
        return [flow.core, flow.members, self.index.flow_index, ExecKeys(self.execution_id).core]

    def argv(self) -> list[str | bytes]:
        return [self.flow_id, self.execution_id, "0"]

    def parse(self, reply: Reply) -> FlowMembership:
        return FlowMembership(added=reply.status == "OK", node_count=int(reply.fields[1]))


class SetFlowTags(FlowFcall[int]):
    """``ff_set_flow_tags``; tag names are ``<caller>.<name>``. Answers how many were set."""

    function = "ff_set_flow_tags"
    tags: dict[str, str]

    def keys(self) -> list[str]:
        return [self.flow_keys.core, self.flow_keys.tags]

    def argv(self) -> list[str | bytes]:
        return [item for pair in self.tags.items() for item in pair]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[0])


# -- cancellation -----------------------------------------------------------------------------


class FlowCancellation(BaseModel):
    """The stored cancellation policy and the members it names (``cancel_all``: every
    member is owed a cancel until acknowledged)."""

    cancellation_policy: str
    members: tuple[str, ...]


class CancelFlow(FlowFcall[FlowCancellation]):
    """``ff_cancel_flow``: marks the flow cancelled; members are cancelled by the caller and
    acknowledged, or by the cancel reconciler after ``grace_ms`` (default 30 s)."""

    function = "ff_cancel_flow"
    reason: str
    cancellation_policy: str = "cancel_all"
    grace_ms: int | None = None

    def keys(self) -> list[str]:
        flow = self.flow_keys
        return [flow.core, flow.members, self.index.flow_index, flow.pending_cancels, self.index.cancel_backlog]

    def argv(self) -> list[str | bytes]:
        return [self.flow_id, self.reason, self.cancellation_policy, "0", optional_number(self.grace_ms)]

    def parse(self, reply: Reply) -> FlowCancellation:
        return FlowCancellation(cancellation_policy=reply.fields[0], members=tuple(reply.fields[1:]))


class AckCancelMember(FlowFcall[None]):
    """``ff_ack_cancel_member``: one owed member cancel is done."""

    function = "ff_ack_cancel_member"
    execution_id: str

    def keys(self) -> list[str]:
        return [self.flow_keys.pending_cancels, self.index.cancel_backlog]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.flow_id]

    def parse(self, reply: Reply) -> None:
        return None


# -- edges ------------------------------------------------------------------------------------


class StageDependencyEdge(FlowFcall[int]):
    """``ff_stage_dependency_edge``: records ``upstream_id -> downstream_id`` on the flow if
    the graph is still at ``expected_graph_revision``; answers the new revision."""

    function = "ff_stage_dependency_edge"
    edge_id: str
    upstream_id: ExecutionId
    downstream_id: ExecutionId
    dependency_kind: str = "success_only"
    data_passing_ref: str = ""
    expected_graph_revision: int
    now_ms: int

    def keys(self) -> list[str]:
        flow = self.flow_keys
        return [
            flow.core,
            flow.members,
            flow.edge(self.edge_id),
            flow.outgoing(self.upstream_id),
            flow.incoming(self.downstream_id),
            flow.grant(self.edge_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.flow_id,
            self.edge_id,
            self.upstream_id,
            self.downstream_id,
            self.dependency_kind,
            self.data_passing_ref,
            str(self.expected_graph_revision),
            str(self.now_ms),
        ]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[1])


class SetEdgeGroupPolicy(FlowFcall[bool]):
    """``ff_set_edge_group_policy``: the join of ``downstream_id``'s inbound edges, before any
    is applied. False when the same policy was already set."""

    function = "ff_set_edge_group_policy"
    downstream_id: ExecutionId
    policy: EdgePolicy
    on_satisfied: Literal["cancel_remaining", "let_run", ""] = ""
    k: int = 0
    now_ms: int

    def keys(self) -> list[str]:
        return [self.flow_keys.core, self.flow_keys.edge_group(self.downstream_id)]

    def argv(self) -> list[str | bytes]:
        return [self.policy, self.on_satisfied, str(self.k), str(self.now_ms)]

    def parse(self, reply: Reply) -> bool:
        return reply.fields[0] == "set"


class ApplyDependencyToChild(ExecutionFcall[int | None]):
    """``ff_apply_dependency_to_child`` on the child ``execution_id``: records the staged
    edge there and blocks the child while it waits. Answers the child's unsatisfied count,
    or None when the edge was already applied."""

    function = "ff_apply_dependency_to_child"
    flow_id: str
    edge_id: str
    upstream_id: ExecutionId
    graph_revision: int
    dependency_kind: str = "success_only"
    data_passing_ref: str = ""
    lane_id: str
    now_ms: int

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.deps_meta,
            x.deps_unresolved,
            x.dep(self.edge_id),
            idx.eligible(self.lane_id),
            idx.blocked(self.lane_id, "dependencies"),
            x.deps_all_edges,
            FlowKeys(self.flow_id, self.execution_id.partition).edge_group(self.execution_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.flow_id,
            self.edge_id,
            self.upstream_id,
            str(self.graph_revision),
            self.dependency_kind,
            self.data_passing_ref,
            str(self.now_ms),
        ]

    def parse(self, reply: Reply) -> int | None:
        return None if reply.fields[0] == "already_applied" else int(reply.fields[0])


class DependencyResolution(BaseModel):
    """``outcome``: satisfied, impossible, pending (a group still counting), already_fired
    or already_resolved; ``detail``: data_injected, child_skipped or empty."""

    outcome: str
    detail: str = ""

    @property
    def child_skipped(self) -> bool:
        return self.detail == "child_skipped"


class ResolveDependency(ExecutionFcall[DependencyResolution]):
    """``ff_resolve_dependency`` on the child ``execution_id``: the edge's upstream ended
    with ``upstream_outcome``. The child's lane and current attempt come from a pre-read."""

    function = "ff_resolve_dependency"
    flow_id: str
    edge_id: str
    upstream_id: ExecutionId
    upstream_outcome: str
    lane_id: str
    attempt_index: int = 0
    now_ms: int

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        flow = FlowKeys(self.flow_id, self.execution_id.partition)
        return [
            x.core,
            x.deps_meta,
            x.deps_unresolved,
            x.dep(self.edge_id),
            idx.eligible(lane),
            idx.terminal(lane),
            idx.blocked(lane, "dependencies"),
            x.attempt(self.attempt_index),
            x.stream_meta(self.attempt_index),
            x.payload,
            ExecKeys(self.upstream_id).result,
            flow.edge_group(self.execution_id),
            flow.incoming(self.execution_id),
            idx.pending_cancel_groups,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.edge_id, self.upstream_outcome, str(self.now_ms), self.flow_id, self.execution_id]

    def parse(self, reply: Reply) -> DependencyResolution:
        return DependencyResolution(outcome=reply.fields[0], detail=(reply.fields[1:] or [""])[0])


class EvaluateFlowEligibility(ExecutionFcall[str]):
    """``ff_evaluate_flow_eligibility`` (read-only): not_found, not_runnable, owned, terminal,
    impossible, blocked_by_dependencies or eligible. Counts only all_of edges."""

    function = "ff_evaluate_flow_eligibility"

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.deps_meta]

    def argv(self) -> list[str | bytes]:
        return []

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class PromoteBlockedToEligible(ExecutionFcall[None]):
    """``ff_promote_blocked_to_eligible``: a dependency-blocked execution whose edges are all
    satisfied becomes eligible (``deps_not_satisfied`` otherwise)."""

    function = "ff_promote_blocked_to_eligible"
    lane_id: str
    now_ms: int

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            idx.blocked(self.lane_id, "dependencies"),
            idx.eligible(self.lane_id),
            x.deps_meta,
            x.deps_unresolved,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, str(self.now_ms)]

    def parse(self, reply: Reply) -> None:
        return None


# -- sibling cancellation of any_of / quorum groups -------------------------------------------


class DrainSiblingCancelGroup(FlowFcall[str]):
    """``ff_drain_sibling_cancel_group``: the group's owed sibling cancels were dispatched.
    Answers drained, drained_sans_group or already_drained."""

    function = "ff_drain_sibling_cancel_group"
    downstream_id: str

    def keys(self) -> list[str]:
        return [self.index.pending_cancel_groups, self.flow_keys.edge_group(self.downstream_id)]

    def argv(self) -> list[str | bytes]:
        return [self.flow_id, self.downstream_id]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class ReconcileSiblingCancelGroup(DrainSiblingCancelGroup):
    """``ff_reconcile_sibling_cancel_group``: clears a group whose listed siblings all ended
    (completed_drain), drops a stale entry (sremmed_stale) or leaves it (no_op)."""

    function = "ff_reconcile_sibling_cancel_group"


# -- replay -----------------------------------------------------------------------------------


class ReplayExecution(ExecutionFcall[int]):
    """``ff_replay_execution``; answers the unsatisfied-edge count (0 on the normal path).
    ``edge_ids`` are the inbound edges, used only for a skipped flow member."""

    function = "ff_replay_execution"
    lane_id: str
    edge_ids: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        keys = [x.core, idx.terminal(self.lane_id), idx.eligible(self.lane_id), x.lease_history]
        if self.edge_ids:
            keys += [
                idx.blocked(self.lane_id, "dependencies"),
                x.deps_meta,
                x.deps_unresolved,
                *(x.dep(edge) for edge in self.edge_ids),
            ]
        return keys

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, "0", *self.edge_ids]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[0])
