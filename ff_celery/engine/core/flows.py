"""Flows on the engine: creating members together with their inbound edges, the completion
cascade that resolves ended members' outgoing edges (what FlowFabric's completion listener
does with ``ff:dag:completions``), cancelling a flow as one, finding why a skipped member was
skipped, and reading a flow whole.

Members and their inbound edges are written in one transaction (WATCH on the flow's core for
its graph revision; a whole canvas at once), so no claimer ever sees a member that should
wait as eligible. An upstream outside the transaction that ended before its edge existed is
resolved right after, and the dependency reconciler catches anything a lost completion
message left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ff_celery.engine import functions as fn
from ff_celery.engine.core.decoding import decode_fields, text
from ff_celery.engine.core.errors import EngineError, TransportError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.executor import Batch
from ff_celery.engine.core.ids import ExecutionId, new_uuid, valid_execution_ids
from ff_celery.engine.core.keys import ExecKeys, FlowKeys
from ff_celery.engine.core.new_execution import NewExecution

R = TypeVar("R")

log = logging.getLogger(__name__)

#: How deep a cascade follows skipped children (FlowFabric's limit).
MAX_CASCADE_DEPTH = 50
#: Attempts at a member's transaction when the flow's graph changed meanwhile.
MEMBER_WRITE_ATTEMPTS = 8
#: A cancel refused because the member already ended or is gone: nothing is owed.
SETTLED_CANCEL_CODES = frozenset({"execution_not_found", "execution_not_active"})


@dataclass(frozen=True)
class FlowRef:
    """A flow and the partition it (and every member) lives on."""

    flow_id: str
    partition: int

    @property
    def keys(self) -> FlowKeys:
        return FlowKeys(self.flow_id, self.partition)


class FlowEngine(Protocol):
    """What flow operations use of the engine (:class:`ff_celery.engine.core.engine.Engine`)."""

    def batch(self) -> Batch: ...

    def call(self, request: fn.Fcall[R]) -> R: ...

    def call_many(self, requests: list[fn.Fcall[Any]]) -> list[Any]: ...

    def transaction(self, watched: str, field: str, build: Callable[[bytes | None], Batch]) -> list[Any] | None: ...

    def now_ms(self) -> int: ...

    def read_core(self, execution_id: ExecutionId, *fields: str) -> dict[str, str]: ...

    def read_field(self, execution_id: ExecutionId, field: CoreField, default: str | None = None) -> str | None: ...

    def cancel(self, execution_id: ExecutionId, reason: str) -> str: ...

    def wake(self, lane: str, execution_id: ExecutionId | None = None) -> None: ...


class Flows:
    """Flow operations of one engine."""

    def __init__(self, engine: FlowEngine) -> None:
        self.engine = engine

    def _read(self, name: str, *args: Any) -> Any:
        """One plain command's reply."""
        batch = self.engine.batch()
        batch.command(name, *args)
        return batch.execute()[0]

    # -- building -----------------------------------------------------------------------------

    def create_members(
        self, flow: FlowRef, members: Sequence[NewExecution], flow_kind: str = "dag"
    ) -> list[fn.Created]:
        """Create ``members`` (minted on the flow's partition) in the flow (created if new),
        with an edge from each of their upstream members, in one transaction; an upstream
        that is not among them and has already ended is resolved right after."""
        members = list(members)
        if any(m.request.execution_id.partition != flow.partition for m in members):
            raise ValueError("a flow member must be minted on its flow's partition")
        if any(up.partition != flow.partition for m in members for up in m.upstream):
            raise ValueError("every upstream of a flow member must belong to the same flow")
        where = {"flow_id": flow.flow_id, "partition": flow.partition}
        namespace = members[0].request.namespace if members else ""

        # which outcomes are each member's: its create, (attachment,) membership, inbound edges
        owner: list[int | None] = []

        def build(revision: bytes | None) -> Batch:
            batch = self.engine.batch()
            owner.clear()
            batch.fcall(fn.CreateFlow(**where, flow_kind=flow_kind, namespace=namespace))
            owner.append(None)
            for n, member in enumerate(members):
                eid = member.request.execution_id
                batch.fcall(member.request)
                if member.attachment:  # right after the create, unseen by claimers
                    batch.command("hset", ExecKeys(eid).core, mapping=member.attachment)
                batch.fcall(fn.AddExecutionToFlow(**where, execution_id=eid))
                owner.extend([n] * (3 if member.attachment else 2))
            graph_revision = int(revision or 0) + len(members)  # every membership counts
            for n, member in enumerate(members):
                eid, lane = member.request.execution_id, member.request.lane_id
                edges = self._edge_requests(flow, eid, lane, member.upstream, graph_revision)
                for call in edges:
                    batch.fcall(call)
                owner.extend([n] * len(edges))
                graph_revision += len(member.upstream)
            return batch

        outcomes = self._write(flow, build)
        created: list[Any] = [outcomes[owner.index(n)] for n in range(len(members))]
        for outcome in created:
            if isinstance(outcome, EngineError):
                raise outcome
        # a member published before (the same task id) stays where it is: its calls fail
        for n, outcome in zip(owner, outcomes):
            if isinstance(outcome, EngineError) and (n is None or not created[n].duplicate):
                raise outcome
        ours = {member.request.execution_id for member in members}
        self._settle_ended_upstreams(flow, {up for m in members for up in m.upstream if up not in ours})
        return created

    def _write(self, flow: FlowRef, build: Callable[[bytes | None], Batch]) -> list[Any]:
        """Run the batch ``build`` makes from the flow's graph revision as one transaction,
        again if the graph changed meanwhile."""
        core = flow.keys.core
        for _ in range(MEMBER_WRITE_ATTEMPTS):
            outcomes = self.engine.transaction([core], lambda pipe: build(pipe.hget(core, "graph_revision")))
            if outcomes is not None:
                return outcomes
        raise TransportError(f"flow {flow.flow_id} kept changing while it was written", retryable=True)

    def _edge_requests(
        self, flow: FlowRef, child: ExecutionId, lane: str, upstream: Iterable[ExecutionId], revision: int
    ) -> list[fn.Fcall[Any]]:
        """Stage and apply an edge from each upstream into ``child``, the graph being at
        ``revision`` before the first."""
        now_ms = self.engine.now_ms()
        requests: list[fn.Fcall[Any]] = []
        for upstream_id in upstream:
            edge_id = new_uuid()
            requests.append(
                fn.StageDependencyEdge(
                    flow_id=flow.flow_id,
                    partition=flow.partition,
                    edge_id=edge_id,
                    upstream_id=upstream_id,
                    downstream_id=child,
                    expected_graph_revision=revision,
                    now_ms=now_ms,
                )
            )
            revision += 1
            requests.append(
                fn.ApplyDependencyToChild(
                    execution_id=child,
                    flow_id=flow.flow_id,
                    edge_id=edge_id,
                    upstream_id=upstream_id,
                    graph_revision=revision,
                    lane_id=lane,
                    now_ms=now_ms,
                )
            )
        return requests

    def add_dependencies(self, flow: FlowRef, child: ExecutionId, upstream: Iterable[ExecutionId]) -> None:
        """Make the member ``child`` also wait for ``upstream`` (members of the same flow):
        e.g. the tasks that replaced the one it waited for. Atomic, like a member's creation."""
        upstream = list(upstream)
        lane = self.engine.read_field(child, CoreField.LANE_ID, "default")

        def build(revision: bytes | None) -> Batch:
            batch = self.engine.batch()
            for call in self._edge_requests(flow, child, lane, upstream, int(revision or 0)):
                batch.fcall(call)
            return batch

        for outcome in self._write(flow, build):
            if isinstance(outcome, EngineError):
                raise outcome
        self._settle_ended_upstreams(flow, upstream)

    def children(self, flow: FlowRef, execution_id: ExecutionId) -> list[ExecutionId]:
        """The members that wait for ``execution_id``."""
        return self.children_of(flow, [execution_id])[execution_id]

    def children_of(self, flow: FlowRef, members: Sequence[ExecutionId]) -> dict[ExecutionId, list[ExecutionId]]:
        """The members that wait for each of ``members``, in two round trips."""
        reads = self.engine.batch()
        for eid in members:
            reads.command("smembers", flow.keys.outgoing(eid))
        edges = [(eid, text(edge)) for eid, out in zip(members, reads.execute()) for edge in sorted(out or ())]
        reads = self.engine.batch()
        for _, edge_id in edges:
            reads.command("hget", flow.keys.edge(edge_id), "downstream_execution_id")
        children: dict[ExecutionId, list[ExecutionId]] = {eid: [] for eid in members}
        for (eid, _), child in zip(edges, reads.execute()):
            children[eid].extend(valid_execution_ids([text(child)] if child else [], f"the children of {eid}"))
        return children

    def downstream_first(self, flow: FlowRef, members: Iterable[ExecutionId]) -> list[ExecutionId]:
        """``members`` ordered so that each comes after every one of them that waits for it
        (sinks first): cancelled in this order, no member ends before those downstream of it,
        so no cascade skips a member that is about to be cancelled."""
        members = sorted(set(members))
        children = self.children_of(flow, members)
        waiting_for = {eid: {c for c in children[eid] if c in children} for eid in members}  # children not placed
        parents: dict[ExecutionId, list[ExecutionId]] = {eid: [] for eid in members}
        for eid in members:
            for child in waiting_for[eid]:
                parents[child].append(eid)
        ordered, ready = [], [eid for eid in members if not waiting_for[eid]]
        while ready:
            eid = ready.pop()
            ordered.append(eid)
            for parent in parents[eid]:
                waiting_for[parent].discard(eid)
                if not waiting_for[parent]:
                    ready.append(parent)
        placed = set(ordered)
        return ordered + [eid for eid in members if eid not in placed]  # a cycle no flow has

    def _settle_ended_upstreams(self, flow: FlowRef, upstream: Iterable[ExecutionId]) -> None:
        """Resolve the new edges of upstreams that ended before the edges existed (their
        completion message found no edge to resolve); the cascade passes over the others."""
        self.cascade_many([(eid, flow.flow_id) for eid in sorted(upstream)])

    # -- the completion cascade ---------------------------------------------------------------

    def cascade(self, execution_id: ExecutionId, flow_id: str) -> int:
        """Resolve the outgoing edges of an ended member (see :meth:`cascade_many`)."""
        return self.cascade_many([(execution_id, flow_id)])

    def cascade_many(self, ended: Sequence[tuple[ExecutionId, str]], depth: int = 0) -> int:
        """Resolve the outgoing edges of ended members (execution, flow id): children whose
        last edge was satisfied become eligible (their lane is woken), children that can no
        longer run are skipped and cascaded in turn. Reads are batched across members, and an
        edge already resolved (by whoever got there first) costs no call. Idempotent;
        answers how many edges were resolved here."""
        engine = self.engine
        reads = engine.batch()
        for eid, flow_id in ended:
            reads.command("hget", ExecKeys(eid).core, CoreField.TERMINAL_OUTCOME)
            reads.command("smembers", FlowKeys(flow_id, eid.partition).outgoing(eid))
        replies = reads.execute()
        edges = []  # (upstream, its outcome, flow id, edge id)
        for n, (eid, flow_id) in enumerate(ended):
            outcome, outgoing = replies[2 * n], replies[2 * n + 1]
            if outcome and outcome != b"none":
                edges += [(eid, text(outcome), flow_id, text(edge)) for edge in sorted(outgoing or ())]
        if not edges:
            return 0
        reads = engine.batch()
        for eid, _, flow_id, edge_id in edges:
            reads.command("hget", FlowKeys(flow_id, eid.partition).edge(edge_id), "downstream_execution_id")
        children = [(edge, ExecutionId(text(child))) for edge, child in zip(edges, reads.execute()) if child]
        reads = engine.batch()
        for (_, _, _, edge_id), child in children:
            reads.command("hmget", ExecKeys(child).core, (CoreField.LANE_ID, CoreField.CURRENT_ATTEMPT_INDEX))
            reads.command("hget", ExecKeys(child).dep(edge_id), "state")
        replies = reads.execute()
        requests = [
            fn.ResolveDependency(
                execution_id=child,
                flow_id=flow_id,
                edge_id=edge_id,
                upstream_id=upstream,
                upstream_outcome=outcome,
                lane_id=text(fields[0]) if fields[0] else "default",
                attempt_index=int(fields[1]) if fields[1] else 0,
                now_ms=engine.now_ms(),
            )
            for n, ((upstream, outcome, flow_id, edge_id), child) in enumerate(children)
            for fields, dep_state in [(replies[2 * n], replies[2 * n + 1])]
            if dep_state == b"unsatisfied"
        ]
        resolved, satisfied, skipped = 0, [], []
        for request, result in zip(requests, engine.call_many(requests)):
            if isinstance(result, EngineError):
                log.warning("resolving edge %s into %s failed: %s", request.edge_id, request.execution_id, result)
                continue
            resolved += 1
            if result.outcome == "satisfied":
                satisfied.append(request)
            elif result.child_skipped:
                skipped.append((request.execution_id, request.flow_id))
        self._wake_promoted(satisfied)
        if skipped and depth < MAX_CASCADE_DEPTH:
            resolved += self.cascade_many(skipped, depth + 1)
        return resolved

    def _wake_promoted(self, resolved: list[fn.ResolveDependency]) -> None:
        """Wake the lanes of children that became eligible, naming those without admission."""
        if not resolved:
            return
        reads = self.engine.batch()
        for request in resolved:
            fields = (CoreField.ELIGIBILITY_STATE, CoreField.BUDGET_IDS, CoreField.QUOTA_POLICY_ID)
            reads.command("hmget", ExecKeys(request.execution_id).core, fields)
        for request, (eligibility, budgets, quota) in zip(resolved, reads.execute()):
            if eligibility == b"eligible_now":
                # budgets or a quota mean admission, which only a probe knows to check
                self.engine.wake(request.lane_id, None if budgets or quota else request.execution_id)

    # -- cancellation -------------------------------------------------------------------------

    def cancel(self, flow: FlowRef, reason: str) -> list[ExecutionId]:
        """Cancel the flow and every member that has not ended (FlowFabric's ``cancel_all``),
        acknowledging each; members the call could not reach are left to the cancel
        reconciler. Answers the members cancelled (here, or by a reconciler that got there first)."""
        engine = self.engine
        try:
            cancellation = engine.call(fn.CancelFlow(flow_id=flow.flow_id, partition=flow.partition, reason=reason))
        except EngineError as exc:
            if exc.code != "flow_already_terminal":
                raise
            members = [text(m) for m in self._read("smembers", flow.keys.pending_cancels) or ()]
        else:
            members = list(cancellation.members)
        return self.cancel_members(flow, members, reason)

    def cancel_members(self, flow: FlowRef, members: Iterable[str], reason: str) -> list[ExecutionId]:
        """Cancel each owed member, downstream members first, and acknowledge it; answers those
        now cancelled, here or by a concurrent cancel (a reconciler) that got there first."""
        cancelled = []
        for eid in self.downstream_first(flow, valid_execution_ids(members, f"flow {flow.flow_id}")):
            try:
                self.engine.cancel(eid, reason)
                cancelled.append(eid)
            except EngineError as exc:
                if exc.code not in SETTLED_CANCEL_CODES:
                    log.warning("cancelling %s of flow %s failed: %s", eid, flow.flow_id, exc)
                    continue
                if self.engine.read_field(eid, CoreField.TERMINAL_OUTCOME) == "cancelled":
                    cancelled.append(eid)
            self.engine.call(fn.AckCancelMember(flow_id=flow.flow_id, partition=flow.partition, execution_id=eid))
        return cancelled

    # -- reading ------------------------------------------------------------------------------

    def exists(self, flow: FlowRef) -> bool:
        return bool(self._read("exists", flow.keys.core))

    def flow_of(self, execution_id: ExecutionId) -> FlowRef | None:
        """The flow ``execution_id`` belongs to, if any."""
        flow_id = self.engine.read_field(execution_id, CoreField.FLOW_ID)
        return FlowRef(flow_id, execution_id.partition) if flow_id else None

    def skip_cause(self, execution_id: ExecutionId) -> ExecutionId | None:
        """The upstream whose outcome (not success, not itself a skip) made this skipped
        member's dependencies impossible, following skipped upstreams; None if none is found."""
        engine, current = self.engine, execution_id
        for _ in range(MAX_CASCADE_DEPTH):
            x = ExecKeys(current)
            edges = sorted(text(m) for m in self._read("smembers", x.deps_all_edges) or ())
            reads = engine.batch()
            for edge_id in edges:
                reads.command("hmget", x.dep(edge_id), ("state", "upstream_execution_id"))
            impossible = [text(up) for state, up in reads.execute() if state == b"impossible" and up]
            upstream = next(valid_execution_ids(impossible, f"the dependencies of {current}"), None)
            if upstream is None:
                return None
            outcome = engine.read_field(upstream, CoreField.TERMINAL_OUTCOME)
            if outcome != "skipped":
                return upstream
            current = upstream
        return None

    def describe(self, flow: FlowRef) -> FlowView:
        """The flow's record, members (with their state) and edges."""
        engine, keys = self.engine, flow.keys
        reads = engine.batch()
        reads.command("hgetall", keys.core)
        reads.command("smembers", keys.members)
        core, members = reads.execute()
        member_ids = list(valid_execution_ids(sorted(members or ()), f"flow {flow.flow_id}"))
        reads = engine.batch()
        for eid in member_ids:
            reads.command("hmget", ExecKeys(eid).core, MEMBER_FIELDS)
            reads.command("smembers", keys.outgoing(eid))
        replies = reads.execute()
        states = {eid: decode_fields(MEMBER_FIELDS, replies[2 * n]) for n, eid in enumerate(member_ids)}
        outgoing = {eid: sorted(text(e) for e in replies[2 * n + 1] or ()) for n, eid in enumerate(member_ids)}
        reads = engine.batch()
        ordered_edges = [(eid, edge_id) for eid in member_ids for edge_id in outgoing[eid]]
        for _, edge_id in ordered_edges:
            reads.command("hget", keys.edge(edge_id), "downstream_execution_id")
        edges = [(up, text(down)) for (up, _), down in zip(ordered_edges, reads.execute()) if down]
        return FlowView(
            flow=flow,
            record={text(k): text(v) for k, v in (core or {}).items()},
            members=states,
            edges=edges,
        )


