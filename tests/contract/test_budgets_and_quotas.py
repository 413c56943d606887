"""Contract tests: budgets, quotas and admission blocking.

Covers ff_create_budget, ff_report_usage_and_check, ff_record_spend, ff_release_budget,
ff_reset_budget, ff_block_execution_for_admission, ff_unblock_execution,
ff_create_quota_policy, ff_check_admission_and_record and ff_release_admission against
/work/shared/spec/flowfabric-suspend-budget-stream-flow.md (§0.1, §0.4, §1.3, §1.4, §5.1-§5.6,
§6.1-§6.3, §6.5, §6.6, §10, §11 items 10-12) and the priority score of
/work/shared/spec/flowfabric-core.md, on a real server. Malformed numeric input that
FlowFabric's library would trip over part-way is rejected as invalid_input with no partial
writes.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import ExecutionNotActiveError, ValidationError
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import BudgetKeys, ExecKeys, PartitionKeys, QuotaKeys
from ff_celery.engine.core.partitions import PartitionConfig

from .support import expect_error, grant_and_claim, hash_of, keyspace, raw

LANE = "default"
PARTITION = 86  # crc16("default") % 256
IDX = PartitionKeys(PARTITION)
WORKER, WIID = "worker-a", "worker-a-1"
NOW = 1_700_000_000_000
DAY_MS = 86_400_000

BUDGET_ID = "0b6f3f4e-5a2c-4c1e-9a0e-6f1d2b3c4d5e"
BUDGET_PARTITION = PartitionConfig().budget_partition(BUDGET_ID)
BK = BudgetKeys(BUDGET_ID, BUDGET_PARTITION)
QUOTA_ID = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
QUOTA_PARTITION = PartitionConfig().quota_partition(QUOTA_ID)
QK = QuotaKeys(QUOTA_ID, QUOTA_PARTITION)

DEFINITION_FIELDS = [
    "budget_id",
    "scope_type",
    "scope_id",
    "enforcement_mode",
    "on_hard_limit",
    "on_soft_limit",
    "reset_interval_ms",
    "breach_count",
    "soft_breach_count",
    "created_at",
    "last_updated_at",
]
BLOCKS = [
    ("waiting_for_budget", "blocked_by_budget", "budget"),
    ("waiting_for_quota", "blocked_by_quota", "quota"),
    ("waiting_for_capable_worker", "blocked_by_route", "route"),
    ("paused_by_operator", "blocked_by_operator", "operator"),
    ("paused_by_policy", "blocked_by_lane_state", "operator"),
]


# -- helpers ------------------------------------------------------------------------------------


def unchanged(r: redis.Redis, model: fn.Fcall[Any], argv: list[Any], reply: list[Any]) -> None:
    """``model`` sent with ``argv`` answers ``reply`` and writes nothing."""
    before = keyspace(r)
    assert raw(r, model, argv=argv) == reply
    assert keyspace(r) == before


def create_budget(**fields: Any) -> fn.CreateBudget:
    fields = {"scope_type": "flow", "scope_id": "flow-1", "now_ms": NOW, **fields}
    return fn.CreateBudget(budget_id=BUDGET_ID, partition=BUDGET_PARTITION, **fields)


def report(usage: dict[str, int], *, dedup_id: str | None = None, now_ms: int = NOW + 1) -> fn.ReportUsageAndCheck:
    return fn.ReportUsageAndCheck(
        budget_id=BUDGET_ID, partition=BUDGET_PARTITION, usage=usage, now_ms=now_ms, dedup_id=dedup_id
    )


def spend(deltas: dict[str, int], execution_id: ExecutionId | None = None, key: str | None = None) -> fn.RecordSpend:
    return fn.RecordSpend(
        budget_id=BUDGET_ID,
        partition=BUDGET_PARTITION,
        deltas=deltas,
        now_ms=NOW + 2,
        idempotency_key=key,
        execution_id=execution_id,
    )


def release(execution_id: ExecutionId) -> fn.ReleaseBudget:
    return fn.ReleaseBudget(budget_id=BUDGET_ID, partition=BUDGET_PARTITION, execution_id=execution_id)


def reset(now_ms: int = NOW + 10) -> fn.ResetBudget:
    return fn.ResetBudget(budget_id=BUDGET_ID, partition=BUDGET_PARTITION, now_ms=now_ms)


def usage(r: redis.Redis) -> dict[str, str]:
    return hash_of(r, BK.usage)


def new_eid() -> ExecutionId:
    return ExecutionId.mint(PARTITION)


def submitted(engine: Engine, priority: float = 0) -> ExecutionId:
    return engine.submit(LANE, b"payload", priority=priority).execution_id


def block(eid: ExecutionId, reason: str = "waiting_for_budget", **fields: Any) -> fn.BlockExecutionForAdmission:
    return fn.BlockExecutionForAdmission(
        execution_id=eid, lane_id=LANE, blocking_reason=reason, now_ms=fields.pop("now_ms", NOW), **fields
    )


def unblock(eid: ExecutionId, index: str = "budget", expected: str = "", now_ms: int = NOW + 5) -> fn.UnblockExecution:
    return fn.UnblockExecution(
        execution_id=eid, lane_id=LANE, blocked_index=index, expected_blocking_reason=expected, now_ms=now_ms
    )


def claimed(engine: Engine) -> tuple[ExecutionId, fn.Fence]:
    eid = submitted(engine)
    return eid, grant_and_claim(engine, eid, lane=LANE, worker=(WORKER, WIID))[1]


def create_quota(**fields: Any) -> fn.CreateQuotaPolicy:
    fields = {"window_seconds": 10, "max_requests_per_window": 2, "max_concurrent": 0, "now_ms": NOW, **fields}
    return fn.CreateQuotaPolicy(quota_policy_id=QUOTA_ID, partition=QUOTA_PARTITION, **fields)


def admit(eid: ExecutionId, now_ms: int = NOW, **fields: Any) -> fn.CheckAdmissionAndRecord:
    fields = {"window_seconds": 10, "rate_limit": 2, "concurrency_cap": 0, **fields}
    return fn.CheckAdmissionAndRecord(
        quota_policy_id=QUOTA_ID, partition=QUOTA_PARTITION, execution_id=eid, now_ms=now_ms, **fields
    )


def release_admission(eid: ExecutionId) -> fn.ReleaseAdmission:
    return fn.ReleaseAdmission(quota_policy_id=QUOTA_ID, partition=QUOTA_PARTITION, execution_id=eid)


# -- ff_create_budget (§5.2) -----------------------------------------------------------------


def test_create_budget_keys_and_argv_follow_the_contract():
    model = create_budget(hard_limits={"tokens": 100, "cost": 5}, soft_limits={"tokens": 80}, reset_interval_ms=60)
    assert model.keys() == [BK.definition, BK.limits, BK.usage, BK.resets, BK.policies]
    assert model.keys()[0] == f"ff:budget:{{b:{BUDGET_PARTITION}}}:{BUDGET_ID}"
    assert model.argv() == [
        BUDGET_ID,
        "flow",
        "flow-1",
        "strict",
        "fail",
        "warn",
        "60",
        str(NOW),
        "2",
        "cost",
        "tokens",
        "5",
        "100",
        "0",
        "80",
    ]


def test_create_budget_stores_definition_limits_and_index(ff_engine):
    r = ff_engine.redis
    model = create_budget(hard_limits={"tokens": 100, "cost": 5}, soft_limits={"tokens": 80})
    assert raw(r, model) == [1, "OK", BUDGET_ID]
    definition = hash_of(r, BK.definition)
    assert list(definition) == DEFINITION_FIELDS
    assert definition == {
        "budget_id": BUDGET_ID,
        "scope_type": "flow",
        "scope_id": "flow-1",
        "enforcement_mode": "strict",
        "on_hard_limit": "fail",
        "on_soft_limit": "warn",
        "reset_interval_ms": "0",
        "breach_count": "0",
        "soft_breach_count": "0",
        "created_at": str(NOW),
        "last_updated_at": str(NOW),
    }
    assert list(hash_of(r, BK.limits).items()) == [
        ("hard:cost", "5"),
        ("soft:cost", "0"),
        ("hard:tokens", "100"),
        ("soft:tokens", "80"),
    ]
    assert r.exists(BK.usage) == 0
    assert r.smembers(BK.policies) == {BUDGET_ID.encode()}
    assert r.zcard(BK.resets) == 0


def test_create_budget_with_a_reset_interval_schedules_the_first_reset(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 1}, reset_interval_ms=3_600_000))
    assert hash_of(r, BK.definition)["next_reset_at"] == str(NOW + 3_600_000)
    assert list(hash_of(r, BK.definition))[-1] == "next_reset_at"
    assert r.zscore(BK.resets, BUDGET_ID) == NOW + 3_600_000


def test_create_budget_again_is_already_satisfied_and_heals_the_index(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 1}))
    r.srem(BK.policies, BUDGET_ID)
    before = hash_of(r, BK.definition), hash_of(r, BK.limits)
    settled = ff_engine.call(create_budget(hard_limits={"tokens": 99}, now_ms=NOW + 1))
    assert settled == fn.Settled(status="ALREADY_SATISFIED", reason=BUDGET_ID)
    assert not settled.changed
    assert (hash_of(r, BK.definition), hash_of(r, BK.limits)) == before
    assert r.sismember(BK.policies, BUDGET_ID)


def test_create_budget_with_a_non_numeric_dimension_count_is_invalid_input_after_indexing(ff_engine):
    r = ff_engine.redis
    argv = [*create_budget().argv()[:8], "x"]
    assert raw(r, create_budget(), argv=argv) == [0, "invalid_input", "dim_count must be a number, got: x"]
    assert r.exists(BK.definition) == 0
    assert r.sismember(BK.policies, BUDGET_ID)  # indexed before any check, as FlowFabric does


def test_create_budget_with_a_dimension_count_below_one_writes_no_limits(ff_engine):
    r = ff_engine.redis
    assert raw(r, create_budget(), argv=[*create_budget().argv()[:8], "-1"]) == [1, "OK", BUDGET_ID]
    assert r.exists(BK.limits) == 0


@pytest.mark.parametrize(
    ("tail", "detail"),
    [
        (["abc", str(NOW), "0"], "reset_interval_ms must be a number, got: abc"),
        (["", str(NOW), "0"], "reset_interval_ms must be a number, got: "),
        (["10", "abc", "0"], "now_ms must be a number, got: abc"),
        (["0", str(NOW), "1.5", "d", "1", "1"], "dim_count must be an integer, got: 1.5"),
        (["0", str(NOW), "2", "a", "b", "1", "1", "1"], "expected at least 15 arguments, got: 14"),
    ],
)
def test_malformed_create_budget_is_invalid_input_with_no_partial_writes(ff_engine, tail, detail):
    r = ff_engine.redis
    r.sadd(BK.policies, BUDGET_ID)  # the one write that precedes every check
    argv = [BUDGET_ID, "flow", "flow-1", "strict", "fail", "warn", *tail]
    unchanged(r, create_budget(), argv, [0, "invalid_input", detail])


def test_create_budget_refuses_more_than_64_dimensions():
    with pytest.raises(ValidationError):
        create_budget(hard_limits={f"d{i}": 1 for i in range(65)})


# -- ff_report_usage_and_check (§5.3) -------------------------------------------------------


def test_report_argv_is_count_sorted_dims_deltas_now_and_full_dedup_key():
    model = report({"tokens": 5, "cost": 2}, dedup_id="req-1")
    assert model.keys() == [BK.usage, BK.limits, BK.definition]
    dedup = f"ff:usagededup:{{b:{BUDGET_PARTITION}}}:req-1"
    assert model.argv() == ["2", "cost", "tokens", "2", "5", str(NOW + 1), dedup]
    assert report({"tokens": 1}).argv()[-1] == ""


def test_report_within_limits_increments_and_replies_ok(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100}, soft_limits={"tokens": 80}))
    assert raw(r, report({"tokens": 60, "cost": 3})) == [1, "OK"]
    assert usage(r) == {"cost": "3", "tokens": "60"}
    assert hash_of(r, BK.definition)["last_updated_at"] == str(NOW + 1)
    assert ff_engine.call(report({"tokens": -10})) == fn.UsageReport(status="OK")
    assert usage(r)["tokens"] == "50"


def test_report_reaching_the_soft_limit_is_ok_and_passing_it_is_a_soft_breach(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100}, soft_limits={"tokens": 80}))
    assert ff_engine.call(report({"tokens": 80})).status == "OK"
    assert raw(r, report({"tokens": 1})) == [1, "SOFT_BREACH", "tokens", "81", "80"]
    assert usage(r)["tokens"] == "81"  # a soft breach still increments
    assert hash_of(r, BK.definition)["soft_breach_count"] == "1"
    result = ff_engine.call(report({"tokens": 1}))
    assert result == fn.UsageReport(status="SOFT_BREACH", dimension="tokens", current=82, limit=80)
    assert result.applied
    assert hash_of(r, BK.definition)["breach_count"] == "0"


def test_report_may_reach_the_hard_limit_but_not_pass_it(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100}))
    assert ff_engine.call(report({"tokens": 100})).status == "OK"
    assert raw(r, report({"tokens": 1}, now_ms=NOW + 7)) == [1, "HARD_BREACH", "tokens", "100", "100"]
    assert usage(r)["tokens"] == "100"
    definition = hash_of(r, BK.definition)
    assert (definition["breach_count"], definition["last_breach_at"], definition["last_breach_dim"]) == (
        "1",
        str(NOW + 7),
        "tokens",
    )
    assert definition["last_updated_at"] == str(NOW + 7)
    assert list(definition)[-2:] == ["last_breach_at", "last_breach_dim"]
    result = ff_engine.call(report({"tokens": 5}))
    assert result == fn.UsageReport(status="HARD_BREACH", dimension="tokens", current=100, limit=100)
    assert not result.applied


def test_hard_breach_on_any_dimension_refuses_the_whole_report(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100, "cost": 10}))
    ff_engine.call(report({"cost": 5}))
    result = ff_engine.call(report({"aaa": 1, "cost": 6, "tokens": 1}))
    assert (result.status, result.dimension, result.current, result.limit) == ("HARD_BREACH", "cost", 5, 10)
    assert usage(r) == {"cost": "5"}


def test_zero_limits_mean_unlimited(ff_engine):
    ff_engine.call(create_budget(hard_limits={"tokens": 0}, soft_limits={"tokens": 0}))
    assert ff_engine.call(report({"tokens": 10**12})).status == "OK"


def test_first_soft_breach_in_argv_order_is_reported(ff_engine):
    ff_engine.call(create_budget(soft_limits={"a": 1, "b": 1}))
    result = ff_engine.call(report({"b": 5, "a": 3}))
    assert (result.status, result.dimension, result.current, result.limit) == ("SOFT_BREACH", "a", 3, 1)
    assert hash_of(ff_engine.redis, BK.definition)["soft_breach_count"] == "1"


def test_dedup_key_makes_a_repeated_report_already_applied(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100}))
    assert ff_engine.call(report({"tokens": 10}, dedup_id="req-1")).status == "OK"
    key = BK.usage_dedup("req-1")
    assert r.get(key) == b"1" and DAY_MS - 5000 < r.pttl(key) <= DAY_MS
    assert raw(r, report({"tokens": 10}, dedup_id="req-1")) == [1, "ALREADY_APPLIED"]
    assert usage(r)["tokens"] == "10"
    assert ff_engine.call(report({"tokens": 10})).status == "OK"  # no dedup id: applied again
    assert usage(r)["tokens"] == "20"


def test_hard_breach_does_not_set_the_dedup_key(ff_engine):
    ff_engine.call(create_budget(hard_limits={"tokens": 1}))
    assert ff_engine.call(report({"tokens": 5}, dedup_id="req-2")).status == "HARD_BREACH"
    assert ff_engine.redis.exists(BK.usage_dedup("req-2")) == 0


def test_report_on_a_budget_without_limits_just_counts(ff_engine):
    assert ff_engine.call(report({"tokens": 3})).status == "OK"
    assert usage(ff_engine.redis) == {"tokens": "3"}
    assert ff_engine.call(report({})).status == "OK"


def test_report_with_a_non_numeric_dimension_count_is_invalid_input(ff_engine):
    assert raw(ff_engine.redis, report({}), argv=["abc"]) == [
        0,
        "invalid_input",
        "dim_count must be a number, got: abc",
    ]


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["1", "tokens", "5"], "expected at least 4 arguments, got: 3"),
        (["1.5", "tokens", "5", str(NOW)], "dim_count must be an integer, got: 1.5"),
        (["-1", str(NOW)], "dim_count must not be negative, got: -1"),
        (["1", "tokens", "abc", str(NOW), ""], "delta for tokens must be a number, got: abc"),
        (["1", "tokens", "1.5", str(NOW), ""], "delta for tokens must be an integer, got: 1.5"),
        (["2", "a", "b", "1", "1e2", str(NOW), ""], "delta for b must be an integer, got: 1e2"),
    ],
)
def test_malformed_report_is_invalid_input_with_no_partial_writes(ff_engine, argv, detail):
    ff_engine.call(create_budget(soft_limits={"tokens": 1}))
    unchanged(ff_engine.redis, report({}), argv, [0, "invalid_input", detail])


def test_limits_are_stored_verbatim_and_a_non_numeric_one_rejects_reports_unchanged(ff_engine):
    argv = [BUDGET_ID, "flow", "flow-1", "strict", "fail", "warn", "0", str(NOW), "2", "a", "b", "abc", "1", "2", "x"]
    assert raw(ff_engine.redis, create_budget(), argv=argv) == [1, "OK", BUDGET_ID]
    assert hash_of(ff_engine.redis, BK.limits) == {"hard:a": "abc", "soft:a": "2", "hard:b": "1", "soft:b": "x"}
    unchanged(
        ff_engine.redis,
        report({}),
        ["1", "a", "1", str(NOW), ""],
        [
            0,
            "invalid_input",
            "hard:a must be a number, got: abc",
        ],
    )
    unchanged(
        ff_engine.redis,
        report({}),
        ["1", "b", "1", str(NOW), ""],
        [
            0,
            "invalid_input",
            "soft:b must be a number, got: x",
        ],
    )


def test_fractional_delta_that_breaches_is_still_a_hard_breach(ff_engine):
    ff_engine.call(create_budget(hard_limits={"tokens": 1}))
    argv = ["1", "tokens", "1.5", str(NOW), ""]
    assert raw(ff_engine.redis, report({}), argv=argv) == [1, "HARD_BREACH", "tokens", "0", "1"]


def test_dedup_is_checked_before_the_deltas(ff_engine):
    ff_engine.call(report({"tokens": 1}, dedup_id="req-3"))
    argv = ["1", "tokens", "abc", str(NOW), BK.usage_dedup("req-3")]
    assert raw(ff_engine.redis, report({}), argv=argv) == [1, "ALREADY_APPLIED"]


# -- ff_record_spend (§5.4) and ff_release_budget (§5.5) ------------------------------------


def test_record_spend_argv_is_pairs_now_dedup_key_and_execution():
    eid = new_eid()
    model = spend({"tokens": 5, "cost": 2}, eid, key="k1")
    assert model.keys() == [BK.usage, BK.limits, BK.definition, BK.by_execution(eid), BK.by_execution_index]
    assert model.argv() == ["2", "cost", "2", "tokens", "5", str(NOW + 2), BK.usage_dedup("k1"), eid]
    assert spend({"tokens": 1}).argv()[-2:] == ["", ""]


def test_record_spend_increments_usage_and_the_execution_ledger(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 100}, soft_limits={"tokens": 50}))
    eid = new_eid()
    assert raw(r, spend({"tokens": 30, "cost": 3}, eid)) == [1, "OK"]
    assert ff_engine.call(spend({"tokens": 25}, eid)) == fn.UsageReport(
        status="SOFT_BREACH", dimension="tokens", current=55, limit=50
    )
    assert usage(r) == {"cost": "3", "tokens": "55"}
    assert hash_of(r, BK.by_execution(eid)) == {"cost": "3", "tokens": "55"}
    assert r.smembers(BK.by_execution_index) == {eid.encode()}
    assert hash_of(r, BK.definition)["last_updated_at"] == str(NOW + 2)


def test_record_spend_without_an_execution_keeps_no_ledger(ff_engine):
    r = ff_engine.redis
    ff_engine.call(spend({"tokens": 5}))
    assert usage(r) == {"tokens": "5"}
    assert r.exists(BK.by_execution(""), BK.by_execution_index) == 0


def test_record_spend_hard_breach_touches_neither_usage_nor_ledger(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 10}))
    eid = new_eid()
    assert raw(r, spend({"tokens": 11}, eid, key="k2")) == [1, "HARD_BREACH", "tokens", "0", "10"]
    assert r.exists(BK.usage, BK.by_execution(eid), BK.by_execution_index, BK.usage_dedup("k2")) == 0


def test_record_spend_with_an_idempotency_key_applies_once(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    ff_engine.call(spend({"tokens": 5}, eid, key="k3"))
    assert ff_engine.call(spend({"tokens": 5}, eid, key="k3")).status == "ALREADY_APPLIED"
    assert usage(r) == {"tokens": "5"} and hash_of(r, BK.by_execution(eid)) == {"tokens": "5"}


def test_malformed_spend_is_invalid_input_with_no_partial_writes(ff_engine):
    eid = new_eid()
    ff_engine.call(spend({"a": 1}, eid))
    argv = ["2", "a", "1", "b", "2.5", str(NOW), "", eid]
    unchanged(ff_engine.redis, spend({}), argv, [0, "invalid_input", "delta for b must be an integer, got: 2.5"])
    unchanged(
        ff_engine.redis, spend({}), ["1", "a", "1"], [0, "invalid_input", "expected at least 4 arguments, got: 3"]
    )


def test_release_gives_back_the_execution_spend_and_drops_its_ledger(ff_engine):
    r = ff_engine.redis
    first, second = new_eid(), new_eid()
    ff_engine.call(spend({"tokens": 30, "cost": 3}, first))
    ff_engine.call(spend({"tokens": 20}, second))
    model = release(first)
    assert model.keys() == [BK.usage, BK.by_execution(first), BK.by_execution_index]
    assert model.argv() == [BUDGET_ID, first]
    assert raw(r, model) == [1, "OK", "released"]
    assert usage(r) == {"cost": "0", "tokens": "20"}
    assert r.exists(BK.by_execution(first)) == 0
    assert r.smembers(BK.by_execution_index) == {second.encode()}
    assert ff_engine.call(release(first)) == "noop"


def test_release_never_takes_usage_below_zero(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    ff_engine.call(spend({"tokens": 30}, eid))
    ff_engine.call(reset())
    ff_engine.call(spend({"tokens": 5}))
    assert ff_engine.call(release(eid)) == "released"
    assert usage(r) == {"tokens": "0"}


def test_release_skips_ledger_entries_that_are_not_positive(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    ff_engine.call(spend({"tokens": 10, "cost": 4}, eid))
    ff_engine.call(spend({"cost": -4}, eid))
    ff_engine.call(release(eid))
    assert usage(r) == {"cost": "0", "tokens": "0"}


def test_release_without_an_execution_id_is_invalid_input(ff_engine):
    unchanged(ff_engine.redis, release(new_eid()), [BUDGET_ID], [0, "invalid_input", "execution_id must be given"])


# -- ff_reset_budget (§5.6) -----------------------------------------------------------------


def test_reset_zeroes_usage_and_schedules_the_next_reset(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 10}, reset_interval_ms=1000))
    ff_engine.call(report({"tokens": 5, "cost": 7}))
    ff_engine.call(report({"tokens": 50}))  # a hard breach to clear
    r.hset(BK.usage, "breached_at", "123")
    model = reset(NOW + 10)
    assert model.keys() == [BK.definition, BK.usage, BK.resets]
    assert model.argv() == [BUDGET_ID, str(NOW + 10)]
    assert raw(r, model) == [1, "OK", str(NOW + 1010)]
    assert usage(r) == {"cost": "0", "tokens": "0", "breached_at": "0"}
    definition = hash_of(r, BK.definition)
    assert definition["reset_count"] == "1"
    assert (definition["last_reset_at"], definition["last_updated_at"]) == (str(NOW + 10), str(NOW + 10))
    assert (definition["last_breach_at"], definition["last_breach_dim"]) == ("", "")
    assert definition["next_reset_at"] == str(NOW + 1010)
    assert r.zscore(BK.resets, BUDGET_ID) == NOW + 1010
    assert ff_engine.call(reset(NOW + 20)) == NOW + 1020
    assert hash_of(r, BK.definition)["reset_count"] == "2"


def test_reset_without_an_interval_unschedules_and_replies_zero(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 10}))
    r.zadd(BK.resets, {BUDGET_ID: 1})
    assert raw(r, reset()) == [1, "OK", "0"]
    assert ff_engine.call(reset()) is None
    assert r.zcard(BK.resets) == 0
    assert "next_reset_at" not in hash_of(r, BK.definition)


def test_reset_of_an_unknown_budget_still_records_the_reset(ff_engine):
    assert ff_engine.call(reset()) is None
    assert list(hash_of(ff_engine.redis, BK.definition)) == [
        "reset_count",
        "last_reset_at",
        "last_updated_at",
        "last_breach_at",
        "last_breach_dim",
    ]


def test_reset_with_a_malformed_now_is_invalid_input_only_when_it_must_compute(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_budget(hard_limits={"tokens": 10}, reset_interval_ms=1000))
    ff_engine.call(report({"tokens": 5}))
    unchanged(r, reset(), [BUDGET_ID, "abc"], [0, "invalid_input", "now_ms must be a number, got: abc"])
    unchanged(r, reset(), [BUDGET_ID], [0, "invalid_input", "expected at least 2 arguments, got: 1"])
    r.hset(BK.definition, "reset_interval_ms", "0")
    assert raw(r, reset(), argv=[BUDGET_ID, "abc"]) == [1, "OK", "0"]  # stored verbatim, as FlowFabric does


# -- ff_block_execution_for_admission (§6.5) ----------------------------------------------------


@pytest.mark.parametrize(("reason", "eligibility", "index"), BLOCKS)
def test_block_moves_the_execution_to_the_reasons_blocked_index(ff_engine, reason, eligibility, index):
    r = ff_engine.redis
    eid = submitted(ff_engine)
    model = block(eid, reason, blocking_detail="no budget left")
    assert model.keys() == [ExecKeys(eid).core, IDX.eligible(LANE), IDX.blocked(LANE, index)]
    assert model.argv() == [eid, reason, "no budget left", str(NOW)]
    assert raw(r, model) == [1, "OK", "blocked"]
    core = ff_engine.read_core(eid)
    assert [core[f] for f in ("lifecycle_phase", "ownership_state", "eligibility_state", "blocking_reason")] == [
        "runnable",
        "unowned",
        eligibility,
        reason,
    ]
    assert (core["blocking_detail"], core["terminal_outcome"], core["attempt_state"]) == (
        "no budget left",
        "none",
        "pending_first_attempt",
    )
    assert core["public_state"] == "rate_limited"
    assert (core["last_transition_at"], core["last_mutation_at"]) == (str(NOW), str(NOW))
    assert r.zscore(IDX.eligible(LANE), eid) is None
    assert r.zscore(IDX.blocked(LANE, index), eid) == NOW


def test_block_of_a_missing_execution_is_not_found(ff_engine):
    expect_error(ff_engine, block(new_eid()), "execution_not_found")


def test_block_of_a_terminal_execution_is_not_active_with_four_details(ff_engine):
    eid, fence = claimed(ff_engine)
    ff_engine.call(
        fn.CompleteExecution(execution_id=eid, fence=fence, lane_id=LANE, worker_instance_id=WIID, attempt_index=0)
    )
    error = expect_error(ff_engine, block(eid), "execution_not_active")
    assert isinstance(error, ExecutionNotActiveError)
    assert error.details == ["success", "1", "terminal", fence.attempt_id]


def test_block_of_an_active_execution_is_not_eligible_before_the_reason_is_checked(ff_engine):
    eid, _ = claimed(ff_engine)
    assert raw(ff_engine.redis, block(eid), argv=[eid, "bogus", "", str(NOW)]) == [0, "execution_not_eligible"]


def test_block_with_an_unknown_reason_is_invalid_blocking_reason(ff_engine):
    eid = submitted(ff_engine)
    assert raw(ff_engine.redis, block(eid), argv=[eid, "bogus", "", str(NOW)]) == [0, "invalid_blocking_reason"]
    assert raw(ff_engine.redis, block(eid), argv=[eid]) == [0, "invalid_blocking_reason"]


def test_block_keeps_the_attempt_state_and_may_block_again(ff_engine):
    eid = submitted(ff_engine)
    ff_engine.redis.hset(ExecKeys(eid).core, "attempt_state", "attempt_interrupted")
    ff_engine.call(block(eid, "waiting_for_quota"))
    ff_engine.call(block(eid, "waiting_for_budget", now_ms=NOW + 1))
    core = ff_engine.read_core(eid)
    assert (core["attempt_state"], core["eligibility_state"]) == ("attempt_interrupted", "blocked_by_budget")


@pytest.mark.parametrize(("now", "detail"), [("abc", "abc"), ("", ""), (None, "nil")])
def test_block_with_a_malformed_now_is_invalid_input_with_no_partial_writes(ff_engine, now, detail):
    eid = submitted(ff_engine)
    argv = [eid, "waiting_for_budget", ""] + ([] if now is None else [now])
    unchanged(ff_engine.redis, block(eid), argv, [0, "invalid_input", f"now_ms must be a number, got: {detail}"])


# -- ff_unblock_execution (§6.6) -------------------------------------------------------------


def test_unblock_returns_the_execution_to_eligible_at_its_priority(ff_engine):
    r = ff_engine.redis
    eid = submitted(ff_engine, priority=7)
    created_at = int(ff_engine.read_core(eid)["created_at"])
    ff_engine.call(block(eid, blocking_detail="over budget"))
    model = unblock(eid, "budget", "waiting_for_budget")
    assert model.keys() == [ExecKeys(eid).core, IDX.blocked(LANE, "budget"), IDX.eligible(LANE)]
    assert model.argv() == [eid, str(NOW + 5), "waiting_for_budget"]
    assert raw(r, model) == [1, "OK", "unblocked"]
    core = ff_engine.read_core(eid)
    assert [
        core[f]
        for f in (
            "lifecycle_phase",
            "ownership_state",
            "eligibility_state",
            "blocking_reason",
            "blocking_detail",
            "terminal_outcome",
            "attempt_state",
            "public_state",
        )
    ] == ["runnable", "unowned", "eligible_now", "waiting_for_worker", "", "none", "pending_first_attempt", "waiting"]
    assert (core["last_transition_at"], core["last_mutation_at"]) == (str(NOW + 5), str(NOW + 5))
    assert r.zscore(IDX.blocked(LANE, "budget"), eid) is None
    assert r.zscore(IDX.eligible(LANE), eid) == -7 * 10**12 + created_at


@pytest.mark.parametrize(("reason", "index"), [(b[0], b[2]) for b in BLOCKS[:4]])
def test_unblock_with_an_empty_expected_reason_releases_any_block(ff_engine, reason, index):
    eid = submitted(ff_engine)
    ff_engine.call(block(eid, reason))
    ff_engine.call(unblock(eid, index))
    assert ff_engine.read_core(eid)["eligibility_state"] == "eligible_now"


def test_unblock_with_a_different_expected_reason_is_not_eligible(ff_engine):
    eid = submitted(ff_engine)
    ff_engine.call(block(eid, "waiting_for_quota"))
    expect_error(ff_engine, unblock(eid, "quota", "waiting_for_budget"), "execution_not_eligible")
    assert ff_engine.read_core(eid)["eligibility_state"] == "blocked_by_quota"


def test_unblock_of_an_execution_not_blocked_is_not_eligible(ff_engine):
    eid = submitted(ff_engine)
    expect_error(ff_engine, unblock(eid), "execution_not_eligible", [])
    ff_engine.call(block(eid, "paused_by_policy"))  # blocked_by_lane_state is not released here
    expect_error(ff_engine, unblock(eid, "operator"), "execution_not_eligible")
    active, _ = claimed(ff_engine)
    expect_error(ff_engine, unblock(active), "execution_not_eligible")
    expect_error(ff_engine, unblock(new_eid()), "execution_not_found")


def test_unblock_stores_now_verbatim_and_needs_it_given(ff_engine):
    eid = submitted(ff_engine)
    ff_engine.call(block(eid))
    unchanged(ff_engine.redis, unblock(eid), [eid], [0, "invalid_input", "expected at least 2 arguments, got: 1"])
    assert raw(ff_engine.redis, unblock(eid), argv=[eid, "later"]) == [1, "OK", "unblocked"]
    assert ff_engine.read_core(eid)["last_transition_at"] == "later"


# -- ff_create_quota_policy (§6.1) ------------------------------------------------------------


def test_create_quota_policy_stores_definition_counter_and_index(ff_engine):
    r = ff_engine.redis
    model = create_quota(window_seconds=60, max_requests_per_window=100, max_concurrent=5)
    assert model.keys() == [
        QK.definition,
        QK.window("requests_per_window"),
        QK.concurrency,
        QK.admitted_set,
        QK.policies,
    ]
    assert model.keys()[0] == f"ff:quota:{{q:{QUOTA_PARTITION}}}:{QUOTA_ID}"
    assert model.argv() == [QUOTA_ID, "60", "100", "5", str(NOW)]
    assert raw(r, model) == [1, "OK", QUOTA_ID]
    assert list(hash_of(r, QK.definition).items()) == [
        ("quota_policy_id", QUOTA_ID),
        ("requests_per_window_seconds", "60"),
        ("max_requests_per_window", "100"),
        ("active_concurrency_cap", "5"),
        ("created_at", str(NOW)),
    ]
    assert r.get(QK.concurrency) == b"0"
    assert r.smembers(QK.policies) == {QUOTA_ID.encode()}
    assert r.exists(QK.window("requests_per_window"), QK.admitted_set) == 0


def test_create_quota_policy_again_is_already_satisfied_without_reindexing(ff_engine):
    r = ff_engine.redis
    ff_engine.call(create_quota())
    r.srem(QK.policies, QUOTA_ID)
    r.set(QK.concurrency, "3")
    assert ff_engine.call(create_quota(max_concurrent=9)) == fn.Settled(status="ALREADY_SATISFIED", reason=QUOTA_ID)
    assert r.smembers(QK.policies) == set()
    assert r.get(QK.concurrency) == b"3"


def test_create_quota_policy_with_missing_arguments_is_invalid_input(ff_engine):
    unchanged(
        ff_engine.redis, create_quota(), [QUOTA_ID, "1"], [0, "invalid_input", "expected at least 5 arguments, got: 2"]
    )


# -- ff_check_admission_and_record (§6.2) -----------------------------------------------------


def test_admission_keys_and_argv_follow_the_contract():
    eid = new_eid()
    model = admit(eid, jitter_ms=25)
    assert model.keys() == [QK.window("default"), QK.concurrency, QK.definition, QK.admitted(eid), QK.admitted_set]
    assert model.argv() == [str(NOW), "10", "2", "0", eid, "25"]


def test_admission_replies_a_bare_array_and_records_the_admission(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    assert raw(r, admit(eid, concurrency_cap=5)) == ["ADMITTED"]
    assert r.zrange(QK.window(), 0, -1, withscores=True) == [(eid.encode(), NOW)]
    assert r.get(QK.admitted(eid)) == b"1" and 9_000 < r.pttl(QK.admitted(eid)) <= 10_000
    assert r.get(QK.concurrency) == b"1"
    assert r.smembers(QK.admitted_set) == {eid.encode()}
    assert ff_engine.call(admit(new_eid(), concurrency_cap=5)) == fn.Admission(status="ADMITTED")


def test_admission_without_a_concurrency_cap_does_not_count(ff_engine):
    ff_engine.call(admit(new_eid(), concurrency_cap=0))
    assert ff_engine.redis.exists(QK.concurrency) == 0


def test_admission_within_the_window_is_already_admitted_before_any_limit(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    ff_engine.call(admit(eid, rate_limit=1, concurrency_cap=1))
    assert raw(r, admit(eid, now_ms=NOW + 5000, rate_limit=1, concurrency_cap=1)) == ["ALREADY_ADMITTED"]
    result = ff_engine.call(admit(eid, rate_limit=1))
    assert result == fn.Admission(status="ALREADY_ADMITTED") and result.admitted
    assert r.get(QK.concurrency) == b"1" and r.zcard(QK.window()) == 1


def test_full_window_is_rate_exceeded_with_retry_after_until_the_oldest_leaves(ff_engine):
    r = ff_engine.redis
    ff_engine.call(admit(new_eid(), now_ms=NOW))
    ff_engine.call(admit(new_eid(), now_ms=NOW + 3000))
    late = new_eid()
    assert raw(r, admit(late, now_ms=NOW + 4000)) == ["RATE_EXCEEDED", "6000"]
    result = ff_engine.call(admit(late, now_ms=NOW + 9999))
    assert result == fn.Admission(status="RATE_EXCEEDED", retry_after_ms=1)
    assert not result.admitted
    assert r.exists(QK.admitted(late)) == 0 and r.zcard(QK.window()) == 2


def test_window_entries_at_exactly_now_minus_window_are_trimmed(ff_engine):
    r = ff_engine.redis
    ff_engine.call(admit(new_eid(), now_ms=NOW))
    ff_engine.call(admit(new_eid(), now_ms=NOW + 1))
    assert ff_engine.call(admit(new_eid(), now_ms=NOW + 10_000)).status == "ADMITTED"
    assert [score for _, score in r.zrange(QK.window(), 0, -1, withscores=True)] == [NOW + 1, NOW + 10_000]


def test_rate_exceeded_retry_after_adds_jitter_within_its_range(ff_engine):
    ff_engine.call(admit(new_eid(), rate_limit=1))
    late = new_eid()
    waits = {
        ff_engine.call(admit(late, now_ms=NOW + 1000, rate_limit=1, jitter_ms=50)).retry_after_ms for _ in range(40)
    }
    assert all(9000 <= wait <= 9050 for wait in waits if wait is not None)
    assert len(waits) > 1


def test_taken_concurrency_slots_are_concurrency_exceeded(ff_engine):
    r = ff_engine.redis
    ff_engine.call(admit(new_eid(), rate_limit=0, concurrency_cap=1))
    late = new_eid()
    assert raw(r, admit(late, now_ms=NOW + 1, rate_limit=0, concurrency_cap=1)) == ["CONCURRENCY_EXCEEDED"]
    assert ff_engine.call(admit(late, rate_limit=0, concurrency_cap=1)).status == "CONCURRENCY_EXCEEDED"
    assert r.zcard(QK.window()) == 1


def test_rate_limit_is_checked_before_the_concurrency_cap(ff_engine):
    ff_engine.call(admit(new_eid(), rate_limit=1, concurrency_cap=1))
    assert ff_engine.call(admit(new_eid(), now_ms=NOW + 1, rate_limit=1, concurrency_cap=1)).status == "RATE_EXCEEDED"


def test_zero_window_admits_without_a_guard(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    assert ff_engine.call(admit(eid, window_seconds=0, rate_limit=0)).status == "ADMITTED"
    assert r.exists(QK.admitted(eid)) == 0
    assert ff_engine.call(admit(eid, window_seconds=0, rate_limit=0)).status == "ADMITTED"


@pytest.mark.parametrize(
    ("position", "value", "name"),
    [(1, "abc", "now_ms"), (2, "x", "window_seconds"), (3, "", "rate_limit"), (4, "q", "concurrency_cap")],
)
def test_non_numeric_admission_argument_is_an_invalid_input_envelope(ff_engine, position, value, name):
    eid = new_eid()
    argv = list(admit(eid).argv())
    argv[position - 1] = value
    unchanged(ff_engine.redis, admit(eid), argv, [0, "invalid_input", f"{name} must be a number, got: {value}"])
    with pytest.raises(ValidationError):  # the wrapper raises the typed error of the envelope
        ff_engine.call(admit(eid, jitter_ms=0).model_copy(update={"now_ms": "abc"}))


def test_malformed_jitter_matters_only_when_the_rate_limit_is_hit(ff_engine):
    r = ff_engine.redis
    ff_engine.call(admit(new_eid(), rate_limit=1))
    late = new_eid()
    argv = [str(NOW + 1), "10", "1", "0", late, "abc"]
    unchanged(r, admit(late), argv, [0, "invalid_input", "jitter_ms must be a number, got: abc"])
    assert raw(r, admit(late), argv=[str(NOW + 1), "10", "5", "0", late, "abc"]) == ["ADMITTED"]
    other = new_eid()
    assert raw(r, admit(other), argv=[str(NOW + 1), "10", "5", "0", other]) == ["ADMITTED"]  # jitter omitted


def test_admission_that_would_fail_part_way_is_invalid_input_with_no_partial_writes(ff_engine):
    r = ff_engine.redis
    ff_engine.call(admit(new_eid(), now_ms=NOW - 20_000))  # an expired entry a trim would remove
    eid = new_eid()
    unchanged(
        r,
        admit(eid),
        [str(NOW), "0.0005", "0", "0", eid, "0"],
        [
            0,
            "invalid_input",
            "window_seconds must give whole milliseconds, got: 0.0005",
        ],
    )
    unchanged(r, admit(eid), [str(NOW), "10", "0", "0"], [0, "invalid_input", "execution_id must be given"])


# -- ff_release_admission (§6.3) -------------------------------------------------------------


def test_release_admission_frees_the_guard_set_member_and_slot(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    ff_engine.call(admit(eid, concurrency_cap=2))
    model = release_admission(eid)
    assert model.keys() == [QK.admitted(eid), QK.admitted_set, QK.concurrency]
    assert model.argv() == [eid]
    assert raw(r, model) == [1, "OK", "released"]
    assert r.exists(QK.admitted(eid)) == 0
    assert r.smembers(QK.admitted_set) == set()
    assert r.get(QK.concurrency) == b"0"
    assert r.zcard(QK.window()) == 1  # the window entry stays
    assert ff_engine.call(admit(eid, concurrency_cap=2, rate_limit=0)).status == "ADMITTED"


def test_release_admission_never_takes_the_counter_below_zero(ff_engine):
    r = ff_engine.redis
    eid = new_eid()
    assert ff_engine.call(release_admission(eid)) is None
    assert r.exists(QK.concurrency) == 0
    r.set(QK.concurrency, "0")
    ff_engine.call(release_admission(eid))
    assert r.get(QK.concurrency) == b"0"


def test_release_admission_without_an_execution_id_is_invalid_input(ff_engine):
    unchanged(
        ff_engine.redis, release_admission(new_eid()), [], [0, "invalid_input", "expected at least 1 arguments, got: 0"]
    )
