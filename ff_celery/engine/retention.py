"""FlowFabric's retention trimmer: a terminal execution is deleted, with every key and index
entry that names it, once its retention has passed.

An execution's retention is its policy's ``stream_policy.retention_ttl_ms`` (FlowFabric's
per-execution override), else its lane's (``lane_retention_s``), else the default
(``retention_s``); ``None`` or :data:`KEEP_FOREVER_MS` keeps it. So that an execution kept
long never holds back the rest of its lane, trimming runs in two passes, each batched:

1. **index** — executions that became terminal since the last pass (a cursor per partition
   and lane, on the completion time) are added to ``ffc:retention:{fp:N}:due``, scored by
   the time their retention ends;
2. **delete** — those due are deleted (re-checked first: a replayed execution is not
   terminal any more, a re-completed one is due later).

Deleting also removes ff_celery's own keys naming the execution: its alias and its
FlowFabric idempotency key (while they still name it) and its next-attempt payload; and its
place in a flow (edges in and out, its join, its membership): the flow itself goes with its
last member.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ff_celery.engine.client import Engine
from ff_celery.engine.decoding import text
from ff_celery.engine.flows import FlowRef
from ff_celery.engine.ids import valid_execution_ids
from ff_celery.engine.keys import (
    ALIAS_TAG,
    IDEMPOTENCY_KEY_TAG,
    ExecKeys,
    PartitionKeys,
    alias_key,
    next_attempt_payload_key,
    retention_cursor_key,
    retention_due_key,
)
from ff_celery.engine.policy import KEEP_FOREVER_MS, ExecutionPolicy

log = logging.getLogger(__name__)

#: What deleting an execution reads of its exec_core.
CORE_FIELDS = ("completed_at", "total_attempt_count", "lane_id", "namespace", "flow_id")

#: Completions this recent are left to the next pass: none can still arrive with an earlier
#: completion time, so the cursor never passes an execution it has not seen.
SETTLE_MS = 1000


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
    """The two passes over ``partitions`` and ``lanes()``, ``batch_size`` entries per zset."""

    def __init__(
        self, engine: Engine, rules: RetentionRules, lanes: Callable[[], Iterable[str]], batch_size: int
    ) -> None:
        self.engine, self.rules, self.lanes, self.batch_size = engine, rules, lanes, batch_size

    def trim(self) -> int:
        """Both passes; answers how many executions were deleted."""
        now = self.engine.server_time_ms()
        self.index_terminal(now - SETTLE_MS)
        return self.delete_due(now)

    @property
    def _partitions(self) -> range:
        return range(self.engine.partitions.num_flow_partitions)

    # -- pass 1: index ---------------------------------------------------------------------

    def index_terminal(self, upto_ms: int) -> int:
        """Index executions that completed after each lane's cursor and at or before
        ``upto_ms`` by the end of their retention. Answers how many were indexed."""
        lanes = sorted(self.lanes())
        if not lanes:
            return 0
        reads = self.engine.batch()
        for partition in self._partitions:
            reads.command("hgetall", retention_cursor_key(partition))
        cursors = reads.execute()
        slots = [(partition, lane) for partition in self._partitions for lane in lanes]
        reads = self.engine.batch()
        for partition, lane in slots:
            cursor = text(cursors[partition].get(lane.encode())) if isinstance(cursors[partition], dict) else None
            terminal = PartitionKeys(partition).terminal(lane)
            start = f"({cursor}" if cursor else "-inf"
            reads.command("zrangebyscore", terminal, start, upto_ms, start=0, num=self.batch_size, withscores=True)
        pages = [page if isinstance(page, list) else [] for page in reads.execute()]
        self._complete_ties(slots, pages)
        found = [
            (partition, lane, eid)
            for (partition, lane), page in zip(slots, pages)
            for member, _ in page
            for eid in valid_execution_ids([member], f"the terminal set of lane {lane}")
        ]
        if not found:
            return 0
        reads = self.engine.batch()
        for _, _, eid in found:
            reads.command("hget", ExecKeys(eid).core, "completed_at")
            reads.command("get", ExecKeys(eid).policy)
        replies = reads.execute()
        writes = self.engine.batch()
        for position, (partition, lane, eid) in enumerate(found):
            completed_at, policy_json = _millis(replies[2 * position]), replies[2 * position + 1]
            if completed_at is None:  # no longer terminal (replayed) or gone
                continue
            retention_ms = self.rules.retention_ms(lane, policy_json)
            if retention_ms is not None:
                writes.command("zadd", retention_due_key(partition), {eid: completed_at + retention_ms})
        for (partition, lane), page in zip(slots, pages):
            if page:
                writes.command("hset", retention_cursor_key(partition), lane, int(page[-1][1]))
        writes.execute()
        return len(found)

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

    def delete_due(self, now_ms: int) -> int:
        """Delete the indexed executions whose retention has ended. Answers how many."""
        reads = self.engine.batch()
        for partition in self._partitions:
            reads.command("zrangebyscore", retention_due_key(partition), "-inf", now_ms, start=0, num=self.batch_size)
        due = [
            (partition, eid)
            for partition, members in zip(self._partitions, reads.execute())
            for eid in valid_execution_ids(members if isinstance(members, list) else [], "a retention index")
        ]
        if not due:
            return 0
        reads = self.engine.batch()
        for _, eid in due:
            keys = ExecKeys(eid)
            reads.command("hmget", keys.core, CORE_FIELDS)
            reads.command("hmget", keys.tags, (ALIAS_TAG, IDEMPOTENCY_KEY_TAG))
            reads.command("get", keys.policy)
            reads.command("smembers", keys.waitpoints)
            reads.command("zrange", keys.signals, 0, -1)  # a zset: signal ids by acceptance time
            reads.command("smembers", keys.deps_all_edges)
        replies = reads.execute()
        expired: list[_Expired] = []
        flows: set[FlowRef] = set()
        writes = self.engine.batch()
        for position, (partition, eid) in enumerate(due):
            core, (alias, idempotency_key), policy_json, *members = replies[6 * position : 6 * position + 6]
            completed_at, attempts, lane, namespace, flow_id = core
            lane, completed_at = text(lane) or "default", _millis(completed_at)
            retention_ms = self.rules.retention_ms(lane, policy_json) if completed_at is not None else None
            if retention_ms is not None and completed_at + retention_ms > now_ms:  # completed again since
                writes.command("zadd", retention_due_key(partition), {eid: completed_at + retention_ms})
                continue
            writes.command("zrem", retention_due_key(partition), eid)
            if retention_ms is None:  # not terminal any more, gone, or now kept forever
                continue
            waitpoints, signals, edges = ([text(m) for m in found] if isinstance(found, list | set) else []
                                          for found in members)  # fmt: skip
            attempt_count = _millis(attempts) or 0
            index = PartitionKeys(partition)
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
                flows.add(flow)
            ns = text(namespace)
            expired.append(
                _Expired(
                    eid,
                    alias_key(ns, text(alias)) if alias else None,
                    index.idempotency(ns, text(idempotency_key)) if idempotency_key else None,
                )
            )
        writes.execute()
        self._forget_names(expired)
        self._forget_emptied_flows(flows)
        return len(expired)

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


def _millis(value: object) -> int | None:
    """A stored whole number (a time in ms, a count), or None if absent or malformed."""
    written = text(value)
    return int(written) if written.isdigit() else None
