"""FlowFabric's retention trimmer: a terminal execution is deleted, with every key and index
entry that names it, once its retention has passed.

An execution's retention is its policy's ``stream_policy.retention_ttl_ms`` (FlowFabric's
per-execution override), else its lane's (``lane_retention_s``), else the default
(``retention_s``); ``None`` or :data:`KEEP_FOREVER_MS` keeps it. So that an execution kept
long never holds back the rest of its lane, trimming runs in two passes, each batched:

1. **index** — executions that became terminal since the last pass (a cursor per partition
   and lane, on the completion time) are added to ``ffc:retention:{fp:N}:due``, scored by
   the time their retention ends;
2. **delete** — those due are deleted, a page of one partition per transaction: their cores
   are watched, then re-checked (a replayed execution is not terminal any more, a
   re-completed one is due later, a flow member that a live member waits for is kept), so a
   change meanwhile makes the delete a no-op.

Both go on page after page while pages come back full, for a bounded time per run.

Deleting also removes ff_celery's own keys naming the execution: its alias and its
FlowFabric idempotency key (while they still name it) and its next-attempt payload; and its
place in a flow (edges in and out, its join, its membership): the flow itself goes with its
last member.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.executor import Batch
from ff_celery.engine.core.flows import FlowRef
from ff_celery.engine.core.ids import ExecutionId, valid_execution_ids
from ff_celery.engine.core.keys import (
    ALIAS_TAG,
    IDEMPOTENCY_KEY_TAG,
    ExecKeys,
    PartitionKeys,
    alias_key,
    next_attempt_payload_key,
    retention_cursor_key,
    retention_due_key,
)
from ff_celery.engine.core.policy import KEEP_FOREVER_MS, ExecutionPolicy
from ff_celery.engine.core.work_index import ScanPlan

log = logging.getLogger(__name__)

#: What deleting an execution reads of its exec_core.
CORE_FIELDS = (
    CoreField.COMPLETED_AT,
    CoreField.TOTAL_ATTEMPT_COUNT,
    CoreField.LANE_ID,
    CoreField.NAMESPACE,
    CoreField.FLOW_ID,
)

#: Completions this recent are left to the next pass: none can still arrive with an earlier
#: completion time, so the cursor never passes an execution it has not seen.
SETTLE_MS = 1000
#: How long one trim goes on before it lets the other scanners run (it is run again at once
#: when it had work left).
TRIM_BUDGET_S = 1.0


@dataclass(frozen=True)
class RetentionRules:
    """How long terminal executions are kept, in seconds (None: forever)."""

    default_s: float | None
    per_lane_s: dict[str, float | None]

    def retention_ms(self, lane: str, policy_json: bytes | None) -> int | None:
        """The execution's retention in ms; None keeps it forever."""
        try:
            own = ExecutionPolicy.from_json(policy_json).retention_ms
        except ValueError:  # a policy no client wrote: FlowFabric falls back to the default
            own = None
        if own is not None:
            return None if own >= KEEP_FOREVER_MS else own
        seconds = self.per_lane_s.get(lane, self.default_s)
        return None if seconds is None else int(seconds * 1000)


