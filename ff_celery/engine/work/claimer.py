"""Finding and claiming work for a worker.

Solo executions of a lane all live on the lane's own partition, so every probe reads that
partition's eligible set first (spec §8.3); flow members hash elsewhere: the partitions
ff_celery recorded for them (:mod:`ff_celery.engine.core.work_index`) are probed, 32 at a time, at
most every ``flow_scan_interval_s``, and every partition, 32 at a time, every
``partition_sweep_interval_s`` (flows other FlowFabric clients created). A probe after one that
found nothing, with no wake-up since, first asks whether any of those eligible sets exists (one
command; one per partition on a cluster) and reads them only if one does. A probe
is one pipelined round trip, and so is claiming a batch: each candidate's claim grant (which
checks capabilities) and its claim travel in the same pipeline, with the reads the handle
needs; an interrupted attempt takes one more round trip for its resumed claim. On lanes with
budgets or quotas, candidates pass admission first (``budgets.Admission``). When nothing
is eligible the claimer sleeps on the lane's wake-up channel
(published by ff_celery's submitters and scanners) and falls back to polling every
``poll_interval_s`` for work that arrived by other means. Attempt timeouts are the worker's
choice (``attempt_timeout_ms``), as in FlowFabric, where no claim path reads them from the
policy.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.decoding import decode_hash, text
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import ExecutionId, new_uuid, valid_execution_ids
from ff_celery.engine.core.keys import ADMISSION_LANES_KEY, ExecKeys, PartitionKeys, wake_channel
from ff_celery.engine.core.notices import Listener, Notice
from ff_celery.engine.core.work_index import occupied, recorded_partitions
from ff_celery.engine.work import budgets
from ff_celery.engine.work.claimed_task import ClaimedTask
from ff_celery.engine.work.renewal import LeaseRenewer

log = logging.getLogger(__name__)

FLOW_SCAN_CHUNK = 32
PROBE_DEPTH = 16


def hinted_execution(data: object) -> ExecutionId | None:
    """The execution id a wake-up names, if it names one."""
    try:
        return ExecutionId(text(data))
    except EngineError:
        return None


def default_worker_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_uuid()[:8]}"


class Claimer:
    """Claims executions from ``lanes`` for one worker instance."""

    def __init__(
        self,
        engine: Engine,
        lanes: Iterable[str],
        *,
        worker_id: str,
        worker_instance_id: str | None = None,
        lease_ttl_ms: int = 30_000,
        grant_ttl_ms: int = 5_000,
        capabilities: Iterable[str] = (),
        renewer: LeaseRenewer | None = None,
        poll_interval_s: float = 1.0,
        flow_scan_interval_s: float = 0.5,
        partition_sweep_interval_s: float = 10.0,
        attempt_timeout_ms: int | None = None,
        on_blocked: Callable[[list[fn.BlockExecutionForAdmission]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.lanes = list(dict.fromkeys(lanes))
        if not self.lanes:
            raise ValueError("a claimer needs at least one lane")
        self.worker_id = worker_id
        self.worker_instance_id = worker_instance_id or default_worker_instance_id()
        self.lease_ttl_ms = lease_ttl_ms
        self.grant_ttl_ms = grant_ttl_ms
        self.capabilities = tuple(sorted(set(capabilities)))
        self.poll_interval_s = poll_interval_s
        self.flow_scan_interval_s = flow_scan_interval_s
        self.partition_sweep_interval_s = partition_sweep_interval_s
        self.attempt_timeout_ms = attempt_timeout_ms
        #: Told of the executions admission blocked (their budget or quota is exhausted).
        self.on_blocked = on_blocked
        self._owns_renewer = renewer is None
        self.renewer = renewer if renewer is not None else LeaseRenewer(engine.fork())
        partitions = engine.partitions
        self._home = {lane: partitions.lane_partition(lane) for lane in self.lanes}
        self._cursor = partitions.scan_start(self.worker_instance_id)
        self._recorded_turn = 0
        self._last_flow_scan = self._last_sweep = 0.0
        #: The last probe found nothing and no wake-up came since.
        self._quiet = False
        self._listener: Listener | None = None
        self._candidates: deque[tuple[ExecutionId, str]] = deque()
        self._hinted: list[tuple[ExecutionId, str]] = []
        self._lanes_by_channel = {wake_channel(lane): lane for lane in self.lanes}
        self._probed_at = 0.0
        self.admission = budgets.Admission(engine)
        for lane in self.lanes:
            engine.register_lane(lane)

    # -- public API ---------------------------------------------------------------------------

    def claim(self, max_tasks: int = 1, timeout_s: float = 0.0) -> list[ClaimedTask]:
        """Claim up to ``max_tasks``, waiting up to ``timeout_s`` for the first one."""
        deadline = time.monotonic() + timeout_s
        self.listen()
        while True:
            tasks = self.try_claim(max_tasks)
            remaining = deadline - time.monotonic()
            if tasks or remaining <= 0:
                return tasks
            self.wait(min(remaining, self.poll_interval_s))

    def claim_one(self, timeout_s: float = 0.0) -> ClaimedTask | None:
        tasks = self.claim(1, timeout_s)
        return tasks[0] if tasks else None

    def try_claim(self, max_tasks: int = 1) -> list[ClaimedTask]:
        """One probe-and-claim pass without waiting.

        A probe reads more heads than needed; the rest are tried first by the next calls for
        up to ``CANDIDATE_TTL_S`` (or until a claim fails), saving a round trip per claim when
        the lanes are busy.
        """
        now = time.monotonic()
        hinted, self._hinted = self._hinted, []
        if not self._candidates and hinted and now - self._probed_at <= CANDIDATE_TTL_S:
            self._candidates = deque(hinted)  # just made eligible (note_wake): no probe needed
        elif not self._candidates or now - self._probed_at > CANDIDATE_TTL_S:
            self._candidates = deque(self.probe(depth=max(max_tasks + 2, PROBE_DEPTH)))
            self._probed_at = now
        claimed: list[ClaimedTask] = []
        while self._candidates and len(claimed) < max_tasks:
            wave = [self._candidates.popleft() for _ in range(min(max_tasks - len(claimed), len(self._candidates)))]
            admitted = self.admission.admit(wave)
            if admitted.blocked and self.on_blocked is not None:
                self.on_blocked(admitted.blocked)
            tasks = self._claim_wave(admitted.candidates)
            lanes = dict(wave)
            lost = set(admitted.quota_of) - {str(task.execution_id) for task in tasks}
            for eid in lost:  # admitted but claimed by someone else: give the slot back
                budgets.release_admission(self.engine, admitted.quota_of[eid], ExecutionId(eid), lanes[eid])
            claimed += tasks
        return claimed

    def listen(self) -> None:
        """Subscribe to the lanes' wake-up channels (idempotent)."""
        if self._listener is None:
            self._listener = Listener(self.engine.redis)
            self._listener.subscribe(*(wake_channel(lane) for lane in self.lanes))

    @property
    def wake_connections(self) -> list[redis.client.PubSub]:
        """The connections wake-ups arrive on, for an event loop to watch (none before
        :meth:`listen`; on a cluster one per shard, changing when subscriptions move)."""
        return self._listener.connections() if self._listener is not None else []

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a wake-up arrives or ``timeout_s`` passes; True if woken."""
        try:
            return self.drain_wakes(timeout_s)
        except redis.RedisError as exc:
            log.warning("wake-up channel failed (%s); falling back to polling", exc)
            self._stop_listening()
            time.sleep(timeout_s)
            return False

    def drain_wakes(self, timeout_s: float = 0.0) -> bool:
        """Take the first wake-up (waiting up to ``timeout_s``) and every one already received
        (:meth:`note_wake`); True if any."""
        self.listen()
        assert self._listener is not None
        woken, notice = False, self._listener.get(timeout_s)
        while notice is not None:
            woken = True
            self.note_wake(notice)
            notice = self._listener.get()
        return woken

    def note_wake(self, notice: Notice) -> None:
        """A wake-up naming the execution a publisher just made eligible (the lane's only
        one, or nearly) is a claim candidate: if this claimer probed less than
        ``CANDIDATE_TTL_S`` ago and has no candidates left, the next claim tries it without
        probing, as it would a probed head (the claim grant checks it is still eligible).
        Plain wake-ups carry no execution id."""
        self._quiet = False
        lane = self._lanes_by_channel.get(notice.channel)
        hinted = hinted_execution(notice.data)
        if lane is not None and hinted is not None and len(self._hinted) < PROBE_DEPTH:
            self._hinted.append((hinted, lane))

    def _stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self._stop_listening()
        if self._owns_renewer:
            self.renewer.stop()

    # -- probing ------------------------------------------------------------------------------

    def probe(self, depth: int) -> list[tuple[ExecutionId, str]]:
        """Eligible heads: ``depth`` from each lane's home partition, merged in eligibility
        order (priority, then age) across the lanes, then one per lane from the other
        partitions due a look (:meth:`_other_partitions`). When the last probe found nothing
        and no wake-up came since, nothing is read unless one of those sets exists."""
        others = [(p, lane) for p in self._other_partitions() for lane, home in self._home.items() if p != home]
        if self._quiet and not self._any_eligible(others):
            return []
        batch = self.engine.batch()
        queries: list[str] = []
        for lane, partition in self._home.items():
            index = PartitionKeys(partition).eligible(lane)
            batch.command("zrangebyscore", index, "-inf", "+inf", start=0, num=depth, withscores=True)
            queries.append(lane)
        for partition, lane in others:
            batch.command("zrangebyscore", PartitionKeys(partition).eligible(lane), "-inf", "+inf", start=0, num=1)
            queries.append(lane)
        batch.command("smembers", ADMISSION_LANES_KEY)  # which lanes need admission, as of this probe
        *replies, admission_lanes = batch.execute()
        self.admission.note_controlled_lanes(admission_lanes)
        # the home heads of every lane in eligibility order (priority, then age), as one lane
        # spread over several (lane_shards) would give them; flow members after them
        home_heads: list[tuple[float, bytes, str]] = []
        members: list[tuple[list[bytes], str]] = []
        for position, (lane, found) in enumerate(zip(queries, replies)):
            if isinstance(found, Exception):
                log.warning("probe of lane %s failed: %s", lane, found)
            elif position < len(self._home):
                home_heads += [(score, member, lane) for member, score in found]
            else:
                members.append((found, lane))
        members[:0] = [([member], lane) for _, member, lane in sorted(home_heads)]
        seen: set[str] = set()
        candidates: list[tuple[ExecutionId, str]] = []
        for found, lane in members:
            for eid in valid_execution_ids(found, f"the eligible set of lane {lane}"):
                if eid not in seen:
                    seen.add(eid)
                    candidates.append((eid, lane))
        self._quiet = not candidates
        return candidates

    def _other_partitions(self) -> list[int]:
        """The partitions besides the lanes' own to probe now: the next 32 of those recorded
        when a flow scan is due, and the next 32 of all when a sweep is."""
        now, chosen = time.monotonic(), set()
        if now - self._last_flow_scan >= self.flow_scan_interval_s:
            self._last_flow_scan = now
            recorded = recorded_partitions(self.engine)
            if recorded:
                start = self._recorded_turn % len(recorded)
                chosen |= {recorded[(start + i) % len(recorded)] for i in range(min(FLOW_SCAN_CHUNK, len(recorded)))}
                self._recorded_turn = start + FLOW_SCAN_CHUNK
        if now - self._last_sweep >= self.partition_sweep_interval_s:
            self._last_sweep = now
            total = self.engine.partitions.num_flow_partitions
            chosen |= {(self._cursor + i) % total for i in range(min(FLOW_SCAN_CHUNK, total))}
            self._cursor = (self._cursor + FLOW_SCAN_CHUNK) % total
        return sorted(chosen)

    def _any_eligible(self, others: list[tuple[int, str]]) -> bool:
        """Whether any lane's eligible set exists on its home or on ``others``."""
        keys: dict[int, list[str]] = {}
        for partition, lane in [(home, lane) for lane, home in self._home.items()] + others:
            keys.setdefault(partition, []).append(PartitionKeys(partition).eligible(lane))
        return bool(occupied(self.engine, keys))

    # -- claiming -----------------------------------------------------------------------------

    def _claim_wave(self, wave: list[tuple[ExecutionId, str]]) -> list[ClaimedTask]:
        """Grant and claim each candidate in one round trip (the claim uses the grant issued
        just before it), with the reads the handle needs: one ``ffc_claim`` per candidate
        where the hot-path library answers, else the contract calls and reads pipelined.
        Interrupted attempts need a second round trip for the resumed claim."""
        requests = [self._claim_requests(eid, lane) for eid, lane in wave]
        batch = self.engine.batch()
        hot_path = self.engine.hot_path
        for grant, claim in requests:
            if hot_path:
                batch.fcall(fn.ClaimWithReads(grant=grant, claim=claim, core_fields=_CORE_FIELDS))
                continue
            keys = ExecKeys(claim.execution_id)
            batch.command("hmget", keys.core, _CORE_FIELDS)  # as the claim finds them
            batch.fcall(grant)
            batch.fcall(claim)
            batch.command("get", keys.payload)
            batch.command("hgetall", keys.tags)
        started = time.perf_counter()
        replies = batch.execute()
        for lane in {lane for _, lane in wave}:
            metrics.CLAIM_DURATION.labels(lane).observe(time.perf_counter() - started)
        if not hot_path:
            replies = [fn.ClaimReads(*replies[5 * n : 5 * n + 5]) for n in range(len(wave))]

        claimed: list[tuple[ExecutionId, str, fn.Lease, list[Any], float | None]] = []
        resumable: list[tuple[ExecutionId, str, list[Any]]] = []
        for (eid, lane), reply in zip(wave, replies):
            if isinstance(reply, EngineError):  # the combined call itself failed
                log.debug("claim of %s failed: %s", eid, reply)
                continue
            reads = [reply.core_values, reply.payload, reply.tags]
            lease = reply.lease
            if isinstance(lease, EngineError):
                if lease.code == "use_claim_resumed_execution":
                    resumable.append((eid, lane, reads))
                else:
                    log.debug("claim of %s lost: %s", eid, getattr(reply.grant, "code", lease.code))
                    self._candidates.clear()  # someone else is claiming too: probe afresh
                continue
            claimed.append((eid, lane, lease, reads, self._observe_wait(lane, reply.core_values, lease)))
        if resumable:
            claimed += self._claim_resumed(resumable)
        return [self._handle(*claim) for claim in claimed]

    def _claim_requests(self, eid: ExecutionId, lane: str) -> tuple[fn.IssueClaimGrant, fn.ClaimExecution]:
        identity = self._identity(eid, lane)
        grant = fn.IssueClaimGrant(**identity, grant_ttl_ms=self.grant_ttl_ms, worker_capabilities=self.capabilities)
        claim = fn.ClaimExecution(
            **identity,
            lease_id=new_uuid(),
            lease_ttl_ms=self.lease_ttl_ms,
            attempt_id=new_uuid(),
            attempt_timeout_ms=self.attempt_timeout_ms,
        )
        return grant, claim

    def _claim_resumed(self, resumable: list[tuple[ExecutionId, str, list[Any]]]) -> list[tuple[Any, ...]]:
        """Claim interrupted attempts through their still-held grants."""
        batch = self.engine.batch()
        for eid, lane, reads in resumable:
            attempt_index = int(text(reads[0][0]) or 0)
            batch.fcall(
                fn.ClaimResumedExecution(
                    **self._identity(eid, lane), lease_id=new_uuid(), lease_ttl_ms=self.lease_ttl_ms,
                    attempt_index=attempt_index,
                )
            )  # fmt: skip
        claimed = []
        for (eid, lane, reads), lease in zip(resumable, batch.execute()):
            if isinstance(lease, EngineError):
                log.debug("resumed claim of %s lost: %s", eid, lease.code)
            else:
                claimed.append((eid, lane, lease, reads, None))
        return claimed

    def _observe_wait(self, lane: str, core_values: list[Any], lease: fn.Lease) -> float | None:
        """``ff_claim_wait_seconds``: from the execution's last transition before the claim
        (created, promoted, requeued) to the claim, both in server time."""
        since = text(core_values[_CORE_FIELDS.index(CoreField.LAST_TRANSITION_AT)])
        if lease.expires_at is None or not since.isdigit():
            return None
        wait_s = max(0, lease.expires_at - self.lease_ttl_ms - int(since)) / 1000
        metrics.CLAIM_WAIT.labels(lane).observe(wait_s)
        return wait_s

    def _identity(self, eid: ExecutionId, lane: str) -> dict[str, Any]:
        return {
            "execution_id": eid,
            "worker_id": self.worker_id,
            "worker_instance_id": self.worker_instance_id,
            "lane_id": lane,
        }

    def _handle(
        self, eid: ExecutionId, lane: str, lease: fn.Lease, reads: list[Any], runnable_wait_s: float | None
    ) -> ClaimedTask:
        core_values, payload, tags = reads
        metrics.CLAIMS.labels(lane).inc()
        return ClaimedTask(
            self.engine,
            execution_id=eid,
            lane_id=lane,
            worker_id=self.worker_id,
            worker_instance_id=self.worker_instance_id,
            lease=lease,
            lease_ttl_ms=self.lease_ttl_ms,
            payload=payload or b"",
            tags=decode_hash(tags),
            core=dict(zip(_CORE_FIELDS, map(text, core_values))),
            renewer=self.renewer,
            runnable_wait_s=runnable_wait_s,
        )


#: exec_core fields read in the claim's round trip, just before it (none of them is changed by
#: a claim; ``last_transition_at`` is when the execution became eligible).
_CORE_FIELDS = (
    CoreField.CURRENT_ATTEMPT_INDEX,
    CoreField.RETRY_COUNT,
    CoreField.PRIORITY,
    CoreField.CREATED_AT,
    CoreField.QUOTA_POLICY_ID,
    CoreField.LAST_TRANSITION_AT,
)
#: Probed candidates are reused for this long before probing again.
CANDIDATE_TTL_S = 0.25