#: Member fields a flow view shows.
MEMBER_FIELDS = (
    CoreField.PUBLIC_STATE,
    CoreField.TERMINAL_OUTCOME,
    CoreField.EXECUTION_KIND,
    CoreField.BLOCKING_DETAIL,
    CoreField.LANE_ID,
)


@dataclass(frozen=True)
class FlowView:
    """A flow as :meth:`Flows.describe` read it."""

    flow: FlowRef
    record: dict[str, str]
    members: dict[ExecutionId, dict[str, str]]
    edges: list[tuple[ExecutionId, str]]

    def upstream_of(self, member: ExecutionId) -> list[ExecutionId]:
        return [up for up, down in self.edges if down == member]

    def levels(self) -> dict[ExecutionId, int]:
        """Each member's depth: 0 for members that wait for nothing, else one more than the
        deepest member it waits for."""
        depth: dict[ExecutionId, int] = {}
        remaining = set(self.members)
        while remaining:
            ready = {m for m in remaining if all(up in depth for up in self.upstream_of(m))}
            if not ready:  # not a DAG (cannot happen through FlowFabric's functions): put the rest last
                ready = remaining
            for member in ready:
                depth[member] = 1 + max((depth.get(up, -1) for up in self.upstream_of(member)), default=-1)
            remaining -= ready
        return depth
