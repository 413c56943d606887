"""The engine client: FlowFabric operations built on the FCALL executor
(:mod:`ff_celery.engine.core.executor`): submit (with ff_celery's aliases), cancel, revoke,
expire, replay, priority, tags, reads of an execution and of a lane.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.connection import compare_and_set
from ff_celery.engine.core.decoding import decode_fields, decode_hash, optional_integer, text
from ff_celery.engine.core.errors import EngineError, TransportError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.executor import Batch, Executor, transport_error
from ff_celery.engine.core.flows import FlowRef, Flows
from ff_celery.engine.core.ids import ExecutionId, attachment_fields
from ff_celery.engine.core.keys import (
    ADMISSION_LANES_KEY,
    ALIAS_TAG,
    IDEMPOTENCY_KEY_TAG,
    LANE_REGISTRY_KEY,
    LANE_STATES,
    WAKE_ANY,
    ExecKeys,
    PartitionKeys,
    alias_key,
    next_attempt_payload_key,
    wake_channel,
)
from ff_celery.engine.core.new_execution import ExecutionSpec, NewExecution
from ff_celery.engine.core.notices import publish_command
from ff_celery.engine.core.snapshot import ExecutionSnapshot
from ff_celery.engine.core.work_index import record_partition

log = logging.getLogger(__name__)

#: A delay closer than this to engine time is submitted as eligible now (spec §5.2 pitfall).
DELAY_SAFETY_MS = 1000
#: Aliases remembered per process (as hints for :meth:`Engine.read_aliased`) before starting over.
SEEN_ALIASES_MAX = 10_000


@dataclass(frozen=True)
class AliasedRead:
    """What :meth:`Engine.read_aliased` read: no execution (and an empty ``core``) when the
    alias maps to none."""

    execution_id: ExecutionId | None
    core: dict[str, str]
    result: bytes | None
    #: The values of the plain keys asked for, in order.
    extras: list[bytes | None]


class Engine(Executor):
    """FlowFabric operations on one Valkey/Redis deployment (see :class:`Executor`)."""

    def __init__(self, client: redis.Redis, *, namespace: str = "default") -> None:
        super().__init__(client, namespace=namespace)
        #: alias -> execution id, as submitted or resolved here: a hint, checked when used
        self._seen_aliases: dict[str, ExecutionId] = {}
        #: lane -> whether this process's last submit found it with nothing else eligible
        self._idle_lanes: dict[str, bool] = {}

    # -- composite operations -----------------------------------------------------------------

    def submit(
        self, lane: str, payload: bytes = b"", *, execution_id: ExecutionId | None = None, **fields: Any
    ) -> fn.Created:
        """:meth:`create` of ``ExecutionSpec(lane, payload, **fields)``."""
        return self.create(ExecutionSpec(lane, payload, **fields), execution_id)

    def create(self, spec: ExecutionSpec, execution_id: ExecutionId | None = None) -> fn.Created:
        """Create ``spec`` as a solo execution (its partition is its lane's unless
        ``execution_id`` names another). A ``delay_until`` less than a second ahead of engine
        time runs now. Wakes idle claimers when the lane had no eligible work."""
        partition = self.partitions.lane_partition(spec.lane_id)
        for _ in range(2):
            new = self.new_execution(spec, execution_id or ExecutionId.mint(partition))
            created = self._create(new, minted=execution_id is None)
            if created is not None:
                return created
        raise TransportError("the execution could not be created: the function library kept disappearing")

    def new_execution(self, spec: ExecutionSpec, execution_id: ExecutionId) -> NewExecution:
        """What creating ``spec`` as ``execution_id`` sends: its ``ff_create_execution`` and
        the budget and quota fields it carries from the start."""
        delay_until = spec.delay_until
        if delay_until is not None and delay_until <= self.now_ms() + DELAY_SAFETY_MS:
            delay_until = None
        tags = dict(spec.tags)  # and what retention needs to remove the keys naming it
        if spec.alias:
            tags[ALIAS_TAG] = spec.alias
        if spec.idempotency_key:
            tags[IDEMPOTENCY_KEY_TAG] = spec.idempotency_key
        request = fn.CreateExecution(
            execution_id=execution_id,
            namespace=self.namespace,
            lane_id=spec.lane_id,
            execution_kind=spec.execution_kind,
            priority=spec.priority,
            creator_identity=spec.creator_identity,
            policy_json=spec.policy.to_json(),
            input_payload=spec.input_payload,
            delay_until=delay_until,
            idempotency_key=spec.idempotency_key,
            tags=tags,
            execution_deadline_at=spec.execution_deadline_at,
        )
        attachment = attachment_fields(spec.budget_ids, spec.quota_policy_id)
        return NewExecution(request, attachment, spec.alias, spec.alias_replaces)

    def submit_flow(self, flow: FlowRef, members: Sequence[NewExecution]) -> list[fn.Created]:
        """Create ``members`` (made with :meth:`new_execution` on the flow's partition, each
        with the members it waits for) in the flow, all in one transaction: their lanes
        (under admission if need be) and the flow's partition (``ffc:idx:partitions``, read
        by scanners and claimers) first, then the transaction, then their aliases and a
        wake-up for each lane with a member that can run now."""
        before = self.batch()
        record_partition(before, flow.partition, self.now_ms())
        for lane in sorted({member.request.lane_id for member in members}):
            before.command("sadd", LANE_REGISTRY_KEY, lane)
        for lane in sorted({member.request.lane_id for member in members if member.attachment}):
            before.command("sadd", ADMISSION_LANES_KEY, lane)
        before.execute()
        created = self.flows.create_members(flow, members)
        after = self.batch()
        ready: dict[str, str] = {}
        for member, outcome in zip(members, created):
            if member.alias and not outcome.duplicate:
                after.command("set", alias_key(self.namespace, member.alias), str(outcome.execution_id))
            self._keep_idempotency_record(after, member.request)
            if outcome.public_state == "waiting" and not member.upstream:
                named = WAKE_ANY if member.attachment or member.request.lane_id in ready else outcome.execution_id
                ready[member.request.lane_id] = str(named)
        for lane, named in ready.items():
            after.notify(wake_channel(lane), named)
        after.execute()
        for member, outcome in zip(members, created):
            if member.alias:
                self._remember_alias(member.alias, outcome.execution_id)
        return created

    def _create(self, new: NewExecution, *, minted: bool) -> fn.Created | None:
        """:meth:`create` in one round trip: the lane in the registry (every time: idle lanes
        leave it, see EngineScanners.forget_idle_lanes) and, for an id minted off the lane's
        partition, that partition in ``ffc:idx:partitions``, the FCALL, the budget attachment,
        the alias (kept if a duplicate already set it) and the size of the lane's eligible
        set. None when it must be tried again with a fresh id."""
        request, attachment, alias = new.request, new.attachment, new.alias
        eid, lane = request.execution_id, request.lane_id
        batch = self.batch()
        batch.command("sadd", LANE_REGISTRY_KEY, lane)
        if eid.partition != self.partitions.lane_partition(lane):
            record_partition(batch, eid.partition, self.now_ms())
        created_at = len(batch)
        batch.fcall(request)
        if attachment:  # before any claimer can see it; undone below for a duplicate
            batch.command("hset", ExecKeys(eid).core, mapping=attachment)
            batch.command("sadd", ADMISSION_LANES_KEY, lane)
        self._keep_idempotency_record(batch, request)
        if alias:
            batch.command("set", alias_key(self.namespace, alias), str(eid), nx=not new.alias_replaces)
        # an execution under budgets or a quota must pass admission, which a claimer only knows
        # its lane needs after a probe: its wake-up names nothing, so the claimer probes
        named = None if attachment else eid
        woken = request.delay_until is None and self._idle_lanes.get(lane, False)
        if woken:
            batch.notify(wake_channel(lane), str(named or WAKE_ANY))
        batch.command("zcard", PartitionKeys(eid.partition).eligible(lane))
        replies = batch.execute()
        created = replies[created_at]
        # Wake idle claimers only when this is the lane's only eligible execution: if others
        # were waiting, no claimer is idle for lack of work (and a busy worker is not
        # interrupted by a wake-up per submit). A lane found idle last time is woken in the
        # same round trip, with the execution id (the claimer need not probe for it).
        only_eligible = isinstance(created, fn.Created) and created.public_state == "waiting" and replies[-1] == 1
        self._idle_lanes[lane] = only_eligible
        if only_eligible and not woken:
            self.wake(lane, None if attachment else created.execution_id)
        failed = isinstance(created, EngineError)
        # A minted id under budgets answered as a DUPLICATE of itself: the library was reloaded
        # and the batch run twice, and the first run's HSET made the core exist. Try a new id.
        rerun = minted and bool(attachment) and not failed and created.duplicate and created.execution_id == eid
        not_ours = failed or rerun or created.execution_id != eid
        if alias and not_ours:
            # the alias went out with the minted id: drop it, or point it at the duplicate's
            self._replace_alias(alias, expected=str(eid), value=None if failed or rerun else str(created.execution_id))
        if attachment and minted and not_ours:
            self._guard(lambda: self.redis.delete(ExecKeys(eid).core))  # only our HSET wrote it
        if failed:
            raise created
        if alias and not rerun:
            self._remember_alias(alias, created.execution_id)
        return None if rerun else created

    @staticmethod
    def _keep_idempotency_record(batch: Batch, request: fn.CreateExecution) -> None:
        """Queue making the request's idempotency record (FlowFabric's, which expires after
        its dedup window) last as long as the execution: retention deletes it with it."""
        if request.idempotency_key:
            batch.command("persist", request.index.idempotency(request.namespace, request.idempotency_key))

    @property
    def flows(self) -> Flows:
        return Flows(self)

    def _replace_alias(self, alias: str, *, expected: str, value: str | None) -> None:
        """Set (or delete, for None) ``alias`` if it still maps to ``expected``."""
        key = alias_key(self.namespace, alias)

        def swap() -> None:
            def write(pipe: redis.client.Pipeline) -> object:
                return pipe.delete(key) if value is None else pipe.set(key, value, keepttl=True)

            compare_and_set(self.redis, key, expected.encode(), write)

        try:
            self._guard(swap)
        except TransportError as exc:
            log.warning("could not repair alias %s: %s", alias, exc)

    def wake(self, lane: str, execution_id: ExecutionId | None = None) -> None:
        """Tell idle claimers of ``lane`` that work is eligible (ff_celery's notification);
        with ``execution_id``, which one (a hint, see :meth:`Claimer.note_wake`)."""
        self.notify(wake_channel(lane), str(execution_id or WAKE_ANY))

    def notify(self, channel: str, data: str | bytes) -> int:
        """Publish a notice on ``channel`` (see :mod:`ff_celery.engine.core.notices`); answers how
        many listeners it reached."""
        return self._guard(lambda: getattr(self.redis, publish_command(self.redis))(channel, data))

    def resolve(self, alias: str) -> ExecutionId | None:
        """The execution submitted under ``alias``, if any."""
        value = self._guard(lambda: self.redis.get(alias_key(self.namespace, alias)))
        return ExecutionId(value.decode()) if value else None

    def resolve_many(self, aliases: Sequence[str]) -> list[ExecutionId | None]:
        """:meth:`resolve` of each alias: those submitted here from memory, the rest in one
        round trip."""
        found: list[ExecutionId | None] = [self._seen_aliases.get(alias) for alias in aliases]
        unknown = [n for n, eid in enumerate(found) if eid is None]
        if unknown:
            batch = self.batch()
            for n in unknown:
                batch.command("get", alias_key(self.namespace, aliases[n]))
            for n, value in zip(unknown, batch.execute()):
                found[n] = ExecutionId(value.decode()) if isinstance(value, bytes) else None
        return found

    def forget_alias(self, alias: str) -> None:
        self._guard(lambda: self.redis.delete(alias_key(self.namespace, alias)))

    def set_next_attempt_payload(self, execution_id: ExecutionId, payload: bytes) -> None:
        """What the execution's next attempts run instead of its submitted payload
        (FlowFabric's payload is never rewritten); retention deletes it with the execution."""
        key = next_attempt_payload_key(execution_id)
        self._guard(lambda: self.redis.set(key, payload))

    def next_attempt_payload(self, execution_id: ExecutionId) -> bytes | None:
        return self._guard(lambda: self.redis.get(next_attempt_payload_key(execution_id)))

    def ended(self, execution_id: ExecutionId) -> str | None:
        """How the execution ended (its terminal outcome, ``"gone"`` once its retention
        passed), or None while it lives."""
        core = self.read_core(execution_id, CoreField.LIFECYCLE_PHASE, CoreField.TERMINAL_OUTCOME)
        if CoreField.LIFECYCLE_PHASE not in core:
            return "gone"
        if core[CoreField.LIFECYCLE_PHASE] != "terminal":
            return None
        return core.get(CoreField.TERMINAL_OUTCOME) or "ended"

    def read_core(self, execution_id: ExecutionId, *fields: str) -> dict[str, str]:
        """exec_core, whole or the named fields (absent fields omitted)."""
        core = ExecKeys(execution_id).core
        if fields:
            return decode_fields(fields, self._guard(lambda: self.redis.hmget(core, fields)))
        return decode_hash(self._guard(lambda: self.redis.hgetall(core)))

    def read_field(self, execution_id: ExecutionId, field: CoreField, default: str | None = None) -> str | None:
        """One exec_core field, or ``default`` when it (or the execution) is absent."""
        return self.read_core(execution_id, field).get(field, default)

    def read_tags(self, execution_ids: Sequence[ExecutionId]) -> list[dict[str, str]]:
        """The tags of each execution, in one round trip."""
        batch = self.batch()
        for execution_id in execution_ids:
            batch.command("hgetall", ExecKeys(execution_id).tags)
        return [decode_hash(tags) for tags in batch.execute()]

    def snapshot(self, execution_id: ExecutionId) -> ExecutionSnapshot | None:
        """Everything about one execution, read in one round trip; None if it does not exist."""
        keys = ExecKeys(execution_id)

        def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(keys.core)
            pipe.hgetall(keys.tags)
            pipe.get(keys.policy)
            pipe.hgetall(keys.lease_current)
            pipe.zrange(keys.attempts, 0, -1)
            return pipe.execute()

        core, tags, policy, lease, attempt_indexes = self._guard(read)
        if not core:
            return None

        def read_attempts() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for index in attempt_indexes:
                pipe.hgetall(keys.attempt(index.decode()))
            return pipe.execute()

        attempts = self._guard(read_attempts) if attempt_indexes else []
        return ExecutionSnapshot.from_raw(core, tags, policy, lease, attempts)

    def payload(self, execution_id: ExecutionId) -> bytes | None:
        return self._guard(lambda: self.redis.get(ExecKeys(execution_id).payload))

    def stored_policy(self, execution_id: ExecutionId) -> bytes | None:
        """The execution's policy JSON as submitted."""
        return self._guard(lambda: self.redis.get(ExecKeys(execution_id).policy))

    def result(self, execution_id: ExecutionId) -> bytes | None:
        return self._guard(lambda: self.redis.get(ExecKeys(execution_id).result))

    def read_results(self, aliases: Sequence[str]) -> list[tuple[str | None, bytes | None]]:
        """The public state and result of the execution behind each alias (None, None for
        an alias that names none), in two round trips whatever their number."""
        found = self.resolve_many(aliases)
        batch = self.batch()
        for eid in found:
            if eid is not None:
                batch.command("hget", ExecKeys(eid).core, CoreField.PUBLIC_STATE)
                batch.command("get", ExecKeys(eid).result)
        replies = iter(batch.execute())
        return [(text(next(replies)) or None, next(replies)) if eid is not None else (None, None) for eid in found]

    def read_aliased(self, alias: str, fields: Sequence[str], *, also_get: Sequence[str] = ()) -> AliasedRead:
        """The execution ``alias`` maps to, its named exec_core fields and its result, plus
        the plain keys ``also_get``: one round trip when the alias was seen before in this
        process (submitted or read here; the mapping is checked in the same round trip, so a
        repointed alias is read again), two otherwise."""
        key = alias_key(self.namespace, alias)
        guess = self._seen_aliases.get(alias)
        for _ in range(3):
            batch = self.batch()
            batch.command("get", key)
            for extra in also_get:
                batch.command("get", extra)
            if guess is not None:
                keys = ExecKeys(guess)
                batch.command("hmget", keys.core, fields)
                batch.command("get", keys.result)
            replies = batch.execute()
            failed = next((reply for reply in replies if isinstance(reply, Exception)), None)
            if failed is not None:
                raise transport_error(failed)
            value, extras = replies[0], replies[1 : 1 + len(also_get)]
            if value is None:
                return AliasedRead(None, {}, None, extras)
            eid = ExecutionId(value.decode())
            if eid == guess:
                core_values, result = replies[-2:]
                return AliasedRead(eid, decode_fields(fields, core_values), result, extras)
            guess = self._remember_alias(alias, eid)
        raise TransportError(f"alias {alias} kept changing while it was read", retryable=True)

    def _remember_alias(self, alias: str, execution_id: ExecutionId) -> ExecutionId:
        if len(self._seen_aliases) >= SEEN_ALIASES_MAX:
            self._seen_aliases.clear()
        self._seen_aliases[alias] = execution_id
        return execution_id

    def cancel(
        self,
        execution_id: ExecutionId,
        reason: str,
        *,
        source: str = fn.OPERATOR_OVERRIDE,
        fence: fn.Fence | None = None,
    ) -> str:
        """Cancel in any non-terminal phase; answers the phase it was cancelled from.

        With ``source="operator_override"`` (the default) no lease check applies.
        """
        core = self.read_core(
            execution_id,
            CoreField.LANE_ID,
            CoreField.CURRENT_ATTEMPT_INDEX,
            CoreField.CURRENT_WAITPOINT_ID,
            CoreField.CURRENT_WORKER_INSTANCE_ID,
        )
        return self.call(
            fn.CancelExecution(
                execution_id=execution_id,
                reason=reason,
                source=source,
                lease_id=fence.lease_id if fence else "",
                lease_epoch=fence.lease_epoch if fence else None,
                lane_id=core.get(CoreField.LANE_ID, "default"),
                attempt_index=optional_integer(core.get(CoreField.CURRENT_ATTEMPT_INDEX)),
                waitpoint_id=core.get(CoreField.CURRENT_WAITPOINT_ID) or None,
                worker_instance_id=core.get(CoreField.CURRENT_WORKER_INSTANCE_ID, ""),
            )
        )

    def revoke_lease(
        self, execution_id: ExecutionId, reason: str = "operator", expected_lease_id: str = ""
    ) -> fn.Settled:
        holder = self.read_field(execution_id, CoreField.CURRENT_WORKER_INSTANCE_ID, "")
        return self.call(
            fn.RevokeLease(
                execution_id=execution_id,
                expected_lease_id=expected_lease_id,
                reason=reason,
                worker_instance_id=holder,
            )
        )

    def expire(self, execution_id: ExecutionId, reason: fn.ExpireReason) -> fn.Settled:
        core = self.read_core(execution_id, CoreField.LANE_ID, CoreField.CURRENT_ATTEMPT_INDEX)
        return self.call(
            fn.ExpireExecution(
                execution_id=execution_id,
                expire_reason=reason,
                lane_id=core.get(CoreField.LANE_ID, "default"),
                attempt_index=optional_integer(core.get(CoreField.CURRENT_ATTEMPT_INDEX)),
            )
        )

    def replay(self, execution_id: ExecutionId) -> int:
        """Replay a terminal execution (a new attempt of type ``replay`` runs next)."""
        lane = self.read_field(execution_id, CoreField.LANE_ID, "default")
        replayed = self.call(fn.ReplayExecution(execution_id=execution_id, lane_id=lane))
        self.wake(lane)
        return replayed

    def change_priority(self, execution_id: ExecutionId, priority: float) -> tuple[float, float]:
        lane = self.read_field(execution_id, CoreField.LANE_ID, "default")
        return self.call(fn.ChangePriority(execution_id=execution_id, lane_id=lane, new_priority=priority))

    def set_tags(self, execution_id: ExecutionId, tags: dict[str, str]) -> int:
        return self.call(fn.SetExecutionTags(execution_id=execution_id, tags=tags))

    def purge_lane(self, lane: str) -> int:
        """Cancel every eligible and delayed execution on the lane's home partition."""
        index = PartitionKeys(self.partitions.lane_partition(lane))
        members = self._guard(
            lambda: [
                m.decode() for key in (index.eligible(lane), index.delayed(lane)) for m in self.redis.zrange(key, 0, -1)
            ]
        )
        if not members:
            return 0
        reads = self.batch()
        for eid in members:
            reads.command("hget", ExecKeys(ExecutionId(eid)).core, CoreField.CURRENT_ATTEMPT_INDEX)
        requests = [
            fn.CancelExecution(
                execution_id=ExecutionId(eid),
                reason="purged",
                source=fn.OPERATOR_OVERRIDE,
                lane_id=lane,
                attempt_index=int(attempt_index) if attempt_index else None,
            )
            for eid, attempt_index in zip(members, reads.execute())
        ]
        return sum(1 for outcome in self.call_many(requests) if outcome in ("runnable",))

    def lane_counts(self, lane: str) -> dict[str, int]:
        """Sizes of the lane's indexes on its home partition."""
        index = PartitionKeys(self.partitions.lane_partition(lane))

        def read() -> list[int]:
            pipe = self.redis.pipeline(transaction=False)
            for name in LANE_STATES:
                pipe.zcard(index.lane(lane, name))
            return pipe.execute()

        return dict(zip(LANE_STATES, self._guard(read)))
