"""Contract tests: creating, granting, claiming, promoting and replaying executions.

Pins ff_celery's Lua library to /work/shared/spec/flowfabric-core.md (Errata, sections 2-7):
ff_version, ff_create_execution, ff_issue_claim_grant, ff_claim_execution,
ff_claim_resumed_execution, ff_issue_grant_and_claim, ff_promote_delayed, ff_change_priority,
ff_set_execution_tags, ff_replay_execution, ff_register_worker and ff_heartbeat_worker.

Every test runs on a real, emptied server (the ``ff_engine`` / ``ff_redis`` fixtures).
Exact reply shapes are read with a raw FCALL; error codes go through ``Engine.call`` and its
typed errors. State the test needs but no FCALL here produces (a leased-but-runnable core,
a skipped flow member, ...) is written with plain HSET/ZADD.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ff_celery.engine import functions as fn
from ff_celery.engine.core.errors import ContentionError, EngineError, NotFoundError, ValidationError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys, worker_alive_key, worker_caps_key, worker_index_key
from ff_celery.engine.core.library import library_version

from .support import LANE, PARTITION, create, create_request, decode, hash_of, history, keyspace, seven

IDX = PartitionKeys(PARTITION)
NS = "ns"
WORKER, INSTANCE = "worker-1", "worker-1-a"
WORKER2, INSTANCE2 = "worker-2", "worker-2-a"
TTL = 30_000
WEIGHT = 10**12  # eligible score = -(priority * 1e12) + created_at

# §3.1 block A, in the order ff_create_execution writes it.
BLOCK_A = [
    "execution_id",
    "namespace",
    "lane_id",
    "execution_kind",
    "partition_id",
    "priority",
    "creator_identity",
    "lifecycle_phase",
    "ownership_state",
    "eligibility_state",
    "blocking_reason",
    "blocking_detail",
    "terminal_outcome",
    "attempt_state",
    "public_state",
    "total_attempt_count",
    "current_attempt_index",
    "current_attempt_id",
    "current_lease_id",
    "current_lease_epoch",
    "current_worker_id",
    "current_worker_instance_id",
    "current_lane",
    "retry_count",
    "replay_count",
    "lease_reclaim_count",
    "created_at",
    "started_at",
    "completed_at",
    "last_transition_at",
    "last_mutation_at",
    "lease_acquired_at",
    "lease_expires_at",
    "lease_last_renewed_at",
    "lease_renewal_deadline",
    "lease_expired_at",
    "lease_revoked_at",
    "lease_revoke_reason",
    "delay_until",
    "current_suspension_id",
    "current_waitpoint_id",
    "pending_retry_reason",
    "pending_replay_reason",
    "pending_replay_requested_by",
    "pending_previous_attempt_index",
    "progress_pct",
    "progress_message",
    "progress_updated_at",
    "flow_id",
]
GRANT_FIELDS = [
    "worker_id",
    "worker_instance_id",
    "lane_id",
    "capability_hash",
    "route_snapshot_json",
    "admission_summary",
    "created_at",
    "grant_expires_at",
]
LEASE_FIELDS = [
    "lease_id",
    "lease_epoch",
    "execution_id",
    "attempt_id",
    "worker_id",
    "worker_instance_id",
    "acquired_at",
    "expires_at",
    "last_renewed_at",
    "renewal_deadline",
]

# Seven-tuples of §3.6 (phase, ownership, eligibility, blocking, outcome, attempt_state, public).
ROW_1 = ("runnable", "unowned", "eligible_now", "waiting_for_worker", "none", "pending_first_attempt", "waiting")
ROW_2 = (
    "runnable",
    "unowned",
    "not_eligible_until_time",
    "waiting_for_delay",
    "none",
    "pending_first_attempt",
    "delayed",
)
ROW_4 = ("active", "leased", "not_applicable", "none", "none", "running_attempt", "active")
ROW_19 = ("runnable", "unowned", "eligible_now", "waiting_for_worker", "none", "pending_replay_attempt", "waiting")
ROW_20 = (
    "runnable",
    "unowned",
    "blocked_by_dependencies",
    "waiting_for_children",
    "none",
    "pending_replay_attempt",
    "waiting_children",
)


# -- helpers ----------------------------------------------------------------------------------


def fcall(r, model: fn.Fcall, overrides: dict[int, Any] | None = None) -> Any:
    """The raw, decoded reply of ``model``'s FCALL, with ARGV positions (0-based) overridden."""
    argv = list(model.argv())
    for position, value in (overrides or {}).items():
        argv[position] = value
    keys = model.keys()
    return decode(r.fcall(model.function, len(keys), *keys, *argv))


def expect_error(engine, model: fn.Fcall, code: str, details: tuple[str, ...] = ()) -> EngineError:
    with pytest.raises(EngineError) as info:
        engine.call(model)
    assert (info.value.code, info.value.details) == (code, list(details))
    return info.value


def expect_raw_error(r, model: fn.Fcall, overrides: dict[int, Any], code: str, *details: str) -> None:
    assert fcall(r, model, overrides) == [0, code, *details]


def server_now(r) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def field_order(r, key: str) -> list[str]:
    return [k.decode() for k in r.hkeys(key)]


def core_of(r, eid: ExecutionId) -> dict[str, str]:
    return hash_of(r, ExecKeys(eid).core)


def members(r, key: str) -> set[str]:
    return {m.decode() for m in r.zrange(key, 0, -1)}


def score(r, key: str, eid: str) -> float | None:
    return r.zscore(key, eid)


def eligible_score(priority: float, created_at: str | int) -> float:
    return -(priority * WEIGHT) + int(created_at)


def grant_model(eid: ExecutionId, worker: str = WORKER, instance: str = INSTANCE, **fields: Any):
    return fn.IssueClaimGrant(execution_id=eid, worker_id=worker, worker_instance_id=instance, lane_id=LANE, **fields)


def claim_model(eid: ExecutionId, worker: str = WORKER, instance: str = INSTANCE, **fields: Any):
    args: dict[str, Any] = {
        "execution_id": eid,
        "worker_id": worker,
        "worker_instance_id": instance,
        "lane_id": LANE,
        "lease_id": new_uuid(),
        "lease_ttl_ms": TTL,
        "attempt_id": new_uuid(),
    }
    args.update(fields)
    return fn.ClaimExecution(**args)


def resume_model(eid: ExecutionId, worker: str = WORKER2, instance: str = INSTANCE2, **fields: Any):
    args: dict[str, Any] = {
        "execution_id": eid,
        "worker_id": worker,
        "worker_instance_id": instance,
        "lane_id": LANE,
        "lease_id": new_uuid(),
        "lease_ttl_ms": TTL,
        "attempt_index": 0,
    }
    args.update(fields)
    return fn.ClaimResumedExecution(**args)


def gac_model(eid: ExecutionId, worker: str = "operator", instance: str = "operator", **fields: Any):
    args: dict[str, Any] = {
        "execution_id": eid,
        "worker_id": worker,
        "worker_instance_id": instance,
        "lane_id": LANE,
        "lease_id": new_uuid(),
        "lease_ttl_ms": TTL,
        "attempt_id": new_uuid(),
    }
    args.update(fields)
    return fn.IssueGrantAndClaim(**args)


def claim(engine, eid: ExecutionId, worker: str = WORKER, instance: str = INSTANCE, **fields: Any) -> fn.Lease:
    engine.call(grant_model(eid, worker, instance))
    return engine.call(claim_model(eid, worker, instance, **fields))


def create_claimed(engine, **fields: Any) -> tuple[ExecutionId, fn.Lease]:
    eid = create(engine, **fields)
    return eid, claim(engine, eid)


def fence_of(lease: fn.Lease) -> fn.Fence:
    assert lease.attempt_id is not None
    return fn.Fence(lease_id=lease.lease_id, lease_epoch=lease.lease_epoch, attempt_id=lease.attempt_id)


def complete(engine, eid: ExecutionId, lease: fn.Lease, instance: str = INSTANCE) -> None:
    engine.call(
        fn.CompleteExecution(
            execution_id=eid,
            fence=fence_of(lease),
            lane_id=LANE,
            worker_instance_id=instance,
            attempt_index=lease.attempt_index,
        )
    )


def create_completed(engine, **fields: Any) -> tuple[ExecutionId, fn.Lease]:
    eid, lease = create_claimed(engine, **fields)
    complete(engine, eid, lease)
    return eid, lease


def delay(engine, eid: ExecutionId, lease: fn.Lease, until: int) -> None:
    engine.call(
        fn.DelayExecution(
            execution_id=eid,
            fence=fence_of(lease),
            lane_id=LANE,
            worker_instance_id=INSTANCE,
            attempt_index=lease.attempt_index,
            delay_until=until,
        )
    )


def create_interrupted(engine, r, *, promote: bool = True) -> tuple[ExecutionId, fn.Lease, int]:
    """An execution whose first attempt delayed itself (attempt_interrupted); promoted unless told."""
    eid, lease = create_claimed(engine)
    until = server_now(r) + 60_000
    delay(engine, eid, lease, until)
    if promote:
        assert engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=until)) == "promoted"
    return eid, lease, until


def plant_grant(r, eid: ExecutionId, worker: str = WORKER, expires_at: int | None = None) -> None:
    """A grant hash without a key TTL (to reach the grant_expires_at check)."""
    now = server_now(r)
    r.hset(
        ExecKeys(eid).claim_grant,
        mapping={
            "worker_id": worker,
            "worker_instance_id": INSTANCE,
            "lane_id": LANE,
            "capability_hash": "",
            "route_snapshot_json": "",
            "admission_summary": "",
            "created_at": str(now),
            "grant_expires_at": str(now + 60_000 if expires_at is None else expires_at),
        },
    )


def set_core(r, eid: ExecutionId, **fields: str) -> None:
    r.hset(ExecKeys(eid).core, mapping=fields)


# -- ff_version (§5.1) --------------------------------------------------------------------------


def test_version_is_a_plain_bulk_string_naming_ff_celery_not_flowfabric_34(ff_engine, ff_redis):
    raw = ff_redis.fcall("ff_version", 0)
    assert isinstance(raw, bytes)
    assert raw.decode().startswith("ff_celery-")
    assert raw != b"34"
    assert raw.decode() == library_version()
    assert ff_engine.call(fn.Version()) == raw.decode()


