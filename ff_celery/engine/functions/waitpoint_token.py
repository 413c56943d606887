"""Typed calls of ``lua/waitpoint_token.lua``: the waitpoint HMAC keystore (rotation, listing)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.engine.functions.base import Fcall, Reply, ResultT

__all__ = ["Keystore", "KeystoreFcall", "ListWaitpointKids", "RotateWaitpointSecret", "Rotation"]


class Rotation(BaseModel):
    outcome: Literal["rotated", "noop"]
    new_kid: str
    previous_kid: str = ""
    forgotten_kids: int = 0


class Keystore(BaseModel):
    """A partition's waitpoint HMAC keys: the minting kid and the kids still in grace."""

    current_kid: str
    verifying: dict[str, int] = Field(default_factory=dict)  # kid -> expires_at (ms)


class KeystoreFcall(Fcall[ResultT]):
    """A call on one flow partition's waitpoint HMAC keystore."""

    partition: int

    def keys(self) -> list[str]:
        return [PartitionKeys(self.partition).waitpoint_hmac]

    @property
    def subject(self) -> str | None:
        return None


class RotateWaitpointSecret(KeystoreFcall[Rotation]):
    """``ff_rotate_waitpoint_hmac_secret`` on one partition (rotation fans out to all)."""

    function = "ff_rotate_waitpoint_hmac_secret"
    new_kid: str
    new_secret_hex: str
    grace_ms: int

    def argv(self) -> list[str | bytes]:
        return [self.new_kid, self.new_secret_hex, str(self.grace_ms)]

    def parse(self, reply: Reply) -> Rotation:
        if reply.fields[0] == "noop":
            return Rotation(outcome="noop", new_kid=reply.fields[1])
        previous, new_kid, forgotten = reply.fields[1:4]
        return Rotation(outcome="rotated", new_kid=new_kid, previous_kid=previous, forgotten_kids=int(forgotten))


class ListWaitpointKids(KeystoreFcall[Keystore]):
    function = "ff_list_waitpoint_hmac_kids"

    def argv(self) -> list[str | bytes]:
        return []

    def parse(self, reply: Reply) -> Keystore:
        current, _count, *pairs = reply.fields
        verifying = {pairs[i]: int(float(pairs[i + 1])) for i in range(0, len(pairs), 2)}
        return Keystore(current_kid=current, verifying=verifying)
