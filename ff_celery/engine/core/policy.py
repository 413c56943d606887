"""The execution policy: retry policy and backoff, timeouts, routing requirements.

Serialised the way FlowFabric's Rust client does (unset optional fields left out, never
``null``, ``max_reclaim_count`` and ``max_replay_count`` always present), stored verbatim in
``ff:exec:...:policy`` and read back by the Lua functions that use it.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Counts and milliseconds: whole, not negative, exact in a Lua number (a double).
Count = Annotated[int, Field(ge=0, le=2**53 - 1)]
Millis = Annotated[int, Field(ge=0, le=2**53 - 1)]


class _Policy(BaseModel):
    """Numbers are finite (no NaN or infinity, which JSON would carry as null, a Lua error)."""

    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class FixedBackoff(_Policy):
    type: Literal["fixed"] = "fixed"
    delay_ms: Millis = 1000


class ExponentialBackoff(_Policy):
    """``min(initial * multiplier**retry_count, max)``; FlowFabric ignores ``jitter``."""

    type: Literal["exponential"] = "exponential"
    initial_delay_ms: Millis = 1000
    max_delay_ms: Millis = 60_000
    multiplier: Annotated[float, Field(ge=0)] = 2.0
    jitter: bool = False


#: ``max_retries`` meaning "no limit" (FlowFabric's field is an unsigned 32-bit number).
UNLIMITED_RETRIES = 2**31 - 1


class RetryPolicy(_Policy):
    """Engine retries: each failure below ``max_retries`` schedules another attempt."""

    max_retries: Annotated[int, Field(ge=0, le=2**32 - 1)] = 3  # FlowFabric's u32
    backoff: FixedBackoff | ExponentialBackoff = Field(default_factory=ExponentialBackoff, discriminator="type")
    retryable_categories: list[str] = Field(default_factory=list)


class TimeoutPolicy(_Policy):
    attempt_timeout_ms: Millis | None = None
    execution_deadline_ms: Millis | None = None
    max_reclaim_count: Count = 100


class RoutingRequirements(_Policy):
    required_capabilities: list[str] = Field(default_factory=list)
    preferred_locality: str | None = None
    isolation_level: str | None = None


class StreamPolicy(_Policy):
    """Stream durability and, in ``retention_ttl_ms``, how long the terminal execution is
    kept (overriding the retention trimmer's default)."""

    durability_mode: str = "buffered"
    retention_maxlen: Count = 10_000
    retention_ttl_ms: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None


#: ``retention_ttl_ms`` meaning "never trim" (FlowFabric's field is an unsigned 64-bit number).
KEEP_FOREVER_MS = 2**64 - 1


class ExecutionPolicy(_Policy):
    """Everything FlowFabric stores as an execution's policy. All fields optional."""

    priority: int = 0
    delay_until: Millis | None = None
    retry_policy: RetryPolicy | None = None
    timeout_policy: TimeoutPolicy | None = None
    max_reclaim_count: Count = 100
    max_replay_count: Count = 10
    routing_requirements: RoutingRequirements | None = None
    budget_ids: list[str] = Field(default_factory=list)
    dedup_window_ms: Millis | None = None
    max_signals_per_execution: Count | None = None
    stream_policy: StreamPolicy | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ExecutionPolicy:
        """Parse a stored policy; unknown fields are ignored, missing ones default."""
        if not text:
            return cls()
        return cls.model_validate(json.loads(text))

    @property
    def retention_ms(self) -> int | None:
        """This execution's own retention (``KEEP_FOREVER_MS``: never trimmed), if it has one."""
        return self.stream_policy.retention_ttl_ms if self.stream_policy else None

    def with_retention(self, retention_ms: int) -> ExecutionPolicy:
        stream_policy = (self.stream_policy or StreamPolicy()).model_copy(update={"retention_ttl_ms": retention_ms})
        return self.model_copy(update={"stream_policy": stream_policy})

    def retry_policy_json(self) -> str:
        """ARGV 7 of ``ff_fail_execution``: the retry_policy object, or empty (never retry)."""
        return self.retry_policy.model_dump_json(exclude_none=True) if self.retry_policy else ""