# -- ff_create_execution (§5.2) -----------------------------------------------------------------


def test_create_replies_ok_with_the_execution_id_and_waiting(ff_engine, ff_redis):
    model = create_request()
    assert fcall(ff_redis, model) == [1, "OK", model.execution_id, "waiting"]


def test_create_writes_every_block_a_field_in_spec_order_with_its_initial_value(ff_engine, ff_redis):
    model = create_request(priority=5, creator_identity="alice", execution_kind="celery")
    before = server_now(ff_redis)
    ff_engine.call(model)
    after = server_now(ff_redis)
    key = ExecKeys(model.execution_id).core
    assert field_order(ff_redis, key) == BLOCK_A
    core = hash_of(ff_redis, key)
    now = core["created_at"]
    assert before <= int(now) <= after
    expected = dict.fromkeys(BLOCK_A, "")
    expected.update(
        execution_id=model.execution_id,
        namespace=NS,
        lane_id=LANE,
        execution_kind="celery",
        partition_id="86",
        priority="5",
        creator_identity="alice",
        lifecycle_phase="runnable",
        ownership_state="unowned",
        eligibility_state="eligible_now",
        blocking_reason="waiting_for_worker",
        terminal_outcome="none",
        attempt_state="pending_first_attempt",
        public_state="waiting",
        total_attempt_count="0",
        current_lease_epoch="0",
        current_lane=LANE,
        retry_count="0",
        replay_count="0",
        lease_reclaim_count="0",
        created_at=now,
        last_transition_at=now,
        last_mutation_at=now,
    )
    assert core == expected


def test_create_not_delayed_is_row_1_indexed_eligible_by_priority_and_created_at(ff_engine, ff_redis):
    eid = create(ff_engine, priority=7)
    core = core_of(ff_redis, eid)
    assert seven(core) == ROW_1
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(7, core["created_at"])
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert ff_redis.smembers(IDX.all_executions) == {eid.encode()}
    assert not ff_redis.exists(IDX.execution_deadline)


def test_create_with_a_future_delay_is_row_2_indexed_delayed_by_delay_until(ff_engine, ff_redis):
    until = server_now(ff_redis) + 60_000
    model = create_request(delay_until=until, priority=3)
    assert fcall(ff_redis, model) == [1, "OK", model.execution_id, "delayed"]
    core = core_of(ff_redis, model.execution_id)
    assert seven(core) == ROW_2
    assert core["delay_until"] == str(until)
    assert core["blocking_detail"] == f"delayed until {until}"
    assert score(ff_redis, IDX.delayed(LANE), model.execution_id) == until
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    assert ff_redis.sismember(IDX.all_executions, model.execution_id)


def test_create_with_a_deadline_indexes_it_in_execution_deadline(ff_engine, ff_redis):
    deadline = server_now(ff_redis) + 3_600_000
    eid = create(ff_engine, execution_deadline_at=deadline)
    assert score(ff_redis, IDX.execution_deadline, eid) == deadline


@pytest.mark.parametrize(
    ("priority", "stored", "effective"),
    [(-5, "0", 0), (0, "0", 0), (5, "5", 5), (2.5, "2.5", 2.5), (9000, "9000", 9000), (12_000, "9000", 9000)],
)
def test_create_clamps_priority_to_0_through_9000(ff_engine, ff_redis, priority, stored, effective):
    eid = create(ff_engine, priority=priority)
    core = core_of(ff_redis, eid)
    assert core["priority"] == stored
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(effective, core["created_at"])


def test_eligible_order_is_higher_priority_first_then_oldest_first(ff_engine, ff_redis):
    low = create(ff_engine, priority=1)
    time.sleep(0.003)
    high_old = create(ff_engine, priority=9)
    time.sleep(0.003)
    high_new = create(ff_engine, priority=9)
    order = [m.decode() for m in ff_redis.zrangebyscore(IDX.eligible(LANE), "-inf", "+inf")]
    assert order == [high_old, high_new, low]


def test_create_stores_payload_policy_verbatim_and_tags_without_checking_tag_keys(ff_engine, ff_redis):
    policy = '{"max_replay_count": 3}'
    eid = create(ff_engine, input_payload=b"\x00payload", policy_json=policy, tags={"celery.task": "add", "Plain": "1"})
    keys = ExecKeys(eid)
    assert ff_redis.get(keys.payload) == b"\x00payload"
    assert ff_redis.get(keys.policy) == policy.encode()
    assert hash_of(ff_redis, keys.tags) == {"celery.task": "add", "Plain": "1"}


def test_create_stores_non_string_tag_values_as_text(ff_engine, ff_redis):
    model = create_request()
    fcall(ff_redis, model, {10: '{"a.n": 5, "a.b": true}'})
    assert hash_of(ff_redis, ExecKeys(model.execution_id).tags) == {"a.n": "5", "a.b": "true"}


def test_create_stores_an_empty_object_policy_but_no_empty_payload_or_tags(ff_engine, ff_redis):
    eid = create(ff_engine)  # policy "{}", payload b"", tags "{}"
    keys = ExecKeys(eid)
    assert ff_redis.get(keys.policy) == b"{}"
    assert not ff_redis.exists(keys.payload)
    assert not ff_redis.exists(keys.tags)


def test_create_with_empty_policy_json_writes_no_policy_key(ff_engine, ff_redis):
    model = create_request()
    assert fcall(ff_redis, model, {6: "", 10: ""})[:2] == [1, "OK"]
    assert not ff_redis.exists(ExecKeys(model.execution_id).policy)


def test_create_silently_ignores_tags_json_that_does_not_decode(ff_engine, ff_redis):
    model = create_request()
    assert fcall(ff_redis, model, {10: "{not json"}) == [1, "OK", model.execution_id, "waiting"]
    assert not ff_redis.exists(ExecKeys(model.execution_id).tags)


def test_create_with_an_idempotency_key_stores_the_id_with_the_dedup_ttl(ff_engine, ff_redis):
    eid = create(ff_engine, idempotency_key="order-1")
    key = IDX.idempotency(NS, "order-1")
    assert ff_redis.get(key) == eid.encode()
    assert 86_390_000 < ff_redis.pttl(key) <= 86_400_000


def test_create_with_a_zero_dedup_ttl_writes_no_idempotency_key(ff_engine, ff_redis):
    create(ff_engine, idempotency_key="order-1", dedup_ttl_ms=0)
    assert not ff_redis.exists(IDX.idempotency(NS, "order-1"))


def test_second_create_with_the_same_idempotency_key_answers_duplicate_with_the_first_id(ff_engine, ff_redis):
    first = create(ff_engine, idempotency_key="order-1")
    second = create_request(idempotency_key="order-1")
    assert fcall(ff_redis, second) == [1, "DUPLICATE", first]
    assert not ff_redis.exists(ExecKeys(second.execution_id).core)
    assert members(ff_redis, IDX.eligible(LANE)) == {first}
    created = ff_engine.call(second)
    assert (created.duplicate, created.execution_id, created.public_state) == (True, first, None)


def test_create_of_an_existing_core_answers_duplicate_with_its_own_id_and_rewrites_nothing(ff_engine, ff_redis):
    eid = create(ff_engine, priority=1)
    core = core_of(ff_redis, eid)
    assert fcall(ff_redis, create_request(eid, priority=8)) == [1, "DUPLICATE", eid]
    assert core_of(ff_redis, eid) == core


def test_the_placeholder_idempotency_key_is_never_read(ff_engine, ff_redis):
    ff_redis.set(IDX.noop, "{fp:86}:00000000-0000-4000-8000-000000000000")
    model = create_request()
    assert fcall(ff_redis, model) == [1, "OK", model.execution_id, "waiting"]


def test_create_stores_required_capabilities_as_sorted_csv_keeping_duplicates(ff_engine, ff_redis):
    policy = {"routing_requirements": {"required_capabilities": ["gpu", "cuda", "gpu", "caf\u00e9"]}}
    eid = create(ff_engine, policy_json=json.dumps(policy))
    core = core_of(ff_redis, eid)
    assert core["required_capabilities"] == "caf\u00e9,cuda,gpu,gpu"
    assert field_order(ff_redis, ExecKeys(eid).core) == [*BLOCK_A, "required_capabilities"]


def test_create_with_an_empty_required_capability_list_writes_no_field(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json='{"routing_requirements": {"required_capabilities": []}}')
    assert "required_capabilities" not in core_of(ff_redis, eid)


def _required(tokens: Any) -> str:
    return json.dumps({"routing_requirements": {"required_capabilities": tokens}})


@pytest.mark.parametrize(
    ("policy_json", "code", "detail"),
    [
        ("{not json", "invalid_policy_json", "malformed"),
        ('{"routing_requirements": null}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": 5}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": "gpu"}', "invalid_policy_json", "routing_requirements:not_object"),
        (_required("gpu"), "invalid_capabilities", "required:not_array"),
        (_required(5), "invalid_capabilities", "required:not_array"),
        (_required(["gpu", 5]), "invalid_capabilities", "required:non_string_token"),
        (_required(["gpu", ""]), "invalid_capabilities", "required:empty_token"),
        (_required(["a,b"]), "invalid_capabilities", "required:comma_in_token"),
        (_required(["a,b c"]), "invalid_capabilities", "required:comma_in_token"),
        (_required(["a b"]), "invalid_capabilities", "required:control_or_whitespace"),
        (_required(["a\tb"]), "invalid_capabilities", "required:control_or_whitespace"),
        (_required(["a\x7fb"]), "invalid_capabilities", "required:control_or_whitespace"),
        (_required(["t"] * 257), "invalid_capabilities", "required:too_many_tokens"),
        (_required(["x" * 49 + f"{i:02d}" for i in range(90)]), "invalid_capabilities", "required:too_many_bytes"),
    ],
)
def test_create_validates_the_policy_routing_requirements(ff_engine, ff_redis, policy_json, code, detail):
    model = create_request(policy_json=policy_json)
    expect_error(ff_engine, model, code, (detail,))
    keys = ExecKeys(model.execution_id)
    assert not ff_redis.exists(keys.core, keys.policy, IDX.eligible(LANE), IDX.all_executions)


