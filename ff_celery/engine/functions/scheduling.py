"""Typed calls of ``lua/scheduling.lua``: claim and reclaim grants, grant-and-claim,
delayed promotion, priority, progress, and the worker registry (untagged keys; standalone
deployments).
"""

from __future__ import annotations

from ff_celery.engine.core.keys import worker_alive_key, worker_caps_key, worker_index_key
from ff_celery.engine.functions.base import (
    ExecutionFcall,
    Fcall,
    Reply,
    ResultT,
    number,
    optional_number,
)
from ff_celery.engine.functions.lease import ClaimRequest, Lease

__all__ = [
    "ChangePriority",
    "GrantRequest",
    "HeartbeatWorker",
    "IssueClaimGrant",
    "IssueGrantAndClaim",
    "IssueReclaimGrant",
    "PromoteDelayed",
    "RegisterWorker",
    "UpdateProgress",
]


class GrantRequest(ExecutionFcall[ResultT]):
    """Shared arguments of the claim and reclaim grant functions."""

    worker_id: str
    worker_instance_id: str
    lane_id: str
    capability_hash: str = ""
    grant_ttl_ms: int = 5000
    route_snapshot_json: str = ""
    admission_summary: str = ""
    worker_capabilities: tuple[str, ...] = ()

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            str(self.grant_ttl_ms),
            self.route_snapshot_json,
            self.admission_summary,
            ",".join(sorted(self.worker_capabilities)),
        ]


class IssueClaimGrant(GrantRequest[None]):
    function = "ff_issue_claim_grant"

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.claim_grant, self.index.eligible(self.lane_id)]

    def parse(self, reply: Reply) -> None:
        return None


class IssueReclaimGrant(GrantRequest[int]):
    """``ff_issue_reclaim_grant``; answers the grant's expiry (ms)."""

    function = "ff_issue_reclaim_grant"

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.claim_grant, self.index.lease_expiry]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[1])


class IssueGrantAndClaim(ClaimRequest):
    """``ff_issue_grant_and_claim``: grant plus claim in one call (operator path, no
    capability check). The reply carries no expiry or attempt id."""

    function = "ff_issue_grant_and_claim"
    attempt_id: str
    attempt_policy_json: str = "{}"
    attempt_timeout_ms: int | None = None
    execution_deadline_at: int | None = None

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.claim_grant,
            idx.eligible(self.lane_id),
            *self.lease_index_keys(),
            x.attempts,
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            self.lease_id,
            str(self.lease_ttl_ms),
            self.attempt_id,
            self.attempt_policy_json,
            optional_number(self.attempt_timeout_ms),
            optional_number(self.execution_deadline_at),
        ]

    def parse(self, reply: Reply) -> Lease:
        lease_id, epoch, attempt_index = reply.fields[:3]
        return Lease(
            lease_id=lease_id,
            lease_epoch=int(epoch),
            expires_at=None,
            attempt_id=None,
            attempt_index=int(attempt_index),
            attempt_type=None,
        )


class PromoteDelayed(ExecutionFcall[str]):
    """``ff_promote_delayed``; answers promoted / not_yet_due / *_cleaned."""

    function = "ff_promote_delayed"
    lane_id: str
    now_ms: int

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.index.delayed(self.lane_id), self.index.eligible(self.lane_id)]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, str(self.now_ms)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class ChangePriority(ExecutionFcall[tuple[float, float]]):
    """``ff_change_priority``; answers (old, new) after clamping to 0..9000."""

    function = "ff_change_priority"
    lane_id: str
    new_priority: float

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.index.eligible(self.lane_id)]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, number(self.new_priority)]

    def parse(self, reply: Reply) -> tuple[float, float]:
        return float(reply.fields[0]), float(reply.fields[1])


class UpdateProgress(ExecutionFcall[None]):
    function = "ff_update_progress"
    lease_id: str
    lease_epoch: int
    progress_pct: float | None = None
    progress_message: str = ""

    def keys(self) -> list[str]:
        return [self.exec_keys.core]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.lease_id,
            str(self.lease_epoch),
            optional_number(self.progress_pct),
            self.progress_message,
        ]

    def parse(self, reply: Reply) -> None:
        return None


class RegisterWorker(Fcall[str]):
    """``ff_register_worker``; answers registered / refreshed."""

    function = "ff_register_worker"
    namespace: str
    worker_instance_id: str
    worker_id: str
    lanes: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    ttl_ms: int
    now_ms: int

    def keys(self) -> list[str]:
        return [
            worker_alive_key(self.namespace, self.worker_instance_id),
            worker_caps_key(self.namespace, self.worker_instance_id),
            worker_index_key(self.namespace),
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.worker_instance_id,
            self.worker_id,
            ",".join(sorted(self.lanes)),
            ",".join(sorted(self.capabilities)),
            str(self.ttl_ms),
            str(self.now_ms),
        ]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class HeartbeatWorker(Fcall[str]):
    """``ff_heartbeat_worker``; answers refreshed / not_registered."""

    function = "ff_heartbeat_worker"
    namespace: str
    worker_instance_id: str
    now_ms: int

    def keys(self) -> list[str]:
        return [
            worker_alive_key(self.namespace, self.worker_instance_id),
            worker_caps_key(self.namespace, self.worker_instance_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [str(self.now_ms)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]