class RetentionTrimmer:
    """The two passes over the partitions and lanes of ``plan()`` (where executions may be:
    :mod:`ff_celery.engine.core.work_index`), ``batch_size`` entries per zset and page; each goes
    on, page after page, where pages come back full."""

    def __init__(self, engine: Engine, rules: RetentionRules, plan: Callable[[], ScanPlan], batch_size: int) -> None:
        self.engine, self.rules, self.plan, self.batch_size = engine, rules, plan, batch_size
        #: Whether the last :meth:`trim` ran out of time with work left (run it again soon).
        self.behind = False

    def trim(self, now_ms: int | None = None, budget_s: float = TRIM_BUDGET_S) -> int:
        """Both passes as of ``now_ms`` (default: engine time), a page of each per round,
        until no page comes back full or ``budget_s`` has passed (:attr:`behind` then says
        so). Answers how many executions were deleted."""
        deadline = time.monotonic() + budget_s
        now = self.engine.server_time_ms() if now_ms is None else now_ms
        plan = self.plan()
        slots, partitions, deleted = plan.lane_slots, plan.partitions, 0
        while slots or partitions:
            if slots:
                slots, indexed = self._index_page(now - SETTLE_MS, slots)
                partitions = sorted({*partitions, *indexed})
            if partitions:
                count, partitions = self._delete_page(now, partitions)
                deleted += count
            if time.monotonic() >= deadline:
                break
        self.behind = bool(slots or partitions)
        return deleted

    # -- pass 1: index ---------------------------------------------------------------------

    def _index_page(self, upto_ms: int, slots: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], set[int]]:
        """Index a page of each (partition, lane) slot's executions that completed after its
        cursor and at or before ``upto_ms``, by the end of their retention. Answers the slots
        whose page was full (more may follow) and the partitions where some were indexed."""
        reads = self.engine.batch()
        for partition, lane in slots:
            reads.command("hget", retention_cursor_key(partition), lane)
        cursors = [text(cursor) for cursor in reads.execute()]
        reads = self.engine.batch()
        for (partition, lane), cursor in zip(slots, cursors):
            terminal = PartitionKeys(partition).terminal(lane)
            start = f"({cursor}" if cursor else "-inf"
            reads.command("zrangebyscore", terminal, start, upto_ms, start=0, num=self.batch_size, withscores=True)
        pages = [page if isinstance(page, list) else [] for page in reads.execute()]
        full = [slot for slot, page in zip(slots, pages) if len(page) >= self.batch_size]
        self._complete_ties(slots, pages)
        found = [
            (partition, lane, eid)
            for (partition, lane), page in zip(slots, pages)
            for member, _ in page
            for eid in valid_execution_ids([member], f"the terminal set of lane {lane}")
        ]
        reads = self.engine.batch()
        for _, _, eid in found:
            reads.command("hget", ExecKeys(eid).core, CoreField.COMPLETED_AT)
            reads.command("get", ExecKeys(eid).policy)
        replies = reads.execute()
        writes, indexed = self.engine.batch(), set()
        for position, (partition, lane, eid) in enumerate(found):
            completed_at, policy_json = _millis(replies[2 * position]), replies[2 * position + 1]
            if completed_at is None:  # no longer terminal (replayed) or gone
                continue
            retention_ms = self.rules.retention_ms(lane, policy_json)
            if retention_ms is not None:
                writes.command("zadd", retention_due_key(partition), {eid: completed_at + retention_ms})
                indexed.add(partition)
        for (partition, lane), page in zip(slots, pages):
            if page:
                writes.command("hset", retention_cursor_key(partition), lane, int(page[-1][1]))
        writes.execute()
        return full, indexed

    def _complete_ties(self, slots: list[tuple[int, str]], pages: list[list]) -> None:
        """A full page ends with the whole group sharing its last completion time, so the
        cursor (exclusive) moves past no execution unseen."""
        full = [n for n, page in enumerate(pages) if len(page) >= self.batch_size]
        if not full:
            return
        reads = self.engine.batch()
        for n in full:
            partition, lane = slots[n]
            last = pages[n][-1][1]
            reads.command("zrangebyscore", PartitionKeys(partition).terminal(lane), last, last, withscores=True)
        for n, group in zip(full, reads.execute()):
            seen = {member for member, _ in pages[n]}
            pages[n].extend(entry for entry in group if entry[0] not in seen)

    # -- pass 2: delete ----------------------------------------------------------------------

    def _delete_page(self, now_ms: int, partitions: list[int]) -> tuple[int, list[int]]:
        """Delete a page of each partition's indexed executions whose retention has ended.
        Answers how many were deleted and the partitions with more to do (a full page, or
        one whose executions changed while it was read)."""
        reads = self.engine.batch()
        for partition in partitions:
            reads.command("zrangebyscore", retention_due_key(partition), "-inf", now_ms, start=0, num=self.batch_size)
        deleted, again = 0, []
        for partition, members in zip(partitions, reads.execute()):
            members = members if isinstance(members, list) else []
            due = list(valid_execution_ids(members, "a retention index"))
            if len(due) < len(members):  # never to be deleted: out of the index, or it stalls it
                self.engine.redis.zrem(retention_due_key(partition), *(m for m in members if text(m) not in due))
            if not due:
                continue
            count = self._delete_guarded(partition, due, now_ms)
            deleted += count or 0
            if count is None or len(members) >= self.batch_size:
                again.append(partition)
        return deleted, again

    def _delete_guarded(self, partition: int, due: list[ExecutionId], now_ms: int) -> int | None:
        """Delete ``due`` (of one partition) as one transaction, read and decided on after
        their cores are watched: a replay or a new completion meanwhile makes it a no-op.
        Answers how many were deleted, or None if a core changed (to be done again)."""
        plan = _DeletePlan()
        outcome = self.engine.transaction(
            [ExecKeys(eid).core for eid in due], lambda _: self._plan_deletes(partition, due, now_ms, plan)
        )
        if outcome is None:
            return None
        self._forget_names(plan.expired)
        self._forget_emptied_flows(plan.flows)
        return len(plan.expired)

    def _plan_deletes(self, partition: int, due: list[ExecutionId], now_ms: int, plan: _DeletePlan) -> Batch:
        """The writes deleting ``due`` (noted in ``plan``), from what they hold now: one
        terminal again, due later, or still needed by a flow member waiting for it is put
        back in the index for later."""
        plan.expired.clear()  # a transaction tried again plans afresh
        plan.flows.clear()
        reads = self.engine.batch()
        for eid in due:
            keys = ExecKeys(eid)
            reads.command("hmget", keys.core, CORE_FIELDS)
            reads.command("hmget", keys.tags, (ALIAS_TAG, IDEMPOTENCY_KEY_TAG))
            reads.command("get", keys.policy)
            reads.command("smembers", keys.waitpoints)
            reads.command("zrange", keys.signals, 0, -1)  # a zset: signal ids by acceptance time
            reads.command("smembers", keys.deps_all_edges)
        replies = reads.execute()
        awaited = self._awaited_by_live_members(partition, due, [replies[6 * n] for n in range(len(due))])
        writes, index = self.engine.batch(), PartitionKeys(partition)
        for position, eid in enumerate(due):
            core, (alias, idempotency_key), policy_json, *members = replies[6 * position : 6 * position + 6]
            completed_at, attempts, lane, namespace, flow_id = core
            lane, completed_at = text(lane) or "default", _millis(completed_at)
            retention_ms = self.rules.retention_ms(lane, policy_json) if completed_at is not None else None
            if retention_ms is not None and completed_at + retention_ms > now_ms:  # completed again since
                writes.command("zadd", retention_due_key(partition), {eid: completed_at + retention_ms})
                continue
            if retention_ms is not None and eid in awaited:  # looked at again a retention later
                writes.command("zadd", retention_due_key(partition), {eid: now_ms + max(retention_ms, SETTLE_MS)})
                continue
            writes.command("zrem", retention_due_key(partition), eid)
            if retention_ms is None:  # not terminal any more, gone, or now kept forever
                continue
            waitpoints, signals, edges = ([text(m) for m in found] if isinstance(found, list | set) else []
                                          for found in members)  # fmt: skip
            attempt_count = _millis(attempts) or 0
            for key in (
                *ExecKeys(eid).every_key(attempt_count, waitpoints, signals, edges),
                next_attempt_payload_key(eid),
            ):
                writes.command("delete", key)  # one key per DEL: a cluster's pipeline takes no other
            writes.command("srem", index.all_executions, eid)
            writes.command("zrem", index.terminal(lane), eid)
            if flow_id:  # its place in the flow: its edges in and out, its join, its membership
                flow = FlowRef(text(flow_id), partition)
                for key in (flow.keys.outgoing(eid), flow.keys.incoming(eid), flow.keys.edge_group(eid)):
                    writes.command("delete", key)
                for edge_id in edges:
                    writes.command("delete", flow.keys.edge(edge_id))
                writes.command("srem", flow.keys.members, eid)
                plan.flows.add(flow)
            ns = text(namespace)
            plan.expired.append(
                _Expired(
                    eid,
                    alias_key(ns, text(alias)) if alias else None,
                    index.idempotency(ns, text(idempotency_key)) if idempotency_key else None,
                )
            )
        return writes

    def _awaited_by_live_members(self, partition: int, due: list[ExecutionId], cores: list) -> set[ExecutionId]:
        """Those of ``due`` that are flow members with a downstream member not yet terminal
        (it reads their result when it runs)."""
        upstream = [(eid, FlowRef(text(core[4]), partition)) for eid, core in zip(due, cores) if core[4]]
        if not upstream:
            return set()
        reads = self.engine.batch()
        for eid, flow in upstream:
            reads.command("smembers", flow.keys.outgoing(eid))
        edges = [(eid, flow, text(edge)) for (eid, flow), out in zip(upstream, reads.execute())
                 for edge in (out if isinstance(out, set) else ())]  # fmt: skip
        reads = self.engine.batch()
        for _, flow, edge_id in edges:
            reads.command("hget", flow.keys.edge(edge_id), "downstream_execution_id")
        children = [(eid, child) for (eid, _, _), found in zip(edges, reads.execute())
                    for child in valid_execution_ids([found] if found else [], "a flow edge")]  # fmt: skip
        reads = self.engine.batch()
        for _, child in children:
            reads.command("hget", ExecKeys(child).core, CoreField.LIFECYCLE_PHASE)
        return {eid for (eid, _), phase in zip(children, reads.execute()) if text(phase) not in ("", "terminal")}

    def _forget_emptied_flows(self, flows: set[FlowRef]) -> None:
        """Delete the flows whose last member was just deleted, with their index entries."""
        ordered = sorted(flows, key=lambda flow: flow.flow_id)
        reads = self.engine.batch()
        for flow in ordered:
            reads.command("scard", flow.keys.members)
        emptied = [flow for flow, left in zip(ordered, reads.execute()) if left == 0]
        if not emptied:
            return
        writes = self.engine.batch()
        for flow in emptied:
            keys, index = flow.keys, PartitionKeys(flow.partition)
            for key in (keys.core, keys.members, keys.pending_cancels, keys.summary, keys.tags):
                writes.command("delete", key)
            writes.command("srem", index.flow_index, flow.flow_id)
            writes.command("zrem", index.cancel_backlog, flow.flow_id)
        writes.execute()

    def _forget_names(self, expired: list[_Expired]) -> None:
        """Delete the alias and idempotency keys that still name a deleted execution (a task
        that replaced itself has its alias on its successor)."""
        named = [(key, item.execution_id) for item in expired for key in (item.alias_key, item.idempotency_key) if key]
        if not named:
            return
        reads = self.engine.batch()
        for key, _ in named:
            reads.command("get", key)
        stale = [key for (key, owner), value in zip(named, reads.execute()) if text(value) == owner]
        deletes = self.engine.batch()
        for key in stale:  # one key per command: on a cluster they live in different slots
            deletes.command("delete", key)
        if stale:
            deletes.execute()


@dataclass(frozen=True)
class _Expired:
    execution_id: str
    alias_key: str | None
    idempotency_key: str | None


@dataclass
class _DeletePlan:
    """What one guarded delete removes besides the executions' own keys."""

    expired: list[_Expired] = field(default_factory=list)
    flows: set[FlowRef] = field(default_factory=set)


def _millis(value: object) -> int | None:
    """A stored whole number (a time in ms, a count), or None if absent or malformed."""
    written = text(value)
    return int(written) if written.isdigit() else None