def test_create_accepts_exactly_256_tokens_and_4096_bytes(ff_engine, ff_redis):
    tokens = [f"{i:015d}" for i in range(256)]  # 256 * 15 + 255 commas = 4095 bytes
    eid = create(ff_engine, policy_json=_required(tokens))
    assert core_of(ff_redis, eid)["required_capabilities"] == ",".join(tokens)


def test_create_rejects_a_non_numeric_priority_before_anything_else(ff_engine, ff_redis):
    model = create_request()
    expect_raw_error(ff_redis, model, {4: "high"}, "invalid_input", "priority must be a number, got: high")
    assert list(keyspace(ff_redis)) == [b"ff:config:partitions"]


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [
        (8, "soon", "delay_until must be a number, got: soon"),
        (11, "never", "execution_deadline_at must be a number, got: never"),
        (9, "1.5", "dedup_ttl_ms must be an integer, got: 1.5"),
    ],
)
def test_create_rejects_malformed_numeric_arguments_with_invalid_input(ff_engine, ff_redis, position, value, detail):
    model = create_request(idempotency_key="k")
    expect_raw_error(ff_redis, model, {position: value}, "invalid_input", detail)
    assert not ff_redis.exists(ExecKeys(model.execution_id).core)


def test_invalid_priority_wins_over_an_existing_core(ff_engine, ff_redis):
    eid = create(ff_engine)
    expect_raw_error(ff_redis, create_request(eid), {4: "x"}, "invalid_input", "priority must be a number, got: x")


def test_malformed_delay_until_is_checked_before_the_core_is_read(ff_engine, ff_redis):
    eid = create(ff_engine)
    expect_raw_error(
        ff_redis, create_request(eid), {8: "later"}, "invalid_input", "delay_until must be a number, got: later"
    )


def test_idempotent_duplicate_wins_over_an_existing_core_and_an_invalid_policy(ff_engine, ff_redis):
    first = create(ff_engine, idempotency_key="k")
    other = create(ff_engine)
    model = create_request(other, idempotency_key="k", policy_json="{bad")
    assert fcall(ff_redis, model) == [1, "DUPLICATE", first]


def test_existing_core_duplicate_wins_over_an_invalid_policy(ff_engine, ff_redis):
    eid = create(ff_engine)
    assert fcall(ff_redis, create_request(eid, policy_json="{bad")) == [1, "DUPLICATE", eid]


def test_create_with_a_past_delay_on_the_delayed_key_strands_the_execution(ff_engine, ff_redis):
    """§5.2 pitfall: eligible_now, but added to the delayed zset with the eligible-style score."""
    model = create_request(delay_until=server_now(ff_redis) - 5_000, priority=2)
    assert model.keys()[4] == IDX.delayed(LANE)
    assert fcall(ff_redis, model) == [1, "OK", model.execution_id, "waiting"]
    core = core_of(ff_redis, model.execution_id)
    assert seven(core) == ROW_1
    assert core["delay_until"] == ""
    assert score(ff_redis, IDX.delayed(LANE), model.execution_id) == eligible_score(2, core["created_at"])
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    promote = fn.PromoteDelayed(execution_id=model.execution_id, lane_id=LANE, now_ms=server_now(ff_redis))
    assert ff_engine.call(promote) == "not_delayed_cleaned"
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert members(ff_redis, IDX.eligible(LANE)) == set()


# -- ff_issue_claim_grant (§5.3) ----------------------------------------------------------------


def test_grant_replies_ok_with_the_id_and_writes_the_grant_hash_expiring_at_grant_expires_at(ff_engine, ff_redis):
    eid = create(ff_engine)
    model = grant_model(
        eid,
        capability_hash="h1",
        grant_ttl_ms=7_000,
        route_snapshot_json='{"r":1}',
        admission_summary="ok",
    )
    before = server_now(ff_redis)
    assert fcall(ff_redis, model) == [1, "OK", eid]
    grant_key = ExecKeys(eid).claim_grant
    assert field_order(ff_redis, grant_key) == GRANT_FIELDS
    grant = hash_of(ff_redis, grant_key)
    created_at = int(grant["created_at"])
    assert before <= created_at <= server_now(ff_redis)
    assert grant == {
        "worker_id": WORKER,
        "worker_instance_id": INSTANCE,
        "lane_id": LANE,
        "capability_hash": "h1",
        "route_snapshot_json": '{"r":1}',
        "admission_summary": "ok",
        "created_at": str(created_at),
        "grant_expires_at": str(created_at + 7_000),
    }
    assert ff_redis.execute_command("PEXPIRETIME", grant_key) == created_at + 7_000
    assert 0 < ff_redis.pttl(grant_key) <= 7_000


def test_grant_is_row_3_no_state_change_and_stays_in_eligible(ff_engine, ff_redis):
    eid = create(ff_engine, priority=4)
    core = core_of(ff_redis, eid)
    eligible = score(ff_redis, IDX.eligible(LANE), eid)
    ff_engine.call(grant_model(eid))
    assert core_of(ff_redis, eid) == core
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible


def test_grant_rejects_a_non_numeric_ttl_before_reading_the_core(ff_engine, ff_redis):
    missing = ExecutionId.mint(PARTITION)
    expect_raw_error(
        ff_redis, grant_model(missing), {5: "soon"}, "invalid_input", "grant_ttl_ms must be a number, got: soon"
    )


def test_grant_on_a_missing_execution_is_execution_not_found(ff_engine):
    expect_error(ff_engine, grant_model(ExecutionId.mint(PARTITION)), "execution_not_found")


