"""Finding and claiming work for a worker.

Solo executions of a lane all live on the lane's own partition, so every probe reads that
partition's eligible set first (spec §8.3); flow members hash elsewhere, so the other
partitions are rotated through in chunks of 32, at most every ``flow_scan_interval_s``. Probes,
grants and claims are each one pipelined round trip. When nothing is eligible the claimer
sleeps on the lane's wake-up channel (published by ff_celery's submitters and scanners) and
falls back to polling every ``poll_interval_s`` for work that arrived by other means.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.client import Engine
from ff_celery.engine.errors import EngineError
from ff_celery.engine.ids import ExecutionId, new_uuid
from ff_celery.engine.keys import ExecKeys, PartitionKeys, wake_channel
from ff_celery.engine.policy import ExecutionPolicy
from ff_celery.engine.renewal import LeaseRenewer
from ff_celery.engine.task import ClaimedTask

log = logging.getLogger(__name__)

FLOW_SCAN_CHUNK = 32
_CLAIM_STATE_FIELDS = ("attempt_state", "total_attempt_count", "current_attempt_index")


def default_worker_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{new_uuid()[:8]}"


def _decode_hash(raw: dict[bytes, bytes] | Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {k.decode(): v.decode("utf-8", errors="replace") for k, v in raw.items()}


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
        self._owns_renewer = renewer is None
        self.renewer = renewer if renewer is not None else LeaseRenewer(engine.fork())
        partitions = engine.partitions
        self._home = {lane: partitions.lane_partition(lane) for lane in self.lanes}
        self._cursor = partitions.scan_start(self.worker_instance_id)
        self._last_flow_scan = 0.0
        self._pubsub: redis.client.PubSub | None = None
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
        """One probe-and-claim pass without waiting."""
        candidates = self.probe(depth=max_tasks + 2)
        claimed: list[ClaimedTask] = []
        while candidates and len(claimed) < max_tasks:
            need = max_tasks - len(claimed)
            wave, candidates = candidates[:need], candidates[need:]
            claimed += self._claim_wave(wave)
        return claimed

    def listen(self) -> None:
        """Subscribe to the lanes' wake-up channels (idempotent)."""
        if self._pubsub is None:
            self._pubsub = self.engine.redis.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(*(wake_channel(lane) for lane in self.lanes))

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a wake-up arrives or ``timeout_s`` passes; True if woken."""
        self.listen()
        assert self._pubsub is not None
        try:
            woken = self._pubsub.get_message(timeout=timeout_s) is not None
            while self._pubsub.get_message(timeout=0) is not None:
                woken = True
        except redis.RedisError as exc:
            log.warning("wake-up channel failed (%s); falling back to polling", exc)
            self._pubsub = None
            time.sleep(timeout_s)
            return False
        return woken

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None
        if self._owns_renewer:
            self.renewer.stop()

    # -- probing ------------------------------------------------------------------------------

    def probe(self, depth: int) -> list[tuple[ExecutionId, str]]:
        """Eligible heads: ``depth`` from each lane's home partition, plus one per lane from the
        next chunk of other partitions when a flow scan is due."""
        batch = self.engine.batch()
        queries: list[str] = []
        for lane, partition in self._home.items():
            batch.command("zrangebyscore", PartitionKeys(partition).eligible(lane), "-inf", "+inf", start=0, num=depth)
            queries.append(lane)
        now = time.monotonic()
        if now - self._last_flow_scan >= self.flow_scan_interval_s:
            self._last_flow_scan = now
            total = self.engine.partitions.num_flow_partitions
            chunk = [(self._cursor + i) % total for i in range(min(FLOW_SCAN_CHUNK, total))]
            self._cursor = (self._cursor + len(chunk)) % total
            for partition in chunk:
                for lane, home in self._home.items():
                    if partition != home:
                        batch.command(
                            "zrangebyscore", PartitionKeys(partition).eligible(lane), "-inf", "+inf", start=0, num=1
                        )
                        queries.append(lane)
        seen: set[str] = set()
        candidates: list[tuple[ExecutionId, str]] = []
        for lane, members in zip(queries, batch.execute()):
            if isinstance(members, Exception):
                log.warning("probe of lane %s failed: %s", lane, members)
                continue
            for member in members:
                eid = member.decode()
                if eid not in seen:
                    seen.add(eid)
                    candidates.append((ExecutionId(eid), lane))
        return candidates

    # -- claiming -----------------------------------------------------------------------------

    def _claim_wave(self, wave: list[tuple[ExecutionId, str]]) -> list[ClaimedTask]:
        grants = self.engine.batch()
        for eid, lane in wave:
            grants.fcall(
                fn.IssueClaimGrant(
                    execution_id=eid,
                    worker_id=self.worker_id,
                    worker_instance_id=self.worker_instance_id,
                    lane_id=lane,
                    grant_ttl_ms=self.grant_ttl_ms,
                    worker_capabilities=self.capabilities,
                )
            )
            grants.command("hmget", ExecKeys(eid).core, _CLAIM_STATE_FIELDS)
            grants.command("get", ExecKeys(eid).policy)
        replies = grants.execute()

        claims = self.engine.batch()
        pending: list[tuple[ExecutionId, str, ExecutionPolicy]] = []
        for position, (eid, lane) in enumerate(wave):
            grant, state, policy_raw = replies[3 * position : 3 * position + 3]
            if isinstance(grant, EngineError):
                log.debug("no grant for %s: %s", eid, grant.code)
                continue
            state = dict(zip(_CLAIM_STATE_FIELDS, (v.decode() if v else "" for v in state)))
            policy = self._policy(eid, policy_raw)
            claims.fcall(self._claim_request(eid, lane, state, policy))
            claims.command("get", ExecKeys(eid).payload)
            claims.command("hgetall", ExecKeys(eid).tags)
            claims.command("hgetall", ExecKeys(eid).core)
            pending.append((eid, lane, policy))
        results = claims.execute()

        tasks: list[ClaimedTask] = []
        for position, (eid, lane, policy) in enumerate(pending):
            lease, payload, tags, core = results[4 * position : 4 * position + 4]
            if isinstance(lease, EngineError):
                log.debug("claim of %s lost: %s", eid, lease.code)
                continue
            tasks.append(
                ClaimedTask(
                    self.engine,
                    execution_id=eid,
                    lane_id=lane,
                    worker_id=self.worker_id,
                    worker_instance_id=self.worker_instance_id,
                    lease=lease,
                    lease_ttl_ms=self.lease_ttl_ms,
                    payload=payload or b"",
                    tags=_decode_hash(tags),
                    policy=policy,
                    core=_decode_hash(core),
                    renewer=self.renewer,
                )
            )
        return tasks

    def _claim_request(
        self, eid: ExecutionId, lane: str, state: dict[str, str], policy: ExecutionPolicy
    ) -> fn.ClaimRequest:
        common = {
            "execution_id": eid,
            "worker_id": self.worker_id,
            "worker_instance_id": self.worker_instance_id,
            "lane_id": lane,
            "lease_id": new_uuid(),
            "lease_ttl_ms": self.lease_ttl_ms,
        }
        if state["attempt_state"] == "attempt_interrupted":
            return fn.ClaimResumedExecution(**common, attempt_index=int(state["current_attempt_index"] or 0))
        timeouts = policy.timeout_policy
        return fn.ClaimExecution(
            **common,
            attempt_id=new_uuid(),
            next_attempt_index=int(state["total_attempt_count"] or 0),
            attempt_timeout_ms=timeouts.attempt_timeout_ms if timeouts else None,
        )

    @staticmethod
    def _policy(eid: ExecutionId, raw: bytes | None) -> ExecutionPolicy:
        try:
            return ExecutionPolicy.from_json(raw)
        except ValueError as exc:
            log.warning("execution %s has an unreadable policy (%s); using defaults", eid, exc)
            return ExecutionPolicy()
