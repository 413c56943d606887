"""The flow duties of FlowFabric's engine, for deployments without its server (run by
:class:`ff_celery.engine.duties.scanners.EngineScanners`, on its leader):

- the completion listener: every message on ``ff:dag:completions`` (a flow member ended)
  runs the cascade (:meth:`Flows.cascade`);
- the dependency reconciler: dependency-blocked members whose upstream already ended (a
  completion message nobody heard) are resolved;
- the cancel reconciler: members a flow cancellation still owes a cancel (``cancel_backlog``
  past its grace) are cancelled and acknowledged;
- the edge-cancel dispatcher and reconciler: siblings of a fired any_of / quorum group are
  cancelled, and groups whose siblings all ended are cleared;
- the flow projector: each indexed flow's member states are sampled into its summary.

Flows live on the partitions of the plan's ``others`` (those ff_celery recorded, or every one
on a full sweep: :mod:`ff_celery.engine.core.work_index`); a scanner that finds none of its indexes
there costs one command.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.connection import refresh_slot_map
from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.flows import SETTLED_CANCEL_CODES, FlowRef
from ff_celery.engine.core.ids import ExecutionId, valid_execution_ids
from ff_celery.engine.core.keys import DAG_COMPLETIONS_CHANNEL, ExecKeys, FlowKeys, PartitionKeys
from ff_celery.engine.core.work_index import ScanPlan, present

log = logging.getLogger(__name__)

#: What FlowFabric's scanners take from each partition per cycle.
BLOCKED_PER_LANE, EDGES_PER_MEMBER, BACKLOG_PER_PARTITION, GROUPS_PER_PARTITION = 50, 20, 50, 50
PENDING_CANCELS_PER_FLOW, PROJECTED_SAMPLE = 500, 50
#: Completion messages taken into one batched cascade.
COMPLETIONS_PER_CASCADE = 200
TERMINAL_STATES = ("completed", "skipped", "failed", "cancelled", "expired")
SUMMARY_STATES = (*TERMINAL_STATES, "active", "suspended", "waiting", "delayed", "rate_limited", "waiting_children")


class FlowDuties:
    """Flow scanners over the partitions where flows may be (``plan().others``)."""

    def __init__(self, engine: Engine, plan: Callable[[], ScanPlan]) -> None:
        self.engine = engine
        self.plan = plan
        self._completions: redis.client.PubSub | None = None
        #: Whether this instance has reconciled since it began to lead on this subscription.
        self._caught_up = False

    def _present(self, index_of: Callable[[PartitionKeys], str]) -> list[PartitionKeys]:
        """The partitions of the plan where the index ``index_of`` names exists."""
        indexes = [PartitionKeys(p) for p in self.plan().others]
        return [index for _, index in present(self.engine, [(i.partition, index_of(i), i) for i in indexes])]

    def _read(self, commands: Iterable[tuple[Any, ...]]) -> list[Any]:
        batch = self.engine.batch()
        for name, *args in commands:
            batch.command(name, *args)
        return batch.execute()

    # -- the completion listener --------------------------------------------------------------

    def listen(self, timeout_s: float, *, leading: bool) -> int:
        """Take the completion messages that arrive within ``timeout_s`` and, when
        ``leading``, cascade them (others drop theirs). Subscribes on first use (the
        subscription is kept while leadership moves, so the channel set stays stable);
        becoming the leader, or subscribing again after a dropped connection, catches up
        with the dependency reconciler. Answers how many edges were resolved."""
        resolved = 0
        try:
            if self._completions is None:
                self._completions = self.engine.redis.pubsub(ignore_subscribe_messages=True)
                self._completions.subscribe(DAG_COMPLETIONS_CHANNEL)
                self._caught_up = False
            if leading and not self._caught_up:
                resolved += self.reconcile_dependencies()  # what ended while nobody cascaded
            self._caught_up = leading
            ended = []
            message = self._completions.get_message(timeout=timeout_s)
            while message is not None and len(ended) < COMPLETIONS_PER_CASCADE:
                ended += self._ended(message.get("data"))
                message = self._completions.get_message(timeout=0)
        except redis.RedisError as exc:  # the reconciler covers what is missed meanwhile
            log.warning("flow completion listener failed (%s); resubscribing", exc)
            self.stop_listening()
            refresh_slot_map(self.engine.redis)  # a failover: the channel's node may have changed
            time.sleep(timeout_s)  # not again at once: the node may still be down
            return resolved
        if ended and leading:
            try:
                resolved += self.engine.flows.cascade_many(ended)
            except EngineError as exc:
                log.warning("cascade after %d completion(s) failed (the reconciler retries): %s", len(ended), exc)
        return resolved

    def stop_listening(self) -> None:
        if self._completions is not None:
            with contextlib.suppress(redis.RedisError):
                self._completions.close()
            self._completions = None

    @staticmethod
    def _ended(data: Any) -> list[tuple[ExecutionId, str]]:
        """The member and flow a completion message names (none if it is malformed)."""
        try:
            notice = json.loads(text(data))
            return [(ExecutionId(str(notice["execution_id"])), str(notice["flow_id"]))]
        except (ValueError, TypeError, KeyError, EngineError):
            log.warning("ignoring a malformed flow completion message: %r", data)
            return []

    # -- scanners -----------------------------------------------------------------------------

    def reconcile_dependencies(self) -> int:
        """Resolve the edges of dependency-blocked members whose upstream already ended (a
        completion nobody heard): every read batched across members, a cascade per ended
        upstream. Answers how many edges were resolved."""
        plan = self.plan()
        slots = [(p, PartitionKeys(p).blocked(lane, "dependencies"), lane) for p in plan.others for lane in plan.lanes]
        blocked = self._read(("zrange", key, 0, BLOCKED_PER_LANE - 1) for key, _ in present(self.engine, slots))
        members = list(
            valid_execution_ids(
                (m for found in blocked if isinstance(found, list) for m in found), "a blocked:dependencies index"
            )
        )
        unresolved = self._read(("srandmember", ExecKeys(eid).deps_unresolved, EDGES_PER_MEMBER) for eid in members)
        deps = [(eid, text(edge)) for eid, edges in zip(members, unresolved) for edge in edges or ()]
        fields = ("upstream_execution_id", "flow_id")
        upstreams = {
            text(upstream): text(flow_id)
            for upstream, flow_id in self._read(("hmget", ExecKeys(eid).dep(edge), fields) for eid, edge in deps)
            if upstream and flow_id
        }
        candidates = list(valid_execution_ids(sorted(upstreams), "a dependency's upstream"))
        phases = self._read(("hget", ExecKeys(eid).core, CoreField.LIFECYCLE_PHASE) for eid in candidates)
        ended = [eid for eid, phase in zip(candidates, phases) if phase == b"terminal"]
        return self.engine.flows.cascade_many([(eid, upstreams[eid]) for eid in ended])

    def reconcile_cancels(self) -> int:
        """Cancel the members flow cancellations still owe, once their grace has passed."""
        partitions = self._present(lambda index: index.cancel_backlog)
        if not partitions:
            return 0
        now = self.engine.server_time_ms()
        due = self._read(
            ("zrangebyscore", index.cancel_backlog, "-inf", now, 0, BACKLOG_PER_PARTITION) for index in partitions
        )
        cancelled = 0
        for index, flow_ids in zip(partitions, due):
            for flow_id in (text(f) for f in flow_ids or ()):
                cancelled += self._settle_backlog(FlowRef(flow_id, index.partition), index)
        return cancelled

    def _settle_backlog(self, flow: FlowRef, index: PartitionKeys) -> int:
        keys = flow.keys
        exists, owed, reason = self._read(
            [
                ("exists", keys.core),
                ("srandmember", keys.pending_cancels, PENDING_CANCELS_PER_FLOW),
                ("hget", keys.core, "cancel_reason"),
            ]
        )
        if not exists:
            self._read([("delete", keys.pending_cancels), ("zrem", index.cancel_backlog, flow.flow_id)])
            return 0
        if not owed:
            self._read([("zrem", index.cancel_backlog, flow.flow_id)])
            return 0
        members = [text(m) for m in owed]
        return len(self.engine.flows.cancel_members(flow, members, text(reason) if reason else "flow_cancelled"))

    def dispatch_sibling_cancels(self) -> int:
        """Cancel the listed siblings of fired any_of / quorum groups, then drain each group."""
        cancelled = 0
        for index, flow_id, child in self._pending_groups():
            group = FlowKeys(flow_id, index.partition).edge_group(child)
            siblings, reason = self._read(
                [("hmget", group, ("cancel_siblings_pending_members", "cancel_siblings_reason"))]
            )[0]
            for sibling in valid_execution_ids(text(siblings).split("|") if siblings else [], "a sibling list"):
                try:
                    self.engine.cancel(sibling, text(reason) if reason else "sibling_quorum_satisfied")
                    cancelled += 1
                except EngineError as exc:
                    if exc.code not in SETTLED_CANCEL_CODES:
                        log.warning("cancelling sibling %s failed: %s", sibling, exc)
            drain = fn.DrainSiblingCancelGroup(flow_id=flow_id, partition=index.partition, downstream_id=child)
            self.engine.call(drain)
        return cancelled

    def reconcile_sibling_cancels(self) -> int:
        """Clear sibling-cancel groups whose siblings all ended, and stale entries."""
        requests = [
            fn.ReconcileSiblingCancelGroup(flow_id=flow_id, partition=index.partition, downstream_id=child)
            for index, flow_id, child in self._pending_groups()
        ]
        return sum(1 for outcome in self.engine.call_many(requests) if outcome in ("completed_drain", "sremmed_stale"))

    def _pending_groups(self) -> list[tuple[PartitionKeys, str, str]]:
        partitions = self._present(lambda index: index.pending_cancel_groups)
        found = self._read(("srandmember", index.pending_cancel_groups, GROUPS_PER_PARTITION) for index in partitions)
        groups = []
        for index, entries in zip(partitions, found):
            for entry in entries or ():
                flow_id, _, child = text(entry).partition("|")
                if flow_id and child:
                    groups.append((index, flow_id, child))
        return groups

    def project_flows(self) -> int:
        """Write each indexed flow's summary from a sample of its members; flows whose every
        member ended leave the index. Three round trips a cycle, however many flows. Answers
        how many flows were projected."""
        partitions = self._present(lambda index: index.flow_index)
        indexed = self._read(("smembers", index.flow_index) for index in partitions)
        flows = [
            FlowRef(text(f), index.partition) for index, found in zip(partitions, indexed) for f in sorted(found or ())
        ]
        reads: list[tuple[Any, ...]] = []
        for flow in flows:
            keys = flow.keys
            reads += [("exists", keys.core), ("scard", keys.members), ("srandmember", keys.members, PROJECTED_SAMPLE)]
        replies = self._read(reads)
        samples = []  # (flow, total members, sampled members)
        writes: list[tuple[Any, ...]] = []
        for n, flow in enumerate(flows):
            exists, total, sample = replies[3 * n : 3 * n + 3]
            if not exists:
                writes.append(("srem", PartitionKeys(flow.partition).flow_index, flow.flow_id))
                continue
            members = list(valid_execution_ids(sample or (), f"flow {flow.flow_id}"))
            if total and members:
                samples.append((flow, total, members))
        states = iter(
            self._read(
                ("hget", ExecKeys(eid).core, CoreField.PUBLIC_STATE) for _, _, sampled in samples for eid in sampled
            )
        )
        now = self.engine.now_ms()
        for flow, total, members in samples:
            counts = Counter(text(state) if state else "unknown" for state in (next(states) for _ in members))
            writes += self._summary(flow, total, len(members), counts, now)
        if writes:
            self._read(writes)
        return len(samples)

    @staticmethod
    def _summary(flow: FlowRef, total: int, sampled: int, counts: Counter[str], now: int) -> list[tuple[Any, ...]]:
        """The writes of a flow's summary (and, once every member ended, its leaving the index)."""
        all_ended = sum(counts[state] for state in TERMINAL_STATES) == sampled
        if all_ended:
            failed = counts["failed"] or counts["cancelled"] or counts["expired"]
            flow_state = "failed" if failed else "completed"
        elif counts["active"]:
            flow_state = "running"
        elif counts["suspended"] or counts["delayed"] or counts["rate_limited"] or counts["waiting_children"]:
            flow_state = "blocked"
        else:
            flow_state = "open"
        summary = {"total_members": total, "sampled_members": sampled}
        summary |= {f"members_{state}": counts[state] for state in SUMMARY_STATES}
        summary |= {"public_flow_state": flow_state, "last_summary_update_at": now}
        writes: list[tuple[Any, ...]] = [("hset", flow.keys.summary, None, None, summary)]
        if all_ended and sampled == total:
            writes.append(("srem", PartitionKeys(flow.partition).flow_index, flow.flow_id))
        return writes