def test_grant_on_a_delayed_execution_is_execution_not_eligible(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    expect_error(ff_engine, grant_model(eid), "execution_not_eligible")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_grant_on_an_active_execution_is_execution_not_eligible(ff_engine):
    eid, _ = create_claimed(ff_engine)
    expect_error(ff_engine, grant_model(eid), "execution_not_eligible")


def test_grant_on_a_runnable_but_blocked_execution_is_execution_not_eligible(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, eligibility_state="blocked_by_budget")
    expect_error(ff_engine, grant_model(eid), "execution_not_eligible")


def test_second_grant_while_one_is_outstanding_is_grant_already_exists(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    grant = hash_of(ff_redis, ExecKeys(eid).claim_grant)
    expect_error(ff_engine, grant_model(eid, WORKER2, INSTANCE2), "grant_already_exists")
    assert hash_of(ff_redis, ExecKeys(eid).claim_grant) == grant


def test_grant_for_an_execution_missing_from_the_eligible_zset_is_execution_not_in_eligible_set(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_redis.zrem(IDX.eligible(LANE), eid)
    expect_error(ff_engine, grant_model(eid), "execution_not_in_eligible_set")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_capability_mismatch_stamps_the_core_and_lists_the_missing_tokens_sorted(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu", "cuda", "avx"]))
    before = server_now(ff_redis)
    expect_error(
        ff_engine, grant_model(eid, worker_capabilities=("gpu", "other")), "capability_mismatch", ("avx,cuda",)
    )
    stamped = int(core_of(ff_redis, eid)["last_capability_mismatch_at"])
    assert before <= stamped <= server_now(ff_redis)
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert field_order(ff_redis, ExecKeys(eid).core)[-1] == "last_capability_mismatch_at"


def test_a_worker_without_capabilities_misses_every_required_token(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu", "cuda"]))
    expect_error(ff_engine, grant_model(eid), "capability_mismatch", ("cuda,gpu",))


def test_a_worker_with_a_superset_of_the_required_capabilities_gets_the_grant(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu", "cuda"]))
    ff_engine.call(grant_model(eid, worker_capabilities=("cuda", "gpu", "x86")))
    assert ff_redis.exists(ExecKeys(eid).claim_grant)
    assert "last_capability_mismatch_at" not in core_of(ff_redis, eid)


def test_worker_capability_csv_parsing_skips_empty_tokens(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu"]))
    assert fcall(ff_redis, grant_model(eid), {8: ",,gpu,"}) == [1, "OK", eid]


@pytest.mark.parametrize(
    ("csv", "detail"),
    [
        (",".join(["w"] * 257), "worker:too_many_tokens"),
        (",".join(f"{i:040d}" for i in range(100)), "worker:too_many_bytes"),
    ],
)
def test_grant_bounds_the_worker_capability_csv(ff_engine, ff_redis, csv, detail):
    eid = create(ff_engine, policy_json=_required(["gpu"]))
    expect_raw_error(ff_redis, grant_model(eid), {8: csv}, "invalid_capabilities", detail)
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_required_capability_bounds_are_checked_before_the_worker_csv(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, required_capabilities=",".join(f"{i:040d}" for i in range(100)))
    expect_raw_error(
        ff_redis, grant_model(eid), {8: ",".join(["w"] * 300)}, "invalid_capabilities", "required:too_many_bytes"
    )
    set_core(ff_redis, eid, required_capabilities=",".join(["r"] * 257))
    expect_error(ff_engine, grant_model(eid), "invalid_capabilities", ("required:too_many_tokens",))


def test_not_eligible_wins_over_an_outstanding_grant(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, grant_model(eid), "execution_not_eligible")


def test_outstanding_grant_wins_over_a_missing_eligible_entry(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    ff_redis.zrem(IDX.eligible(LANE), eid)
    expect_error(ff_engine, grant_model(eid), "grant_already_exists")


def test_missing_eligible_entry_wins_over_a_capability_mismatch_and_stamps_nothing(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu"]))
    ff_redis.zrem(IDX.eligible(LANE), eid)
    expect_error(ff_engine, grant_model(eid), "execution_not_in_eligible_set")
    assert "last_capability_mismatch_at" not in core_of(ff_redis, eid)


# -- ff_claim_execution (§5.4) ------------------------------------------------------------------


def test_claim_replies_lease_epoch_expiry_attempt_id_index_and_type_initial(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    model = claim_model(eid)
    reply = fcall(ff_redis, model)
    acquired = int(core_of(ff_redis, eid)["lease_acquired_at"])
    assert reply == [1, "OK", model.lease_id, "1", str(acquired + TTL), model.attempt_id, "0", "initial"]


def test_claim_is_row_4_and_writes_the_lease_into_exec_core(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    model = claim_model(eid, renew_before_ms=1_234)
    before = server_now(ff_redis)
    lease = ff_engine.call(model)
    after = server_now(ff_redis)
    core = core_of(ff_redis, eid)
    now = int(core["lease_acquired_at"])
    assert before <= now <= after
    assert seven(core) == ROW_4
    assert lease.expires_at == now + TTL
    assert {name: core[name] for name in BLOCK_A if core[name] != ""} | {"blocking_detail": ""} == {
        "execution_id": eid,
        "namespace": NS,
        "lane_id": LANE,
        "execution_kind": "task",
        "partition_id": "86",
        "priority": "0",
        "lifecycle_phase": "active",
        "ownership_state": "leased",
        "eligibility_state": "not_applicable",
        "blocking_reason": "none",
        "blocking_detail": "",
        "terminal_outcome": "none",
        "attempt_state": "running_attempt",
        "public_state": "active",
        "total_attempt_count": "1",
        "current_attempt_index": "0",
        "current_attempt_id": model.attempt_id,
        "current_lease_id": model.lease_id,
        "current_lease_epoch": "1",
        "current_worker_id": WORKER,
        "current_worker_instance_id": INSTANCE,
        "current_lane": LANE,
        "retry_count": "0",
        "replay_count": "0",
        "lease_reclaim_count": "0",
        "created_at": core["created_at"],
        "started_at": str(now),
        "last_transition_at": str(now),
        "last_mutation_at": str(now),
        "lease_acquired_at": str(now),
        "lease_expires_at": str(now + TTL),
        "lease_last_renewed_at": str(now),
        "lease_renewal_deadline": str(now + 1_234),  # now + ARGV renew_before_ms
    }


def test_claim_index_effects_of_row_4(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    deadline = server_now(ff_redis) + 3_600_000
    lease = ff_engine.call(claim_model(eid, attempt_timeout_ms=5_000, execution_deadline_at=deadline))
    now = int(core_of(ff_redis, eid)["lease_acquired_at"])
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    assert score(ff_redis, IDX.lease_expiry, eid) == now + TTL
    assert score(ff_redis, IDX.active(LANE), eid) == now + TTL
    assert ff_redis.smembers(IDX.worker_leases(INSTANCE)) == {eid.encode()}
    assert score(ff_redis, IDX.attempt_timeout, eid) == now + 5_000
    assert score(ff_redis, IDX.execution_deadline, eid) == deadline
    assert ff_redis.zrange(ExecKeys(eid).attempts, 0, -1, withscores=True) == [(b"0", float(now))]
    assert lease.expires_at == now + TTL


def test_claim_with_zero_or_empty_timeout_and_deadline_indexes_neither(ff_engine, ff_redis):
    first = create(ff_engine)
    claim(ff_engine, first, attempt_timeout_ms=0, execution_deadline_at=0)
    second = create(ff_engine)
    claim(ff_engine, second)
    assert not ff_redis.exists(IDX.attempt_timeout, IDX.execution_deadline)


def test_claim_creates_the_attempt_hash_usage_and_flattened_attempt_policy(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    policy = '{"timeout_ms": 500, "model": "m1", "nested": {"a": [1, 2]}, "flag": true}'
    model = claim_model(eid, attempt_policy_json=policy)
    ff_engine.call(model)
    keys = ExecKeys(eid)
    now = core_of(ff_redis, eid)["lease_acquired_at"]
    assert hash_of(ff_redis, keys.attempt(0)) == {
        "attempt_id": model.attempt_id,
        "execution_id": eid,
        "attempt_index": "0",
        "attempt_type": "initial",
        "attempt_state": "started",
        "created_at": now,
        "started_at": now,
        "lease_id": model.lease_id,
        "lease_epoch": "1",
        "worker_id": WORKER,
        "worker_instance_id": INSTANCE,
    }
    assert hash_of(ff_redis, keys.attempt_usage(0)) == {"last_usage_report_seq": "0"}
    assert hash_of(ff_redis, keys.attempt_policy(0)) == {
        "timeout_ms": "500",
        "model": "m1",
        "nested": '{"a":[1,2]}',
        "flag": "true",
    }


def test_claim_with_an_empty_attempt_policy_writes_no_attempt_policy_hash(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    assert not ff_redis.exists(ExecKeys(eid).attempt_policy(0))


def test_claim_writes_lease_current_in_spec_order_without_a_ttl(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    model = claim_model(eid, renew_before_ms=20_000)
    ff_engine.call(model)
    key = ExecKeys(eid).lease_current
    now = int(core_of(ff_redis, eid)["lease_acquired_at"])
    assert field_order(ff_redis, key) == LEASE_FIELDS
    assert hash_of(ff_redis, key) == {
        "lease_id": model.lease_id,
        "lease_epoch": "1",
        "execution_id": eid,
        "attempt_id": model.attempt_id,
        "worker_id": WORKER,
        "worker_instance_id": INSTANCE,
        "acquired_at": str(now),
        "expires_at": str(now + TTL),
        "last_renewed_at": str(now),
        "renewal_deadline": str(now + 20_000),
    }
    assert ff_redis.pttl(key) == -1


def test_claim_appends_an_acquired_event_in_spec_field_order(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    model = claim_model(eid)
    ff_engine.call(model)
    now = core_of(ff_redis, eid)["lease_acquired_at"]
    events = history(ff_redis, eid)
    assert len(events) == 1
    assert list(events[0].items()) == [
        ("event", "acquired"),
        ("lease_id", model.lease_id),
        ("lease_epoch", "1"),
        ("attempt_id", model.attempt_id),
        ("attempt_index", "0"),
        ("worker_id", WORKER),
        ("ts", now),
    ]


def test_claim_consumes_the_grant(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_claim_after_a_retry_creates_a_retry_attempt_with_lineage_and_keeps_started_at(ff_engine, ff_redis):
    eid, first = create_claimed(ff_engine)
    started_at = core_of(ff_redis, eid)["started_at"]
    outcome = ff_engine.call(
        fn.FailExecution(
            execution_id=eid,
            fence=fence_of(first),
            lane_id=LANE,
            worker_instance_id=INSTANCE,
            attempt_index=0,
            failure_reason="boom",
            retry_policy_json='{"max_retries": 1, "backoff": {"type": "fixed", "delay_ms": 0}}',
        )
    )
    assert outcome.retry_scheduled
    promote = fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=server_now(ff_redis) + 1)
    assert ff_engine.call(promote) == "promoted"
    time.sleep(0.002)
    ff_engine.call(grant_model(eid, WORKER2, INSTANCE2))
    model = claim_model(eid, WORKER2, INSTANCE2)
    reply = fcall(ff_redis, model)
    core = core_of(ff_redis, eid)
    assert reply[1:3] == ["OK", model.lease_id] and reply[3] == "2" and reply[5:] == [model.attempt_id, "1", "retry"]
    assert seven(core) == ROW_4
    assert core["started_at"] == started_at != core["lease_acquired_at"]
    assert (core["current_attempt_index"], core["total_attempt_count"], core["retry_count"]) == ("1", "2", "1")
    assert core["pending_retry_reason"] == core["pending_previous_attempt_index"] == ""
    attempt = hash_of(ff_redis, ExecKeys(eid).attempt(1))
    assert (attempt["attempt_type"], attempt["retry_reason"], attempt["previous_attempt_index"]) == (
        "retry",
        "boom",
        "0",
    )
    assert (attempt["lease_epoch"], attempt["worker_id"], attempt["worker_instance_id"]) == ("2", WORKER2, INSTANCE2)
    assert ff_redis.zrange(ExecKeys(eid).attempts, 0, -1) == [b"0", b"1"]


def test_claim_after_a_replay_creates_a_replay_attempt_with_empty_lineage(ff_engine, ff_redis):
    eid, _ = create_completed(ff_engine)
    ff_engine.call(fn.ReplayExecution(execution_id=eid, lane_id=LANE))
    lease = claim(ff_engine, eid)
    assert (lease.lease_epoch, lease.attempt_index, lease.attempt_type) == (2, 1, "replay")
    attempt = hash_of(ff_redis, ExecKeys(eid).attempt(1))
    assert attempt["attempt_type"] == "replay"
    assert attempt["replay_reason"] == attempt["replay_requested_by"] == attempt["replayed_from_attempt_index"] == ""
    core = core_of(ff_redis, eid)
    assert seven(core) == ROW_4
    assert core["pending_replay_attempt"] == "1"  # nothing clears it (§3.1 block B)


def test_claim_of_an_interrupted_attempt_answers_use_claim_resumed_execution_and_keeps_the_grant(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    ff_engine.call(grant_model(eid))
    grant = hash_of(ff_redis, ExecKeys(eid).claim_grant)
    expect_error(ff_engine, claim_model(eid), "use_claim_resumed_execution")
    assert hash_of(ff_redis, ExecKeys(eid).claim_grant) == grant


def test_claim_without_a_grant_is_invalid_claim_grant(ff_engine, ff_redis):
    eid = create(ff_engine)
    expect_error(ff_engine, claim_model(eid), "invalid_claim_grant")
    assert seven(core_of(ff_redis, eid)) == ROW_1


def test_claim_with_a_grant_issued_to_another_worker_is_invalid_claim_grant(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid, WORKER2, INSTANCE2))
    expect_error(ff_engine, claim_model(eid), "invalid_claim_grant")
    assert ff_redis.exists(ExecKeys(eid).claim_grant)


def test_claim_checks_only_the_grants_worker_id_not_its_instance(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid, WORKER, "another-instance"))
    lease = ff_engine.call(claim_model(eid, WORKER, INSTANCE))
    assert lease.lease_epoch == 1


def test_claim_after_the_grant_key_expired_is_invalid_claim_grant(ff_engine, ff_redis):
    """§3.4: an expired grant is simply gone, so the late claim sees no grant at all and gets
    invalid_claim_grant rather than claim_grant_expired."""
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid, grant_ttl_ms=100))
    time.sleep(0.2)
    expect_error(ff_engine, claim_model(eid), "invalid_claim_grant")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_claim_with_a_grant_past_grant_expires_at_is_claim_grant_expired_and_keeps_the_grant(ff_engine, ff_redis):
    eid = create(ff_engine)
    plant_grant(ff_redis, eid, expires_at=server_now(ff_redis) - 1_000)
    expect_error(ff_engine, claim_model(eid), "claim_grant_expired")
    assert ff_redis.exists(ExecKeys(eid).claim_grant)
    assert seven(core_of(ff_redis, eid)) == ROW_1


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [
        (6, "long", "lease_ttl_ms must be a number, got: long"),
        (7, "soon", "renew_before_ms must be a number, got: soon"),
        (9, "{nope", "attempt_policy_json must be a JSON object"),
        (10, "5s", "attempt_timeout_ms must be a number, got: 5s"),
        (11, "tomorrow", "execution_deadline_at must be a number, got: tomorrow"),
    ],
)
def test_claim_rejects_malformed_arguments_before_reading_the_core(ff_engine, ff_redis, position, value, detail):
    missing = ExecutionId.mint(PARTITION)
    expect_raw_error(ff_redis, claim_model(missing), {position: value}, "invalid_input", detail)


def test_claim_checks_lease_ttl_before_renew_before(ff_engine, ff_redis):
    model = claim_model(create(ff_engine))
    expect_raw_error(ff_redis, model, {6: "a", 7: "b"}, "invalid_input", "lease_ttl_ms must be a number, got: a")


def test_claim_on_a_missing_execution_is_execution_not_found(ff_engine):
    expect_error(ff_engine, claim_model(ExecutionId.mint(PARTITION)), "execution_not_found")


def test_claim_on_an_active_execution_is_not_leaseable_before_lease_conflict(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    plant_grant(ff_redis, eid, WORKER2)
    expect_error(ff_engine, claim_model(eid, WORKER2, INSTANCE2), "execution_not_leaseable")


def test_claim_of_a_runnable_execution_with_an_owner_is_lease_conflict_before_eligibility(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    set_core(ff_redis, eid, ownership_state="leased")
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, claim_model(eid), "lease_conflict")


def test_claim_on_a_delayed_execution_is_execution_not_leaseable(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, claim_model(eid), "execution_not_leaseable")


def test_claim_on_a_terminal_execution_is_execution_not_leaseable(ff_engine, ff_redis):
    eid, _ = create_completed(ff_engine)
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, claim_model(eid), "execution_not_leaseable")


def test_claim_when_terminal_outcome_is_set_is_execution_not_leaseable(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, terminal_outcome="failed")
    ff_engine.call(grant_model(eid))
    expect_error(ff_engine, claim_model(eid), "execution_not_leaseable")


def test_claim_while_an_attempt_is_running_is_active_attempt_exists_before_the_grant_check(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, attempt_state="running_attempt")
    expect_error(ff_engine, claim_model(eid), "active_attempt_exists")


def test_use_claim_resumed_execution_wins_over_a_missing_grant(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    expect_error(ff_engine, claim_model(eid), "use_claim_resumed_execution")


def test_wrong_worker_wins_over_grant_expiry(ff_engine, ff_redis):
    eid = create(ff_engine)
    plant_grant(ff_redis, eid, WORKER2, expires_at=server_now(ff_redis) - 1_000)
    expect_error(ff_engine, claim_model(eid), "invalid_claim_grant")


def test_claim_path_errors_surface_as_typed_engine_errors_with_their_retry_class(ff_engine, ff_redis):
    missing = ExecutionId.mint(PARTITION)
    not_found = expect_error(ff_engine, claim_model(missing), "execution_not_found")
    assert isinstance(not_found, NotFoundError) and not_found.entity == "execution"
    assert not not_found.is_retryable
    eid = create(ff_engine, policy_json=_required(["gpu"]))
    no_grant = expect_error(ff_engine, claim_model(eid), "invalid_claim_grant")
    assert isinstance(no_grant, ContentionError) and no_grant.is_retryable
    assert (no_grant.function, no_grant.execution_id) == ("ff_claim_execution", eid)
    mismatch = expect_error(ff_engine, grant_model(eid), "capability_mismatch", ("gpu",))
    assert isinstance(mismatch, ValidationError) and mismatch.is_retryable


# -- ff_claim_resumed_execution (§5.5) ----------------------------------------------------------


def test_claim_resumed_replies_resumed_with_the_existing_attempt(ff_engine, ff_redis):
    eid, first, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid, WORKER2)
    model = resume_model(eid)
    reply = fcall(ff_redis, model)
    acquired = int(core_of(ff_redis, eid)["lease_acquired_at"])
    assert reply == [1, "OK", model.lease_id, "2", str(acquired + TTL), first.attempt_id, "0", "resumed"]


def test_claim_resumed_is_row_5_reusing_the_attempt_under_a_new_lease(ff_engine, ff_redis):
    eid, first, _ = create_interrupted(ff_engine, ff_redis)
    before = core_of(ff_redis, eid)
    plant_grant(ff_redis, eid, WORKER2)
    model = resume_model(eid, lease_ttl_ms=10_000, remaining_attempt_timeout_ms=4_000)
    lease = ff_engine.call(model)
    core = core_of(ff_redis, eid)
    now = int(core["lease_acquired_at"])
    assert seven(core) == ROW_4
    assert (lease.lease_epoch, lease.attempt_index, lease.attempt_type, lease.attempt_id) == (
        2,
        0,
        "resumed",
        first.attempt_id,
    )
    assert {k: core[k] for k in ("current_attempt_index", "total_attempt_count", "current_attempt_id")} == {
        "current_attempt_index": "0",
        "total_attempt_count": "1",
        "current_attempt_id": first.attempt_id,
    }
    assert core["started_at"] == before["started_at"]
    assert core["current_lease_id"] == model.lease_id
    assert (core["current_worker_id"], core["current_worker_instance_id"]) == (WORKER2, INSTANCE2)
    assert core["lease_expires_at"] == str(now + 10_000)
    assert core["lease_renewal_deadline"] == str(now + 6_666)  # floor(ttl * 2 / 3)
    assert core["lease_expired_at"] == core["lease_revoked_at"] == core["lease_revoke_reason"] == ""
    assert core["blocking_detail"] == ""
    # indexes as row 4, attempt_timeout from the remaining ms
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    assert score(ff_redis, IDX.lease_expiry, eid) == now + 10_000
    assert score(ff_redis, IDX.active(LANE), eid) == now + 10_000
    assert ff_redis.smembers(IDX.worker_leases(INSTANCE2)) == {eid.encode()}
    assert score(ff_redis, IDX.attempt_timeout, eid) == now + 4_000
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)


def test_claim_resumed_restarts_the_attempt_hash_and_keeps_its_type(ff_engine, ff_redis):
    eid, first, _ = create_interrupted(ff_engine, ff_redis)
    assert hash_of(ff_redis, ExecKeys(eid).attempt(0))["suspension_id"] == "worker_delay"
    plant_grant(ff_redis, eid, WORKER2)
    model = resume_model(eid)
    ff_engine.call(model)
    now = core_of(ff_redis, eid)["lease_acquired_at"]
    attempt = hash_of(ff_redis, ExecKeys(eid).attempt(0))
    assert attempt["attempt_type"] == "initial"
    assert {k: attempt[k] for k in ("attempt_state", "resumed_at", "lease_id", "lease_epoch")} == {
        "attempt_state": "started",
        "resumed_at": now,
        "lease_id": model.lease_id,
        "lease_epoch": "2",
    }
    assert (attempt["worker_id"], attempt["worker_instance_id"]) == (WORKER2, INSTANCE2)
    assert attempt["suspended_at"] == attempt["suspension_id"] == ""
    assert ff_redis.zrange(ExecKeys(eid).attempts, 0, -1) == [b"0"]
    assert hash_of(ff_redis, ExecKeys(eid).lease_current) == {
        "lease_id": model.lease_id,
        "lease_epoch": "2",
        "execution_id": eid,
        "attempt_id": first.attempt_id,
        "worker_id": WORKER2,
        "worker_instance_id": INSTANCE2,
        "acquired_at": now,
        "expires_at": str(int(now) + TTL),
        "last_renewed_at": now,
        "renewal_deadline": str(int(now) + TTL * 2 // 3),
    }


def test_claim_resumed_appends_an_acquired_event_with_reason_claim_resumed(ff_engine, ff_redis):
    eid, first, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid, WORKER2)
    model = resume_model(eid)
    ff_engine.call(model)
    now = core_of(ff_redis, eid)["lease_acquired_at"]
    assert list(history(ff_redis, eid)[-1].items()) == [
        ("event", "acquired"),
        ("lease_id", model.lease_id),
        ("lease_epoch", "2"),
        ("attempt_index", "0"),
        ("attempt_id", first.attempt_id),
        ("worker_id", WORKER2),
        ("reason", "claim_resumed"),
        ("ts", now),
    ]


@pytest.mark.parametrize("remaining", [None, 0])
def test_claim_resumed_without_a_positive_remaining_timeout_sets_no_attempt_timeout(ff_engine, ff_redis, remaining):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid, WORKER2)
    ff_engine.call(resume_model(eid, remaining_attempt_timeout_ms=remaining))
    assert not ff_redis.exists(IDX.attempt_timeout)


def test_claim_resumed_does_not_check_eligibility(ff_engine, ff_redis):
    """§5.5: no eligibility check. A still-delayed interrupted execution is resumed at once and
    its delayed entry is left behind."""
    eid, first, _ = create_interrupted(ff_engine, ff_redis, promote=False)
    plant_grant(ff_redis, eid, WORKER2)
    lease = ff_engine.call(resume_model(eid))
    assert (lease.lease_epoch, lease.attempt_id) == (2, first.attempt_id)
    assert seven(core_of(ff_redis, eid)) == ROW_4
    assert eid in members(ff_redis, IDX.delayed(LANE))


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [
        (6, "ttl", "lease_ttl_ms must be a number, got: ttl"),
        (7, "lots", "remaining_attempt_timeout_ms must be a number, got: lots"),
    ],
)
def test_claim_resumed_rejects_malformed_numbers_before_reading_the_core(ff_engine, ff_redis, position, value, detail):
    expect_raw_error(ff_redis, resume_model(ExecutionId.mint(PARTITION)), {position: value}, "invalid_input", detail)


def test_claim_resumed_on_a_missing_execution_is_execution_not_found(ff_engine):
    expect_error(ff_engine, resume_model(ExecutionId.mint(PARTITION)), "execution_not_found")


def test_claim_resumed_on_an_active_interrupted_execution_is_not_leaseable(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    ff_engine.revoke_lease(eid)  # active / lease_revoked / attempt_interrupted
    assert core_of(ff_redis, eid)["attempt_state"] == "attempt_interrupted"
    plant_grant(ff_redis, eid, WORKER2)
    expect_error(ff_engine, resume_model(eid), "execution_not_leaseable")


def test_claim_resumed_of_a_fresh_execution_is_not_a_resumed_execution_before_the_grant_check(ff_engine):
    eid = create(ff_engine)
    expect_error(ff_engine, resume_model(eid), "not_a_resumed_execution")


def test_claim_resumed_without_a_grant_is_invalid_claim_grant(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    expect_error(ff_engine, resume_model(eid), "invalid_claim_grant")


def test_claim_resumed_with_another_workers_expired_grant_is_invalid_claim_grant_and_keeps_it(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid, WORKER, expires_at=server_now(ff_redis) - 1_000)
    expect_error(ff_engine, resume_model(eid, WORKER2), "invalid_claim_grant")
    assert ff_redis.exists(ExecKeys(eid).claim_grant)


def test_claim_resumed_with_a_grant_past_its_expiry_deletes_it_and_is_claim_grant_expired(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid, WORKER2, expires_at=server_now(ff_redis) - 1_000)
    expect_error(ff_engine, resume_model(eid), "claim_grant_expired")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert core_of(ff_redis, eid)["lifecycle_phase"] == "runnable"


# -- ff_issue_grant_and_claim (§5.6) ------------------------------------------------------------


def test_grant_and_claim_replies_only_lease_id_epoch_and_attempt_index(ff_engine, ff_redis):
    eid = create(ff_engine)
    model = gac_model(eid)
    assert fcall(ff_redis, model) == [1, "OK", model.lease_id, "1", "0"]
    lease = ff_engine.call(gac_model(create(ff_engine)))
    assert (lease.lease_epoch, lease.attempt_index, lease.expires_at, lease.attempt_id) == (1, 0, None, None)


def test_grant_and_claim_is_row_23_a_fresh_claim_without_capability_check(ff_engine, ff_redis):
    eid = create(ff_engine, policy_json=_required(["gpu"]))
    deadline = server_now(ff_redis) + 3_600_000
    model = gac_model(
        eid,
        lease_ttl_ms=10_000,
        attempt_timeout_ms=2_000,
        execution_deadline_at=deadline,
        attempt_policy_json='{"k": 1}',
    )
    ff_engine.call(model)
    core = core_of(ff_redis, eid)
    now = int(core["lease_acquired_at"])
    assert seven(core) == ROW_4
    assert "last_capability_mismatch_at" not in core
    assert (core["current_lease_id"], core["current_attempt_id"], core["current_lease_epoch"]) == (
        model.lease_id,
        model.attempt_id,
        "1",
    )
    assert (core["current_worker_id"], core["current_worker_instance_id"]) == ("operator", "operator")
    assert core["started_at"] == str(now)
    assert core["lease_expires_at"] == str(now + 10_000)
    assert core["lease_renewal_deadline"] == str(now + 6_666)  # Lua's floor(ttl * 2 / 3)
    attempt = hash_of(ff_redis, ExecKeys(eid).attempt(0))
    assert (attempt["attempt_type"], attempt["attempt_state"], attempt["attempt_id"]) == (
        "initial",
        "started",
        model.attempt_id,
    )
    assert hash_of(ff_redis, ExecKeys(eid).attempt_policy(0)) == {"k": "1"}
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    assert score(ff_redis, IDX.lease_expiry, eid) == now + 10_000
    assert score(ff_redis, IDX.active(LANE), eid) == now + 10_000
    assert ff_redis.smembers(IDX.worker_leases("operator")) == {eid.encode()}
    assert score(ff_redis, IDX.attempt_timeout, eid) == now + 2_000
    assert score(ff_redis, IDX.execution_deadline, eid) == deadline
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert list(history(ff_redis, eid)[-1].items()) == [
        ("event", "acquired"),
        ("lease_id", model.lease_id),
        ("lease_epoch", "1"),
        ("attempt_id", model.attempt_id),
        ("attempt_index", "0"),
        ("worker_id", "operator"),
        ("reason", "issue_grant_and_claim"),
        ("ts", str(now)),
    ]


def test_grant_and_claim_of_an_interrupted_execution_resumes_its_attempt(ff_engine, ff_redis):
    eid, first, _ = create_interrupted(ff_engine, ff_redis)
    model = gac_model(eid)
    assert fcall(ff_redis, model) == [1, "OK", model.lease_id, "2", "0"]
    core = core_of(ff_redis, eid)
    now = core["lease_acquired_at"]
    assert seven(core) == ROW_4
    assert (core["current_attempt_id"], core["total_attempt_count"]) == (first.attempt_id, "1")
    attempt = hash_of(ff_redis, ExecKeys(eid).attempt(0))
    assert (attempt["attempt_state"], attempt["resumed_at"], attempt["lease_id"]) == ("started", now, model.lease_id)
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert list(history(ff_redis, eid)[-1].items()) == [
        ("event", "acquired"),
        ("lease_id", model.lease_id),
        ("lease_epoch", "2"),
        ("attempt_index", "0"),
        ("attempt_id", first.attempt_id),
        ("worker_id", "operator"),
        ("reason", "issue_grant_and_claim_resumed"),
        ("ts", now),
    ]


def test_grant_and_claim_of_a_delayed_interrupted_execution_claims_now_and_leaves_a_stale_delayed_entry(
    ff_engine, ff_redis
):
    """Errata E3; the next promote answers not_runnable_cleaned."""
    eid, _, until = create_interrupted(ff_engine, ff_redis, promote=False)
    model = gac_model(eid)
    assert fcall(ff_redis, model) == [1, "OK", model.lease_id, "2", "0"]
    assert seven(core_of(ff_redis, eid)) == ROW_4
    assert score(ff_redis, IDX.delayed(LANE), eid) == until
    assert ff_engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=until)) == "not_runnable_cleaned"
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert seven(core_of(ff_redis, eid)) == ROW_4


def test_grant_and_claim_of_an_execution_not_in_eligible_deletes_its_grant(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)  # also not eligible_now
    expect_error(ff_engine, gac_model(eid), "execution_not_in_eligible_set")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert seven(core_of(ff_redis, eid)) == ROW_2


def test_grant_and_claim_of_an_indexed_but_delayed_execution_deletes_its_grant(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    ff_redis.zadd(IDX.eligible(LANE), {eid: 1})
    expect_error(ff_engine, gac_model(eid), "execution_not_eligible")
    assert not ff_redis.exists(ExecKeys(eid).claim_grant)
    assert seven(core_of(ff_redis, eid)) == ROW_2


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [
        (6, "ttl", "lease_ttl_ms must be a number, got: ttl"),
        (8, '"str"', "attempt_policy_json must be a JSON object"),
        (9, "x", "attempt_timeout_ms must be a number, got: x"),
        (10, "y", "execution_deadline_at must be a number, got: y"),
    ],
)
def test_grant_and_claim_rejects_malformed_arguments_before_reading_the_core(
    ff_engine, ff_redis, position, value, detail
):
    expect_raw_error(ff_redis, gac_model(ExecutionId.mint(PARTITION)), {position: value}, "invalid_input", detail)


def test_grant_and_claim_on_a_missing_execution_is_execution_not_found(ff_engine):
    expect_error(ff_engine, gac_model(ExecutionId.mint(PARTITION)), "execution_not_found")


def test_grant_and_claim_on_a_revoked_active_execution_is_not_eligible_before_lease_conflict(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    ff_engine.revoke_lease(eid)
    expect_error(ff_engine, gac_model(eid), "execution_not_eligible")


def test_grant_and_claim_on_a_terminal_execution_is_execution_not_eligible(ff_engine):
    eid, _ = create_completed(ff_engine)
    expect_error(ff_engine, gac_model(eid), "execution_not_eligible")


def test_grant_and_claim_of_an_owned_runnable_execution_is_lease_conflict_before_outcome(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, ownership_state="leased", terminal_outcome="failed")
    expect_error(ff_engine, gac_model(eid), "lease_conflict")


def test_grant_and_claim_with_a_terminal_outcome_is_not_eligible_before_active_attempt(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, terminal_outcome="failed", attempt_state="running_attempt")
    expect_error(ff_engine, gac_model(eid), "execution_not_eligible")


def test_grant_and_claim_with_a_running_attempt_is_active_attempt_exists_before_grant_check(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, attempt_state="running_attempt")
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, gac_model(eid), "active_attempt_exists")


def test_grant_and_claim_with_an_outstanding_grant_is_grant_already_exists_and_keeps_it(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_engine.call(grant_model(eid))
    grant = hash_of(ff_redis, ExecKeys(eid).claim_grant)
    expect_error(ff_engine, gac_model(eid), "grant_already_exists")
    assert hash_of(ff_redis, ExecKeys(eid).claim_grant) == grant
    assert seven(core_of(ff_redis, eid)) == ROW_1


def test_grant_and_claim_outstanding_grant_wins_over_the_resume_path(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, gac_model(eid), "grant_already_exists")
    assert core_of(ff_redis, eid)["attempt_state"] == "attempt_interrupted"


def test_grant_and_claim_outstanding_grant_wins_over_a_missing_eligible_entry(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    plant_grant(ff_redis, eid)
    expect_error(ff_engine, gac_model(eid), "grant_already_exists")
    assert ff_redis.exists(ExecKeys(eid).claim_grant)


# -- ff_promote_delayed (§5.12) -----------------------------------------------------------------


def test_promote_of_a_due_execution_is_row_12_and_rescored_by_created_at(ff_engine, ff_redis):
    until = server_now(ff_redis) + 60_000
    eid = create(ff_engine, delay_until=until, priority=3)
    created_at = core_of(ff_redis, eid)["created_at"]
    model = fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=until + 5)
    assert fcall(ff_redis, model) == [1, "OK", "promoted"]
    core = core_of(ff_redis, eid)
    assert seven(core) == ROW_1  # attempt_state kept (pending_first_attempt)
    assert core["delay_until"] == core["blocking_detail"] == ""
    assert core["last_transition_at"] == core["last_mutation_at"] == str(until + 5)  # trusted ARGV now
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(3, created_at)


def test_promote_exactly_at_delay_until_promotes(ff_engine, ff_redis):
    until = server_now(ff_redis) + 60_000
    eid = create(ff_engine, delay_until=until)
    assert ff_engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=until)) == "promoted"


def test_promote_before_delay_until_is_not_yet_due_and_changes_nothing(ff_engine, ff_redis):
    until = server_now(ff_redis) + 60_000
    eid = create(ff_engine, delay_until=until)
    core = core_of(ff_redis, eid)
    model = fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=until - 1)
    assert fcall(ff_redis, model) == [1, "OK", "not_yet_due"]
    assert core_of(ff_redis, eid) == core
    assert score(ff_redis, IDX.delayed(LANE), eid) == until
    assert members(ff_redis, IDX.eligible(LANE)) == set()


def test_promote_keeps_an_interrupted_attempt_state(ff_engine, ff_redis):
    eid, _, _ = create_interrupted(ff_engine, ff_redis)
    core = core_of(ff_redis, eid)
    assert seven(core) == (*ROW_1[:5], "attempt_interrupted", "waiting")
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(0, core["created_at"])


def test_promote_of_a_missing_execution_cleans_the_delayed_entry(ff_engine, ff_redis):
    ghost = ExecutionId.mint(PARTITION)
    ff_redis.zadd(IDX.delayed(LANE), {ghost: 1})
    model = fn.PromoteDelayed(execution_id=ghost, lane_id=LANE, now_ms=2)
    assert fcall(ff_redis, model) == [1, "OK", "not_found_cleaned"]
    assert members(ff_redis, IDX.delayed(LANE)) == set()


def test_promote_of_an_active_execution_cleans_it_as_not_runnable(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    ff_redis.zadd(IDX.delayed(LANE), {eid: 1})
    assert ff_engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=2)) == "not_runnable_cleaned"
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert seven(core_of(ff_redis, eid)) == ROW_4


def test_promote_of_an_eligible_execution_cleans_it_as_not_delayed_even_when_not_due(ff_engine, ff_redis):
    eid = create(ff_engine)
    ff_redis.zadd(IDX.delayed(LANE), {eid: 10**15})
    assert ff_engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=1)) == "not_delayed_cleaned"
    assert members(ff_redis, IDX.delayed(LANE)) == set()
    assert eid in members(ff_redis, IDX.eligible(LANE))


def test_promote_rejects_a_non_numeric_now(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000)
    model = fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=0)
    expect_raw_error(ff_redis, model, {1: "now"}, "invalid_input", "now_ms must be a number, got: now")
    assert eid in members(ff_redis, IDX.delayed(LANE))


# -- ff_change_priority (§5.18) -----------------------------------------------------------------


def test_change_priority_replies_old_and_clamped_new_and_rescores_by_created_at(ff_engine, ff_redis):
    eid = create(ff_engine, priority=5)
    core = core_of(ff_redis, eid)
    model = fn.ChangePriority(execution_id=eid, lane_id=LANE, new_priority=12_000)
    before = server_now(ff_redis)
    assert fcall(ff_redis, model) == [1, "OK", "5", "9000"]
    after = core_of(ff_redis, eid)
    assert after["priority"] == "9000"
    assert before <= int(after["last_mutation_at"]) <= server_now(ff_redis)
    assert after["created_at"] == core["created_at"]
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(9000, core["created_at"])


@pytest.mark.parametrize(("new", "reply"), [(-3, (2.5, 0.0)), (7.5, (2.5, 7.5))])
def test_change_priority_clamps_and_keeps_fractions(ff_engine, ff_redis, new, reply):
    eid = create(ff_engine, priority=2.5)
    assert ff_engine.call(fn.ChangePriority(execution_id=eid, lane_id=LANE, new_priority=new)) == reply
    created_at = core_of(ff_redis, eid)["created_at"]
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(reply[1], created_at)


def test_change_priority_rejects_a_non_numeric_priority_before_reading_the_core(ff_engine, ff_redis):
    model = fn.ChangePriority(execution_id=ExecutionId.mint(PARTITION), lane_id=LANE, new_priority=1)
    expect_raw_error(ff_redis, model, {1: "urgent"}, "invalid_input", "new_priority must be a number, got: urgent")


def test_change_priority_of_a_missing_execution_is_execution_not_found(ff_engine):
    model = fn.ChangePriority(execution_id=ExecutionId.mint(PARTITION), lane_id=LANE, new_priority=1)
    expect_error(ff_engine, model, "execution_not_found")


def test_change_priority_of_a_delayed_execution_is_not_eligible(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=server_now(ff_redis) + 60_000, priority=1)
    expect_error(ff_engine, fn.ChangePriority(execution_id=eid, lane_id=LANE, new_priority=9), "execution_not_eligible")
    assert core_of(ff_redis, eid)["priority"] == "1"
    assert members(ff_redis, IDX.eligible(LANE)) == set()


def test_change_priority_of_an_active_execution_is_not_eligible(ff_engine, ff_redis):
    eid, _ = create_claimed(ff_engine)
    expect_error(ff_engine, fn.ChangePriority(execution_id=eid, lane_id=LANE, new_priority=9), "execution_not_eligible")
    assert members(ff_redis, IDX.eligible(LANE)) == set()


# -- ff_set_execution_tags (§5.19) --------------------------------------------------------------


def test_set_tags_replies_the_pair_count_and_writes_tags_and_last_mutation_at(ff_engine, ff_redis):
    eid = create(ff_engine, tags={"app.old": "1"})
    model = fn.SetExecutionTags(execution_id=eid, tags={"celery.task": "add", "app.old": "2"})
    before = server_now(ff_redis)
    assert fcall(ff_redis, model) == [1, "OK", "2"]
    assert hash_of(ff_redis, ExecKeys(eid).tags) == {"app.old": "2", "celery.task": "add"}
    assert before <= int(core_of(ff_redis, eid)["last_mutation_at"]) <= server_now(ff_redis)


@pytest.mark.parametrize("argv", [[], ["celery.task"], ["a.b", "1", "c.d"]])
def test_set_tags_with_an_empty_or_odd_argument_list_is_invalid_input_even_for_a_missing_core(
    ff_engine, ff_redis, argv
):
    x = ExecKeys(ExecutionId.mint(PARTITION))
    assert decode(ff_redis.fcall("ff_set_execution_tags", 2, x.core, x.tags, *argv)) == [
        0,
        "invalid_input",
        "tags must be non-empty even-length key/value pairs",
    ]


def test_set_tags_on_a_missing_execution_is_not_found_before_the_key_check(ff_engine):
    model = fn.SetExecutionTags(execution_id=ExecutionId.mint(PARTITION), tags={"BAD": "1"})
    expect_error(ff_engine, model, "execution_not_found")


@pytest.mark.parametrize("bad_key", ["Celery.task", "celery", "celery.", "celery..x", "9x.y", "_a.b", "a-b.c", ".a"])
def test_set_tags_rejects_a_key_outside_the_namespace_rule_and_writes_nothing(ff_engine, ff_redis, bad_key):
    eid = create(ff_engine, tags={"app.kept": "1"})
    core = core_of(ff_redis, eid)
    x = ExecKeys(eid)
    reply = decode(ff_redis.fcall("ff_set_execution_tags", 2, x.core, x.tags, "a.ok", "v", bad_key, "v"))
    assert reply == [0, "invalid_tag_key", bad_key]
    assert hash_of(ff_redis, x.tags) == {"app.kept": "1"}
    assert core_of(ff_redis, eid) == core


@pytest.mark.parametrize("good_key", ["a.b", "celery.task", "a_1.b.c", "z9.x"])
def test_set_tags_accepts_keys_matching_the_namespace_rule(ff_engine, ff_redis, good_key):
    eid = create(ff_engine)
    assert ff_engine.call(fn.SetExecutionTags(execution_id=eid, tags={good_key: "v"})) == 1
    assert hash_of(ff_redis, ExecKeys(eid).tags) == {good_key: "v"}


# -- ff_replay_execution (§5.21) ----------------------------------------------------------------


def test_replay_of_a_completed_execution_is_row_19_back_to_eligible_by_created_at(ff_engine, ff_redis):
    eid, lease = create_completed(ff_engine, priority=6)
    done = core_of(ff_redis, eid)
    assert eid in members(ff_redis, IDX.terminal(LANE))
    model = fn.ReplayExecution(execution_id=eid, lane_id=LANE)
    assert fcall(ff_redis, model) == [1, "OK", "0"]
    core = core_of(ff_redis, eid)
    now = core["last_transition_at"]
    assert seven(core) == ROW_19
    assert (core["replay_count"], core["pending_replay_attempt"], core["completed_at"]) == ("1", "1", "")
    assert core["blocking_detail"] == ""
    assert core["last_mutation_at"] == now
    # the execution keeps its attempt index, attempt id and epoch
    assert (core["current_attempt_index"], core["current_attempt_id"], core["current_lease_epoch"]) == (
        "0",
        lease.attempt_id,
        "1",
    )
    assert core["total_attempt_count"] == done["total_attempt_count"] == "1"
    assert members(ff_redis, IDX.terminal(LANE)) == set()
    assert score(ff_redis, IDX.eligible(LANE), eid) == eligible_score(6, core["created_at"])
    assert list(history(ff_redis, eid)[-1].items()) == [
        ("event", "replay_initiated"),
        ("replay_count", "1"),
        ("replay_type", "normal"),
        ("ts", now),
    ]


def _make_skipped_flow_member(ff_engine, ff_redis, flow_id: str | None) -> ExecutionId:
    eid = create(ff_engine)
    set_core(
        ff_redis,
        eid,
        lifecycle_phase="terminal",
        eligibility_state="not_applicable",
        blocking_reason="none",
        terminal_outcome="skipped",
        attempt_state="none",
        public_state="skipped",
        completed_at="1000",
        flow_id=flow_id or "",
    )
    ff_redis.zrem(IDX.eligible(LANE), eid)
    ff_redis.zadd(IDX.terminal(LANE), {eid: 1000})
    return eid


def test_replay_of_a_skipped_flow_member_is_row_20_and_rearms_its_impossible_edges(ff_engine, ff_redis):
    eid = _make_skipped_flow_member(ff_engine, ff_redis, new_uuid())
    x = ExecKeys(eid)
    impossible, unsatisfied, satisfied = new_uuid(), new_uuid(), new_uuid()
    edge = {e: f"ff:exec:{x.tag}:{eid}:dep:{e}" for e in (impossible, unsatisfied, satisfied)}
    ff_redis.hset(edge[impossible], mapping={"state": "impossible", "last_resolved_at": "900"})
    ff_redis.hset(edge[unsatisfied], mapping={"state": "unsatisfied", "last_resolved_at": ""})
    ff_redis.hset(edge[satisfied], mapping={"state": "satisfied", "last_resolved_at": "800"})
    deps_meta, unresolved = f"ff:exec:{x.tag}:{eid}:deps:meta", f"ff:exec:{x.tag}:{eid}:deps:unresolved"
    ff_redis.hset(deps_meta, mapping={"unsatisfied_required_count": "1", "impossible_required_count": "1"})
    model = fn.ReplayExecution(execution_id=eid, lane_id=LANE, edge_ids=(impossible, unsatisfied, satisfied))
    assert model.keys()[4:7] == [IDX.blocked(LANE, "dependencies"), deps_meta, unresolved]

    assert fcall(ff_redis, model) == [1, "OK", "2"]
    core = core_of(ff_redis, eid)
    now = core["last_transition_at"]
    assert seven(core) == ROW_20
    assert (core["replay_count"], core["pending_replay_attempt"], core["completed_at"]) == ("1", "1", "")
    assert hash_of(ff_redis, edge[impossible]) == {"state": "unsatisfied", "last_resolved_at": ""}
    assert hash_of(ff_redis, edge[unsatisfied]) == {"state": "unsatisfied", "last_resolved_at": ""}
    assert hash_of(ff_redis, edge[satisfied]) == {"state": "satisfied", "last_resolved_at": "800"}
    assert ff_redis.smembers(unresolved) == {impossible.encode()}
    assert hash_of(ff_redis, deps_meta) == {
        "unsatisfied_required_count": "2",
        "impossible_required_count": "0",
        "last_dependency_update_at": now,
    }
    assert members(ff_redis, IDX.terminal(LANE)) == set()
    assert members(ff_redis, IDX.eligible(LANE)) == set()
    assert score(ff_redis, IDX.blocked(LANE, "dependencies"), eid) == int(core["created_at"])
    assert list(history(ff_redis, eid)[-1].items()) == [
        ("event", "replay_initiated"),
        ("replay_count", "1"),
        ("replay_type", "skipped_flow_member"),
        ("ts", now),
    ]


def test_replay_of_a_skipped_execution_outside_any_flow_takes_the_normal_path(ff_engine, ff_redis):
    eid = _make_skipped_flow_member(ff_engine, ff_redis, None)
    assert ff_engine.call(fn.ReplayExecution(execution_id=eid, lane_id=LANE)) == 0
    assert seven(core_of(ff_redis, eid)) == ROW_19
    assert eid in members(ff_redis, IDX.eligible(LANE))
    assert history(ff_redis, eid)[-1]["replay_type"] == "normal"


def test_replay_of_a_completed_flow_member_takes_the_normal_path(ff_engine, ff_redis):
    eid, _ = create_completed(ff_engine)
    set_core(ff_redis, eid, flow_id=new_uuid())
    assert ff_engine.call(fn.ReplayExecution(execution_id=eid, lane_id=LANE)) == 0
    assert seven(core_of(ff_redis, eid)) == ROW_19


def test_replay_of_a_missing_execution_is_execution_not_found(ff_engine):
    expect_error(
        ff_engine, fn.ReplayExecution(execution_id=ExecutionId.mint(PARTITION), lane_id=LANE), "execution_not_found"
    )


def test_replay_of_a_non_terminal_execution_is_not_terminal_before_the_replay_cap(ff_engine, ff_redis):
    eid = create(ff_engine)
    set_core(ff_redis, eid, replay_count="10")
    expect_error(ff_engine, fn.ReplayExecution(execution_id=eid, lane_id=LANE), "execution_not_terminal")
    assert seven(core_of(ff_redis, eid)) == ROW_1


@pytest.mark.parametrize(("replay_count", "allowed"), [("9", True), ("10", False)])
def test_replay_cap_defaults_to_10_replays(ff_engine, ff_redis, replay_count, allowed):
    eid, _ = create_completed(ff_engine)
    set_core(ff_redis, eid, replay_count=replay_count)
    model = fn.ReplayExecution(execution_id=eid, lane_id=LANE)
    if allowed:
        assert ff_engine.call(model) == 0
        assert core_of(ff_redis, eid)["replay_count"] == "10"
    else:
        expect_error(ff_engine, model, "max_replays_exhausted")
        assert core_of(ff_redis, eid)["lifecycle_phase"] == "terminal"
        assert eid in members(ff_redis, IDX.terminal(LANE))


def test_replay_cap_comes_from_the_policys_max_replay_count(ff_engine, ff_redis):
    eid, _ = create_completed(ff_engine, policy_json='{"max_replay_count": 1}')
    assert ff_engine.call(fn.ReplayExecution(execution_id=eid, lane_id=LANE)) == 0
    complete(ff_engine, eid, claim(ff_engine, eid))
    history_length = len(history(ff_redis, eid))
    expect_error(ff_engine, fn.ReplayExecution(execution_id=eid, lane_id=LANE), "max_replays_exhausted")
    core = core_of(ff_redis, eid)
    assert (core["replay_count"], core["terminal_outcome"]) == ("1", "success")
    assert len(history(ff_redis, eid)) == history_length


# -- ff_register_worker / ff_heartbeat_worker (§5.22) ---------------------------------------------


def register_model(**fields: Any) -> fn.RegisterWorker:
    args: dict[str, Any] = {
        "namespace": NS,
        "worker_instance_id": INSTANCE,
        "worker_id": WORKER,
        "lanes": ("default", "hot"),
        "capabilities": ("gpu", "cuda"),
        "ttl_ms": 5_000,
        "now_ms": 1_000,
    }
    args.update(fields)
    return fn.RegisterWorker(**args)


@pytest.mark.standalone
def test_register_worker_writes_alive_caps_and_index_and_answers_registered_then_refreshed(ff_engine, ff_redis):
    alive, caps = worker_alive_key(NS, INSTANCE), worker_caps_key(NS, INSTANCE)
    assert fcall(ff_redis, register_model()) == [1, "OK", "registered"]
    assert ff_redis.get(alive) == b"1"
    assert 0 < ff_redis.pttl(alive) <= 5_000
    assert field_order(ff_redis, caps) == [
        "worker_id",
        "lanes_csv",
        "caps_csv",
        "ttl_ms",
        "registered_at_ms",
        "last_heartbeat_ms",
    ]
    assert hash_of(ff_redis, caps) == {
        "worker_id": WORKER,
        "lanes_csv": "default,hot",
        "caps_csv": "cuda,gpu",
        "ttl_ms": "5000",
        "registered_at_ms": "1000",
        "last_heartbeat_ms": "1000",
    }
    assert 0 < ff_redis.pttl(caps) <= 5_000
    assert ff_redis.smembers(worker_index_key(NS)) == {INSTANCE.encode()}
    assert fcall(ff_redis, register_model(ttl_ms=9_000, now_ms=2_000)) == [1, "OK", "refreshed"]
    assert 5_000 < ff_redis.pttl(alive) <= 9_000
    assert hash_of(ff_redis, caps)["registered_at_ms"] == "2000"


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [(4, "long", "ttl_ms must be a number, got: long"), (5, "now", "now_ms must be a number, got: now")],
)
@pytest.mark.standalone
def test_register_worker_rejects_non_numeric_ttl_and_now(ff_engine, ff_redis, position, value, detail):
    expect_raw_error(ff_redis, register_model(), {position: value}, "invalid_input", detail)
    assert not ff_redis.exists(worker_alive_key(NS, INSTANCE), worker_caps_key(NS, INSTANCE), worker_index_key(NS))


@pytest.mark.standalone
def test_heartbeat_of_an_unknown_worker_is_not_registered(ff_engine, ff_redis):
    model = fn.HeartbeatWorker(namespace=NS, worker_instance_id=INSTANCE, now_ms=5)
    assert fcall(ff_redis, model) == [1, "OK", "not_registered"]
    assert not ff_redis.exists(worker_alive_key(NS, INSTANCE))


@pytest.mark.standalone
def test_heartbeat_refreshes_both_ttls_and_the_last_heartbeat(ff_engine, ff_redis):
    ff_engine.call(register_model(ttl_ms=5_000))
    alive, caps = worker_alive_key(NS, INSTANCE), worker_caps_key(NS, INSTANCE)
    ff_redis.pexpire(alive, 100)
    ff_redis.pexpire(caps, 100)
    model = fn.HeartbeatWorker(namespace=NS, worker_instance_id=INSTANCE, now_ms=7_777)
    assert fcall(ff_redis, model) == [1, "OK", "refreshed", "5000"]
    assert 100 < ff_redis.pttl(alive) <= 5_000
    assert 100 < ff_redis.pttl(caps) <= 5_000
    assert hash_of(ff_redis, caps)["last_heartbeat_ms"] == "7777"
    assert hash_of(ff_redis, caps)["registered_at_ms"] == "1000"


@pytest.mark.standalone
def test_heartbeat_after_the_alive_key_lapsed_is_not_registered_and_touches_nothing(ff_engine, ff_redis):
    ff_engine.call(register_model())
    caps = worker_caps_key(NS, INSTANCE)
    ff_redis.delete(worker_alive_key(NS, INSTANCE))
    ff_redis.persist(caps)
    assert ff_engine.call(fn.HeartbeatWorker(namespace=NS, worker_instance_id=INSTANCE, now_ms=9)) == "not_registered"
    assert hash_of(ff_redis, caps)["last_heartbeat_ms"] == "1000"
    assert ff_redis.pttl(caps) == -1
    assert not ff_redis.exists(worker_alive_key(NS, INSTANCE))


@pytest.mark.standalone
def test_heartbeat_with_a_non_numeric_stored_ttl_is_not_registered(ff_engine, ff_redis):
    ff_engine.call(register_model())
    ff_redis.hset(worker_caps_key(NS, INSTANCE), "ttl_ms", "forever")
    assert ff_engine.call(fn.HeartbeatWorker(namespace=NS, worker_instance_id=INSTANCE, now_ms=9)) == "not_registered"
