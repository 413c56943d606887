"""Read models: an execution's state, lease and attempts as stored in Valkey."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ff_celery.engine.core.decoding import decode_hash
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.policy import ExecutionPolicy


class AttemptSnapshot(BaseModel):
    attempt_index: int
    attempt_id: str
    attempt_type: str
    attempt_state: str
    fields: dict[str, str]


class ExecutionSnapshot(BaseModel):
    """One execution: exec_core (``core``), tags, policy, current lease and attempts."""

    core: dict[str, str]
    tags: dict[str, str] = Field(default_factory=dict)
    policy: ExecutionPolicy = Field(default_factory=ExecutionPolicy)
    lease: dict[str, str] = Field(default_factory=dict)
    attempts: list[AttemptSnapshot] = Field(default_factory=list)

    @classmethod
    def from_raw(
        cls,
        core: dict[bytes, bytes],
        tags: dict[bytes, bytes],
        policy: bytes | None,
        lease: dict[bytes, bytes],
        attempts: list[dict[bytes, bytes]],
    ) -> ExecutionSnapshot:
        try:
            parsed_policy = ExecutionPolicy.from_json(policy)
        except ValueError:
            parsed_policy = ExecutionPolicy()
        return cls(
            core=decode_hash(core),
            tags=decode_hash(tags),
            policy=parsed_policy,
            lease=decode_hash(lease),
            attempts=[
                AttemptSnapshot(
                    attempt_index=int(fields.get("attempt_index", "0") or 0),
                    attempt_id=fields.get("attempt_id", ""),
                    attempt_type=fields.get("attempt_type", ""),
                    attempt_state=fields.get("attempt_state", ""),
                    fields=fields,
                )
                for fields in map(decode_hash, attempts)
            ],
        )

    @property
    def execution_id(self) -> str:
        return self.core[CoreField.EXECUTION_ID]

    @property
    def public_state(self) -> str:
        return self.core.get(CoreField.PUBLIC_STATE, "")

    @property
    def lifecycle_phase(self) -> str:
        return self.core.get(CoreField.LIFECYCLE_PHASE, "")

    @property
    def terminal_outcome(self) -> str:
        return self.core.get(CoreField.TERMINAL_OUTCOME, "")

    @property
    def is_terminal(self) -> bool:
        return self.core.get(CoreField.LIFECYCLE_PHASE) == "terminal"
