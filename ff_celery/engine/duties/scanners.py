"""Engine duties that FlowFabric leaves to background scanners, for deployments without
FlowFabric's server: promoting due delayed executions, marking lapsed leases expired and
requeueing them, expiring executions past their attempt timeout or deadline, applying
suspension timeouts, closing pending waitpoints nobody suspended on, unblocking executions
whose budget or quota has room again, resetting budgets on schedule, recounting quota
concurrency from live admissions, and the flow duties (:mod:`ff_celery.engine.duties.flows`:
the completion cascade and the flow reconcilers).

Any process may run them; a leader lock (``ffc:leader:scanners``) makes only one instance
active at a time, so N workers do not multiply the load. A cycle reads only where work may be
(:mod:`ff_celery.engine.core.work_index`): each lane's own partition and the partitions ff_celery
recorded for flows; every ``full_sweep_interval_s`` (and first) each scanner reads every
partition instead, for work other FlowFabric clients wrote elsewhere. A cycle that finds
nothing costs one command (an ``EXISTS`` over the indexes it would read; one per partition on
a cluster); one that finds something reads the due entries in one more round trip. Scanners
due together share one read of the lanes and recorded partitions.

Requeueing a lapsed lease: FlowFabric has no automatic reclaim, so the scanner reclaims the
execution itself (a new attempt of type ``reclaim``, counted against ``max_reclaim_count``)
and hands it straight back (``ClaimedTask.hand_back``), after which any worker claims it
through the resumed path and runs the task again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

import redis
from pydantic import BaseModel, ConfigDict, Field

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.connection import compare_and_set
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError, TransportError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import ExecutionId, new_uuid, valid_execution_ids
from ff_celery.engine.core.keys import (
    BLOCKED_SUFFIXES,
    LANE_REGISTRY_KEY,
    LANE_STATES,
    SCANNER_LEADER_KEY,
    ExecKeys,
    PartitionKeys,
    QuotaKeys,
    budget_resets_key,
    quota_policies_key,
    retention_cursor_key,
    retention_due_key,
)
from ff_celery.engine.core.work_index import ScanPlan, forget_unused_partitions, occupied, present, read_plan
from ff_celery.engine.duties.flows import FlowDuties
from ff_celery.engine.duties.retention import RetentionRules, RetentionTrimmer
from ff_celery.engine.work import budgets
from ff_celery.engine.work.claimed_task import ClaimedTask

log = logging.getLogger(__name__)

SCANNER_WORKER_ID = "ff-celery-scanner"
#: Items whose processing failed this many times in a row are skipped for SKIP_CYCLES cycles.
MAX_ITEM_FAILURES, SKIP_CYCLES = 3, 10

Item = TypeVar("Item")


#: A length of time in seconds: a finite number >= 0.
Seconds = Annotated[float, Field(ge=0)]


class ScannerSettings(BaseModel):
    """Scanner intervals (seconds) and limits: FlowFabric's defaults but the retention
    trimmer's interval. Every number is checked (finite, not negative): a bad one raises
    ``ValueError`` naming it."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    promote_interval_s: Seconds = 0.75
    lease_expiry_interval_s: Seconds = 1.5
    attempt_timeout_interval_s: Seconds = 2.0
    deadline_interval_s: Seconds = 5.0
    suspension_timeout_interval_s: Seconds = 2.0
    pending_waitpoint_interval_s: Seconds = 5.0
    unblock_interval_s: Seconds = 5.0
    budget_reset_interval_s: Seconds = 15.0
    quota_reconcile_interval_s: Seconds = 30.0
    #: FlowFabric's is 60 s: trimming every 5 s keeps memory within 10% under a steady load.
    retention_interval_s: Seconds = 5.0
    lane_cleanup_interval_s: Seconds = 300.0
    #: How often each scanner reads every partition, not only the lanes' own and those
    #: recorded in ``ffc:idx:partitions`` (for work other FlowFabric clients wrote elsewhere).
    full_sweep_interval_s: Seconds = 300.0
    partition_cleanup_interval_s: Seconds = 60.0
    dependency_reconcile_interval_s: Seconds = 15.0
    cancel_reconcile_interval_s: Seconds = 15.0
    edge_cancel_dispatch_interval_s: Seconds = 1.0
    edge_cancel_reconcile_interval_s: Seconds = 10.0
    flow_projector_interval_s: Seconds = 15.0
    #: Whether the leader listens on ``ff:dag:completions`` and runs each flow cascade.
    flow_completions: bool = True
    #: How long a terminal execution whose task did not say (see README "Retention") is kept
    #: (FlowFabric: 24 h; a Celery worker passes its ``result_expires``); None: forever.
    retention_s: Seconds | None = 86_400.0
    #: Lanes (queues) with a retention of their own, in seconds (None: forever).
    lane_retention_s: dict[str, Seconds | None] = Field(default_factory=dict)
    batch_size: int = Field(50, ge=1)
    leader_ttl_s: float = Field(10.0, gt=0)
    requeue_lease_ttl_ms: int = Field(30_000, ge=1)


