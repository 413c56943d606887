"""Typed calls of ``lua/lease.lua`` (renew, mark expired, revoke) and the lease every claim
answers (:class:`Lease`, from the claim calls of ``execution``, ``scheduling`` and ``signal``).
"""

from __future__ import annotations

from pydantic import BaseModel

from ff_celery.engine.functions.base import (
    ExecutionFcall,
    Fence,
    Reply,
    Settled,
)

__all__ = ["ClaimRequest", "Lease", "MarkLeaseExpiredIfDue", "RenewLease", "RevokeLease"]


class Lease(BaseModel):
    """A lease just acquired by a claim, resumed claim or reclaim."""

    lease_id: str
    lease_epoch: int
    expires_at: int | None  # None where the function does not report it (grant-and-claim)
    attempt_id: str | None
    attempt_index: int
    attempt_type: str | None


def lease_from_reply(reply: Reply) -> Lease:
    lease_id, epoch, expires_at, attempt_id, attempt_index, attempt_type = reply.fields[:6]
    return Lease(
        lease_id=lease_id,
        lease_epoch=int(epoch),
        expires_at=int(float(expires_at)),
        attempt_id=attempt_id,
        attempt_index=int(attempt_index),
        attempt_type=attempt_type,
    )


class ClaimRequest(ExecutionFcall[Lease]):
    """Shared arguments of the claim functions."""

    worker_id: str
    worker_instance_id: str
    lane_id: str
    lease_id: str
    lease_ttl_ms: int
    capability_hash: str = ""

    def lease_index_keys(self) -> tuple[str, str]:
        return self.index.lease_expiry, self.index.worker_leases(self.worker_instance_id)


class RenewLease(ExecutionFcall[int]):
    """``ff_renew_lease``; answers the new expiry (ms). Note its ARGV order."""

    function = "ff_renew_lease"
    attempt_index: int
    fence: Fence
    lease_ttl_ms: int
    lease_history_grace_ms: int = 5000

    def keys(self) -> list[str]:
        x = self.exec_keys
        return [x.core, x.lease_current, x.lease_history, self.index.lease_expiry]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            str(self.attempt_index),
            self.fence.attempt_id,
            self.fence.lease_id,
            str(self.fence.lease_epoch),
            str(self.lease_ttl_ms),
            str(self.lease_history_grace_ms),
        ]

    def parse(self, reply: Reply) -> int:
        return int(float(reply.fields[0]))


class MarkLeaseExpiredIfDue(ExecutionFcall[Settled]):
    function = "ff_mark_lease_expired_if_due"

    def keys(self) -> list[str]:
        x = self.exec_keys
        return [x.core, x.lease_current, self.index.lease_expiry, x.lease_history]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])


class RevokeLease(ExecutionFcall[Settled]):
    """``ff_revoke_lease``. ``worker_instance_id`` is the current holder (pre-read)."""

    function = "ff_revoke_lease"
    expected_lease_id: str = ""
    reason: str = "operator"
    worker_instance_id: str

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.expected_lease_id, self.reason]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])
