"""The execution policy: retry policy and backoff, timeouts, routing requirements.

Serialised the way FlowFabric's Rust client does (unset optional fields left out, never
``null``, ``max_reclaim_count`` and ``max_replay_count`` always present), stored verbatim in
``ff:exec:...:policy`` and read back by the Lua functions that use it.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FixedBackoff(_Policy):
    type: Literal["fixed"] = "fixed"
    delay_ms: int = 1000


class ExponentialBackoff(_Policy):
    """``min(initial * multiplier**retry_count, max)``; FlowFabric ignores ``jitter``."""

    type: Literal["exponential"] = "exponential"
    initial_delay_ms: int = 1000
    max_delay_ms: int = 60_000
    multiplier: float = 2.0
    jitter: bool = False


class RetryPolicy(_Policy):
    """Engine retries: each failure below ``max_retries`` schedules another attempt."""

    max_retries: int = 3
    backoff: FixedBackoff | ExponentialBackoff = Field(default_factory=ExponentialBackoff, discriminator="type")
    retryable_categories: list[str] = Field(default_factory=list)


class TimeoutPolicy(_Policy):
    attempt_timeout_ms: int | None = None
    execution_deadline_ms: int | None = None
    max_reclaim_count: int = 100


class RoutingRequirements(_Policy):
    required_capabilities: list[str] = Field(default_factory=list)
    preferred_locality: str | None = None
    isolation_level: str | None = None


class ExecutionPolicy(_Policy):
    """Everything FlowFabric stores as an execution's policy. All fields optional."""

    priority: int = 0
    delay_until: int | None = None
    retry_policy: RetryPolicy | None = None
    timeout_policy: TimeoutPolicy | None = None
    max_reclaim_count: int = 100
    max_replay_count: int = 10
    routing_requirements: RoutingRequirements | None = None
    budget_ids: list[str] = Field(default_factory=list)
    dedup_window_ms: int | None = None
    max_signals_per_execution: int | None = None

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ExecutionPolicy:
        """Parse a stored policy; unknown fields are ignored, missing ones default."""
        if not text:
            return cls()
        return cls.model_validate(json.loads(text))

    def retry_policy_json(self) -> str:
        """ARGV 7 of ``ff_fail_execution``: the retry_policy object, or empty (never retry)."""
        return self.retry_policy.model_dump_json(exclude_none=True) if self.retry_policy else ""