@dataclass
class Scanner:
    """One duty of the leader: ``run`` (answering how many executions it handled) every
    ``interval_s``; a full sweep of every partition when ``next_sweep`` comes (see
    :meth:`EngineScanners.plan`)."""

    name: str
    interval_s: float
    run: Callable[[], int]
    #: Whether the last run left work over: it runs again as soon as the others due have.
    behind: Callable[[], bool] = lambda: False
    next_run: float = 0.0
    next_sweep: float = 0.0


class EngineScanners:
    """Runs the scanners in a background thread while this instance holds the leader lock."""

    def __init__(
        self,
        engine: Engine,
        *,
        settings: ScannerSettings | None = None,
        lanes: Iterable[str] = (),
        instance_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings or ScannerSettings()
        self.instance_id = instance_id or f"scanner-{new_uuid()}"
        self.configured_lanes = set(lanes)
        self.flows = FlowDuties(engine, self.plan)
        s = self.settings
        self.scanners = [
            Scanner("delayed_promoter", s.promote_interval_s, self.promote_delayed),
            Scanner("lease_expiry", s.lease_expiry_interval_s, self.expire_leases),
            Scanner("attempt_timeout", s.attempt_timeout_interval_s, lambda: self.expire_due("attempt_timeout")),
            Scanner("execution_deadline", s.deadline_interval_s, lambda: self.expire_due("execution_deadline")),
            Scanner("suspension_timeout", s.suspension_timeout_interval_s, self.expire_suspensions),
            Scanner("pending_waitpoint_expiry", s.pending_waitpoint_interval_s, self.close_lapsed_waitpoints),
            Scanner("unblock", s.unblock_interval_s, lambda: self.admission.unblock_cleared(self.plan())),
            Scanner("budget_reset", s.budget_reset_interval_s, self.reset_due_budgets),
            Scanner("quota_reconciler", s.quota_reconcile_interval_s, self.reconcile_quotas),
            Scanner("retention_trimmer", s.retention_interval_s, self.trim_retained, lambda: self.trimmer.behind),
            Scanner("lane_cleanup", s.lane_cleanup_interval_s, self.forget_idle_lanes),
            Scanner("partition_cleanup", s.partition_cleanup_interval_s, lambda: forget_unused_partitions(engine)),
            Scanner("dependency_reconciler", s.dependency_reconcile_interval_s, self.flows.reconcile_dependencies),
            Scanner("cancel_reconciler", s.cancel_reconcile_interval_s, self.flows.reconcile_cancels),
            Scanner("edge_cancel_dispatcher", s.edge_cancel_dispatch_interval_s, self.flows.dispatch_sibling_cancels),
            Scanner("edge_cancel_reconciler", s.edge_cancel_reconcile_interval_s, self.flows.reconcile_sibling_cancels),
            Scanner("flow_projector", s.flow_projector_interval_s, self.flows.project_flows),
        ]
        self.admission = budgets.Admission(engine)
        rules = RetentionRules(s.retention_s, s.lane_retention_s)
        self.trimmer = RetentionTrimmer(engine, rules, self.plan, s.batch_size)
        self._failures: dict[str, int] = defaultdict(int)
        self._skip_until_cycle: dict[str, int] = {}
        self._cycle = 0
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy = "idle"  # the scanner running last, for the log
        self.is_leader = False
        #: The plans read this tick of the thread (None: read one per call), by fullness.
        self._plans: dict[bool, ScanPlan] | None = None
        #: Whether the scanner running reads every partition.
        self._sweeping = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> EngineScanners:
        if not self._threads:
            self._threads = [threading.Thread(target=self._run, name="ff-engine-scanners", daemon=True)]
            if self.settings.flow_completions:
                self._threads.append(threading.Thread(target=self._listen, name="ff-flow-completions", daemon=True))
            for thread in self._threads:
                thread.start()
        return self

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped.is_set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads, waiting up to ``timeout_s`` in all for the scanner each is
        running; one still busy then is left to finish as a daemon (its FCALLs are atomic and
        the next leader repeats the cycle), named in the log. Then give up the leadership."""
        self._stopped.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                busy = f"{thread.name} (last scanner: {self._busy})"
                log.warning("%s still busy after %.1f s: left to finish", busy, timeout_s)
        self._threads = []
        self._resign()

    def _run(self) -> None:
        last_claim = 0.0
        while not self._stopped.is_set():
            now = time.monotonic()
            if now - last_claim >= self.settings.leader_ttl_s / 3:
                self.is_leader = self._hold_leadership()
                last_claim = now
            if self.is_leader:
                self._plans = {}
                for scanner in self.scanners:
                    if self._stopped.is_set():  # stopping waits for one scanner at most, not a cycle
                        break
                    if scanner.next_run <= now:
                        # on a grid of its interval: scanners due together share a tick and its plan
                        interval = max(scanner.interval_s, 0.1)
                        scanner.next_run = (math.floor(now / interval) + 1) * interval
                        self._sweep_if_due(scanner, now)
                        if scanner.behind():
                            scanner.next_run = now
                self._plans = None
            self._stopped.wait(0.05)

    def _sweep_if_due(self, scanner: Scanner, now: float) -> None:
        """Run ``scanner``, over every partition if its full sweep is due."""
        self._sweeping = scanner.next_sweep <= now
        if self._sweeping:
            scanner.next_sweep = now + self.settings.full_sweep_interval_s
        try:
            self._run_scanner(scanner)
        finally:
            self._sweeping = False

    def _listen(self) -> None:
        """The completion listener's own thread (a long scanner cycle does not hold up the
        next step of a workflow): subscribed from the start; while this instance leads, it
        cascades every ended member."""
        while not self._stopped.is_set():
            self._listen_for_completions(0.25)
        self.flows.stop_listening()

    def _run_scanner(self, scanner: Scanner) -> None:
        self._busy = scanner.name
        try:
            with metrics.SCANNER_CYCLE_DURATION.labels(scanner.name).time():
                changed = scanner.run()
            metrics.SCANNER_CYCLES.labels(scanner.name).inc()
            if changed:
                metrics.SCANNER_ITEMS.labels(scanner.name).inc(changed)
                log.debug("scanner %s handled %d executions", scanner.name, changed)
        except (EngineError, redis.RedisError) as exc:
            log.warning("scanner %s failed: %s", scanner.name, exc)
        except Exception:  # a bug or odd data must not end every scanner: retried next interval
            log.exception("scanner %s failed unexpectedly", scanner.name)

    def _listen_for_completions(self, timeout_s: float) -> None:
        """Cascade the flow members that end within ``timeout_s``."""
        try:
            resolved = self.flows.listen(timeout_s, leading=self.is_leader)
        except Exception:  # never end the scanners' thread: the reconciler catches up
            log.exception("flow completion listener failed unexpectedly")
            self.flows.stop_listening()
            self._stopped.wait(timeout_s)
            return
        if resolved:
            metrics.SCANNER_ITEMS.labels("flow_cascade").inc(resolved)

    def run_all(self, *, full_sweep: bool = False) -> dict[str, int]:
        """Run every scanner once, now (no leader check), over every partition if
        ``full_sweep``: what tests use."""
        self._plans, self._sweeping = {}, full_sweep
        try:
            return {scanner.name: scanner.run() for scanner in self.scanners}
        finally:
            self._plans, self._sweeping = None, False

    # -- leadership ---------------------------------------------------------------------------

    def _hold_leadership(self) -> bool:
        client, me = self.engine.redis, self.instance_id.encode()
        ttl_ms = int(self.settings.leader_ttl_s * 1000)
        try:
            if client.set(SCANNER_LEADER_KEY, me, nx=True, px=ttl_ms):
                return True
            return compare_and_set(
                client, SCANNER_LEADER_KEY, me, lambda pipe: pipe.pexpire(SCANNER_LEADER_KEY, ttl_ms)
            )
        except redis.RedisError as exc:
            log.warning("scanner leadership check failed: %s", exc)
            return False

    def _resign(self) -> None:
        with contextlib.suppress(redis.RedisError):
            me = self.instance_id.encode()
            compare_and_set(self.engine.redis, SCANNER_LEADER_KEY, me, lambda pipe: pipe.delete(SCANNER_LEADER_KEY))
        self.is_leader = False

    # -- helpers ------------------------------------------------------------------------------

    def lanes(self) -> set[str]:
        """Configured lanes plus every lane in FlowFabric's lane registry."""
        return self.configured_lanes | self.engine.lanes()

    def plan(self) -> ScanPlan:
        """Where the scanner running reads: the lanes' own partitions and the recorded ones,
        or every partition on a full sweep. Read once per tick of the scanners' thread (the
        listener's catch-up may share it: any plan covers the work ff_celery wrote)."""
        plans, full = self._plans, self._sweeping
        if plans is not None and full in plans:
            return plans[full]
        plan = read_plan(self.engine, self.configured_lanes, full=full)
        if plans is not None:
            plans[full] = plan
        return plan

    def _partitions(self) -> list[PartitionKeys]:
        return [PartitionKeys(p) for p in self.plan().partitions]

    def _due(self, wanted: Sequence[tuple[int, str, Item]]) -> tuple[int, list[tuple[Item, list[str]]]]:
        """Server time and the members scored at or before it of each zset among ``wanted``
        (partition, key, what the key stands for) that exists: nothing read but a presence
        check (:func:`present`) when none does, else one more round trip."""
        found = present(self.engine, wanted)
        if not found:
            return 0, []
        now_ms = self.engine.server_time_ms()
        batch = self.engine.batch()
        for key, _ in found:
            batch.command("zrangebyscore", key, "-inf", now_ms, start=0, num=self.settings.batch_size)
        due = [
            (item, [m.decode("utf-8", "replace") for m in reply] if isinstance(reply, list) else [])
            for (_, item), reply in zip(found, batch.execute())
        ]
        return now_ms, due

    def _outcomes(self, requests: list[fn.Fcall]) -> list[object]:
        """Run requests, skipping items that keep failing in transport (spec §8.1)."""
        self._cycle += 1
        live = [r for r in requests if self._skip_until_cycle.get(str(r.subject), 0) <= self._cycle]
        outcomes = self.engine.call_many(live)
        for request, outcome in zip(live, outcomes):
            item = str(request.subject)
            if isinstance(outcome, TransportError):
                self._failures[item] += 1
                if self._failures[item] >= MAX_ITEM_FAILURES:
                    self._skip_until_cycle[item] = self._cycle + SKIP_CYCLES
                    self._failures.pop(item)
            else:
                self._failures.pop(item, None)
        return outcomes

    # -- scanners -----------------------------------------------------------------------------

    def promote_delayed(self) -> int:
        """Promote due delayed executions of every lane; wake the lanes' claimers."""
        slots = self.plan().lane_slots
        now, due = self._due([(p, PartitionKeys(p).delayed(lane), lane) for p, lane in slots])
        requests = [
            fn.PromoteDelayed(execution_id=eid, lane_id=lane, now_ms=now)
            for lane, members in due
            for eid in valid_execution_ids(members, f"the delayed set of lane {lane}")
        ]
        promoted_lanes = {
            request.lane_id for request, outcome in zip(requests, self._outcomes(requests)) if outcome == "promoted"
        }
        for lane in promoted_lanes:
            self.engine.wake(lane)
        return len(requests)

    def trim_retained(self) -> int:
        """FlowFabric's retention trimmer (see :mod:`ff_celery.engine.duties.retention`): answers how
        many terminal executions were deleted. Not run when no partition of the plan holds a
        terminal execution or one due for deletion (a full sweep always runs it)."""
        plan = self.plan()
        kept = [(p, retention_due_key(p), None) for p in plan.partitions]
        kept += [(p, PartitionKeys(p).terminal(lane), None) for p, lane in plan.lane_slots]
        if not self._sweeping and not present(self.engine, kept):
            return 0
        return self.trimmer.trim()

    def forget_idle_lanes(self) -> int:
        """Take lanes that hold no execution in any state on any partition (their last one
        trimmed by retention) out of ``ff:idx:lanes``, so scanners stop paying for them.
        Configured lanes stay. A lane that gains work meanwhile is put back at once (publishing
        re-registers its lane with every submit). Answers how many lanes left."""
        forgotten = self._empty_lanes(sorted(self.engine.lanes() - self.configured_lanes))
        if not forgotten:
            return 0
        self.engine.redis.srem(LANE_REGISTRY_KEY, *forgotten)
        batch = self.engine.batch()
        for partition in range(self.engine.partitions.num_flow_partitions):
            batch.command("hdel", retention_cursor_key(partition), *forgotten)
        batch.execute()
        refilled = set(forgotten) - set(self._empty_lanes(forgotten))  # raced with a submit
        if refilled:
            self.engine.redis.sadd(LANE_REGISTRY_KEY, *refilled)
        return len(forgotten) - len(refilled)

    def _empty_lanes(self, lanes: list[str]) -> list[str]:
        """Those of ``lanes`` with no index key on any partition (wherever other clients may
        have put executions), in one round trip."""
        if not lanes:
            return []
        batch = self.engine.batch()
        every = [PartitionKeys(p) for p in range(self.engine.partitions.num_flow_partitions)]
        for lane in lanes:
            for index in every:  # one EXISTS per partition: its keys share one slot
                states = [index.lane(lane, state) for state in LANE_STATES]
                batch.command("exists", *states, *(index.blocked(lane, reason) for reason in BLOCKED_SUFFIXES))
        found = batch.execute()
        per_lane = len(found) // len(lanes)
        return [lane for n, lane in enumerate(lanes) if not any(found[n * per_lane : (n + 1) * per_lane])]

    def expire_leases(self) -> int:
        """Mark lapsed leases expired and requeue those executions."""
        _, found = self._due([(index.partition, index.lease_expiry, None) for index in self._partitions()])
        due = [eid for _, members in found for eid in members]
        requests = [
            fn.MarkLeaseExpiredIfDue(execution_id=eid) for eid in valid_execution_ids(due, "a lease-expiry index")
        ]
        requeued = 0
        for request, outcome in zip(requests, self._outcomes(requests)):
            if isinstance(outcome, fn.Settled) and outcome.reason in ("marked_expired", "already_expired"):
                requeued += self.requeue(request.execution_id, newly_expired=outcome.reason == "marked_expired")
        return requeued

    def requeue(self, execution_id: ExecutionId, *, newly_expired: bool = False) -> int:
        """Reclaim an expired lease and hand the execution back to any worker. 1 if requeued."""
        engine = self.engine
        core = engine.read_core(
            execution_id, CoreField.LANE_ID, CoreField.CURRENT_ATTEMPT_INDEX, CoreField.OWNERSHIP_STATE
        )
        lane = core.get(CoreField.LANE_ID, "default")
        if newly_expired:
            metrics.LEASES_EXPIRED.labels(lane).inc()
        if core.get(CoreField.OWNERSHIP_STATE) not in ("lease_expired_reclaimable", "lease_revoked"):
            return 0
        worker = {"worker_id": SCANNER_WORKER_ID, "worker_instance_id": self.instance_id, "lane_id": lane}
        try:
            engine.call(fn.IssueReclaimGrant(execution_id=execution_id, **worker))
            lease = engine.call(
                fn.ReclaimExecution(
                    execution_id=execution_id,
                    **worker,
                    lease_id=new_uuid(),
                    lease_ttl_ms=self.settings.requeue_lease_ttl_ms,
                    attempt_id=new_uuid(),
                    current_attempt_index=int(core.get(CoreField.CURRENT_ATTEMPT_INDEX) or 0),
                )
            )
            ClaimedTask(
                engine,
                execution_id=execution_id,
                lane_id=lane,
                worker_id=SCANNER_WORKER_ID,
                worker_instance_id=self.instance_id,
                lease=lease,
                lease_ttl_ms=self.settings.requeue_lease_ttl_ms,
            ).hand_back()
        except EngineError as exc:
            if exc.code == "max_retries_exhausted":
                log.error("execution %s failed: crashed or lost its lease too often (%s)", execution_id, exc)
            else:
                log.info("requeue of %s skipped: %s", execution_id, exc)
            return 0
        log.info("requeued %s after its lease lapsed", execution_id)
        metrics.RECLAIMS.labels(lane).inc()
        return 1

    def expire_due(self, reason: fn.ExpireReason) -> int:
        """Expire executions whose attempt timeout or execution deadline passed."""
        if reason == "attempt_timeout":
            indexes = [(index.partition, index.attempt_timeout, None) for index in self._partitions()]
        else:
            indexes = [(index.partition, index.execution_deadline, None) for index in self._partitions()]
        _, found = self._due(indexes)
        due = list(valid_execution_ids((eid for _, members in found for eid in members), reason))
        if not due:
            return 0
        reads = self.engine.batch()
        for eid in due:
            reads.command("hmget", ExecKeys(eid).core, (CoreField.LANE_ID, CoreField.CURRENT_ATTEMPT_INDEX))
        requests = []
        for eid, (lane, attempt_index) in zip(due, reads.execute()):
            requests.append(
                fn.ExpireExecution(
                    execution_id=eid,
                    expire_reason=reason,
                    lane_id=lane.decode() if lane else "default",
                    attempt_index=int(attempt_index) if attempt_index else None,
                )
            )
        expired = [o for o in self._outcomes(requests) if isinstance(o, fn.Settled) and o.reason != "already_terminal"]
        return len(expired)

    def expire_suspensions(self) -> int:
        """Apply the timeout behaviour of suspensions whose timeout passed; wake the lanes of
        the executions that auto-resumed."""
        _, found = self._due([(index.partition, index.suspension_timeout, None) for index in self._partitions()])
        due = list(valid_execution_ids((eid for _, members in found for eid in members), "a suspension-timeout index"))
        if not due:
            return 0
        reads = self.engine.batch()
        for eid in due:
            reads.command(
                "hmget",
                ExecKeys(eid).core,
                (CoreField.LANE_ID, CoreField.CURRENT_WAITPOINT_ID, CoreField.CURRENT_ATTEMPT_INDEX),
            )
        requests = [
            fn.ExpireSuspension(
                execution_id=eid,
                lane_id=lane.decode() if lane else "default",
                waitpoint_id=waitpoint.decode() if waitpoint else "",
                attempt_index=int(attempt_index) if attempt_index else 0,
            )
            for eid, (lane, waitpoint, attempt_index) in zip(due, reads.execute())
        ]
        applied = 0
        for request, outcome in zip(requests, self._outcomes(requests)):
            if isinstance(outcome, tuple) and outcome[1] is not None:
                applied += 1
                if outcome[0] == "auto_resume":
                    self.engine.wake(request.lane_id)
        return applied

    def close_lapsed_waitpoints(self) -> int:
        """Close pending waitpoints past their expiry (the task never suspended on them)."""
        _, found = self._due([(index.partition, index.pending_waitpoint_expiry, index) for index in self._partitions()])
        slots = [(index, waitpoint_id) for index, members in found for waitpoint_id in members]
        if not slots:
            return 0
        reads = self.engine.batch()
        for index, waitpoint_id in slots:
            reads.command("hget", index.waitpoint(waitpoint_id), "execution_id")
        requests = [
            fn.CloseWaitpoint(execution_id=eid, waitpoint_id=wp_id, reason="never_committed")
            for (_, wp_id), owner in zip(slots, reads.execute())
            for eid in valid_execution_ids([owner] if owner else [], "a pending waitpoint's owner")
        ]
        return sum(1 for outcome in self._outcomes(requests) if outcome is True)

    def reset_due_budgets(self) -> int:
        """Reset budgets whose reset interval came round."""
        config = self.engine.partitions
        now, due = self._due([(p, budget_resets_key(p), None) for p in range(config.num_budget_partitions)])
        requests = [
            fn.ResetBudget(budget_id=budget_id, partition=config.budget_partition(budget_id), now_ms=now)
            for _, members in due
            for budget_id in members
        ]
        return sum(1 for outcome in self._outcomes(requests) if not isinstance(outcome, EngineError))

    def reconcile_quotas(self) -> int:
        """Drop admissions whose guard lapsed (a worker that died holding one) and set each
        quota's concurrency count to its live admissions. Answers how many were dropped."""
        config = self.engine.partitions
        batch = self.engine.batch()
        keys = {partition: [quota_policies_key(partition)] for partition in range(config.num_quota_partitions)}
        for partition in occupied(self.engine, keys):
            batch.command("smembers", quota_policies_key(partition))
        policies = [m.decode() for members in batch.execute() if isinstance(members, set) for m in members]
        dropped = 0
        for quota_policy_id in policies:
            keys = QuotaKeys(quota_policy_id, config.quota_partition(quota_policy_id))
            reads = self.engine.batch()
            reads.command("smembers", keys.admitted_set)
            (admitted,) = reads.execute()
            members = sorted(m.decode() for m in admitted) if isinstance(admitted, set) else []
            checks = self.engine.batch()
            for member in members:
                checks.command("exists", keys.admitted(member))
            gone = [member for member, alive in zip(members, checks.execute()) if not alive]
            if gone:
                writes = self.engine.batch()
                writes.command("srem", keys.admitted_set, *gone)
                writes.command("set", keys.concurrency, len(members) - len(gone))
                writes.execute()
                dropped += len(gone)
        return dropped
