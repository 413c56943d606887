"""Contract tests: attempt output streams.

Covers ff_append_frame (durable, summary and best-effort frames, lease checks, retention),
ff_read_attempt_stream and ff_read_summary against
/work/shared/spec/flowfabric-suspend-budget-stream-flow.md (§0.1, §1.2, §7.1-§7.3, §10,
§11 items 17-18), on a real server. Malformed numeric input that FlowFabric's library would
trip over part-way is rejected as invalid_input with the keyspace untouched.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys

from .support import expect_error, grant_and_claim, hash_of, keyspace, raw

LANE = "default"
WORKER, WIID = "worker-a", "worker-a-1"

META_FIELDS = [
    "stream_id",
    "execution_id",
    "attempt_id",
    "attempt_index",
    "created_at",
    "closed_at",
    "closed_reason",
    "durability_mode",
    "retention_maxlen",
    "last_sequence",
    "frame_count",
    "total_bytes",
    "last_frame_at",
    "has_durable_frame",
]


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    eid: ExecutionId
    fence: fn.Fence
    attempt_index: int

    @property
    def keys(self) -> ExecKeys:
        return ExecKeys(self.eid)

    @property
    def stream(self) -> str:
        return self.keys.stream(self.attempt_index)

    @property
    def meta(self) -> str:
        return self.keys.stream_meta(self.attempt_index)

    @property
    def summary(self) -> str:
        return self.keys.stream_summary(self.attempt_index)


def entries(r: redis.Redis, key: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Stream entries with their fields in stored order."""
    return [(i.decode(), [(k.decode(), v.decode()) for k, v in f.items()]) for i, f in r.xrange(key)]


def claimed(engine: Engine, *, ttl_ms: int = 30_000) -> Claimed:
    """A fresh execution claimed by worker-a (attempt 0, epoch 1)."""
    eid = engine.submit(LANE, b"payload").execution_id
    lease, fence = grant_and_claim(engine, eid, lane=LANE, worker=(WORKER, WIID), ttl_ms=ttl_ms)
    return Claimed(eid, fence, lease.attempt_index)


def append(c: Claimed, **fields: Any) -> fn.AppendFrame:
    fields.setdefault("frame_type", "stdout")
    fields.setdefault("fence", c.fence)
    return fn.AppendFrame(execution_id=c.eid, attempt_index=c.attempt_index, **fields)


def patch(c: Claimed, document: Any, **fields: Any) -> fn.AppendFrame:
    fields.setdefault("patch_kind", "json-merge-patch")
    payload = document if isinstance(document, str) else json.dumps(document)
    return append(c, mode="summary", frame_type="delta", payload=payload, **fields)


def read(c: Claimed, **fields: Any) -> fn.ReadAttemptStream:
    return fn.ReadAttemptStream(execution_id=c.eid, attempt_index=c.attempt_index, **fields)


def with_argv(model: fn.Fcall[Any], position: int, value: str, *more: tuple[int, str]) -> list[Any]:
    """``model``'s ARGV with the 1-based ``position`` (and any further ones) replaced."""
    argv = list(model.argv())
    for at, replacement in ((position, value), *more):
        argv[at - 1] = replacement
    return argv


def nested(levels: int) -> dict[str, Any]:
    document: dict[str, Any] = {"leaf": 1}
    for _ in range(levels):
        document = {"n": document}
    return document


def age_last_append(r: redis.Redis, c: Claimed, ms: int) -> None:
    """Pretend the previous best-effort append happened ``ms`` ago."""
    r.hset(c.meta, "last_append_ts_ms", str(int(r.hget(c.meta, "last_append_ts_ms")) - ms))


@pytest.fixture
def small_stream_nodes(ff_redis: redis.Redis) -> Iterator[None]:
    """Stream nodes of 10 entries, so approximate (~) trims become visible in small tests."""
    before = ff_redis.config_get("stream-node-max-entries")["stream-node-max-entries"]
    ff_redis.config_set("stream-node-max-entries", 10)
    yield
    ff_redis.config_set("stream-node-max-entries", before)


# -- ff_append_frame: durable frames (§7.1) ------------------------------------------------------


def test_append_replies_entry_id_lifetime_frame_count_and_empty_summary_version(ff_engine):
    c = claimed(ff_engine)
    reply = raw(ff_engine.redis, append(c, payload=b"hello"))
    assert reply[:2] == [1, "OK"] and len(reply) == 5
    assert reply[2] == entries(ff_engine.redis, c.stream)[0][0]
    assert reply[3:] == ["1", ""]
    assert ff_engine.call(append(c)) == fn.Appended(
        entry_id=entries(ff_engine.redis, c.stream)[1][0], frame_count=2, summary_version=None
    )


def test_append_argv_order_matches_the_contract(ff_engine):
    c = claimed(ff_engine)
    model = append(c, payload=b"p", ts=5, correlation_id="corr", retention_maxlen=7, ttl_ms=9, ema_alpha=0.5)
    assert model.keys() == [c.keys.core, c.stream, c.meta, c.summary]
    assert model.argv() == [
        c.eid,
        "0",
        c.fence.lease_id,
        "1",
        "stdout",
        "5",
        b"p",
        "utf8",
        "corr",
        "worker",
        "7",
        c.fence.attempt_id,
        "65536",
        "durable",
        "",
        "9",
        "0",
        "0",
        "0.500000",
    ]


def test_first_append_creates_stream_meta_with_every_field_in_order(ff_engine):
    c = claimed(ff_engine)
    before = ff_engine.server_time_ms()
    entry_id = ff_engine.call(append(c, payload=b"abc", retention_maxlen=500)).entry_id
    meta = hash_of(ff_engine.redis, c.meta)
    assert list(meta) == META_FIELDS
    assert meta["stream_id"] == f"{c.eid}:0"
    assert meta["execution_id"] == c.eid
    assert meta["attempt_id"] == c.fence.attempt_id
    assert meta["attempt_index"] == "0"
    assert int(meta["created_at"]) >= before
    assert (meta["closed_at"], meta["closed_reason"], meta["durability_mode"]) == ("", "", "durable_full")
    assert meta["retention_maxlen"] == "500"
    assert meta["last_sequence"] == entry_id
    assert (meta["frame_count"], meta["total_bytes"]) == ("1", "3")
    assert meta["last_frame_at"] == meta["created_at"]
    assert meta["has_durable_frame"] == "1"


def test_frame_fields_are_written_in_contract_order_with_optional_correlation_id(ff_engine):
    c = claimed(ff_engine)
    before = ff_engine.server_time_ms()
    ff_engine.call(append(c, payload=b"one"))
    ff_engine.call(append(c, payload="two", ts=1234, correlation_id="c-1", encoding="base64", source="sdk"))
    first, second = entries(ff_engine.redis, c.stream)
    names = [name for name, _ in first[1]]
    assert names == ["frame_type", "ts", "payload", "encoding", "source", "mode"]
    fields = dict(first[1])
    assert int(fields["ts"]) >= before  # no ts: engine time
    assert (fields["payload"], fields["encoding"], fields["source"], fields["mode"]) == (
        "one",
        "utf8",
        "worker",
        "durable",
    )
    assert second[1] == [
        ("frame_type", "stdout"),
        ("ts", "1234"),
        ("payload", "two"),
        ("encoding", "base64"),
        ("source", "sdk"),
        ("mode", "durable"),
        ("correlation_id", "c-1"),
    ]


def test_empty_stream_mode_is_stored_as_durable(ff_engine):
    c = claimed(ff_engine)
    ff_engine.redis.fcall("ff_append_frame", 4, *append(c).keys(), *with_argv(append(c), 14, ""))
    assert dict(entries(ff_engine.redis, c.stream)[0][1])["mode"] == "durable"


def test_frame_count_is_lifetime_and_total_bytes_counts_payload_bytes(ff_engine):
    c = claimed(ff_engine)
    for payload in ("a", "bb", "ccc", "dddd", "é"):  # "é" is two bytes
        ff_engine.call(append(c, payload=payload, retention_maxlen=2))
    meta = hash_of(ff_engine.redis, c.meta)
    assert (meta["frame_count"], meta["total_bytes"]) == ("5", "12")
    assert ff_engine.redis.xlen(c.stream) == 2


def test_durable_retention_maxlen_trims_exactly(ff_engine, small_stream_nodes):
    c = claimed(ff_engine)
    for i in range(25):
        ff_engine.call(append(c, payload=str(i), retention_maxlen=3))
    assert [dict(f)["payload"] for _, f in entries(ff_engine.redis, c.stream)] == ["22", "23", "24"]


def test_durable_retention_zero_means_about_ten_thousand(ff_engine):
    c = claimed(ff_engine)
    for _ in range(30):
        ff_engine.call(append(c, retention_maxlen=0))
    assert ff_engine.redis.xlen(c.stream) == 30
    assert hash_of(ff_engine.redis, c.meta)["retention_maxlen"] == "0"


def test_durable_frame_persists_a_best_effort_ttl(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c, mode="best_effort", ttl_ms=5000))
    assert ff_engine.redis.pttl(c.stream) > 0
    assert hash_of(ff_engine.redis, c.meta)["has_durable_frame"] == "0"
    ff_engine.call(append(c))
    assert ff_engine.redis.pttl(c.stream) == -1
    assert hash_of(ff_engine.redis, c.meta)["has_durable_frame"] == "1"
    ff_engine.call(append(c, mode="best_effort", ttl_ms=5000))
    assert ff_engine.redis.pttl(c.stream) == -1  # durable content never gets a TTL again


# -- ff_append_frame: summary frames (§7.1 step 5) ------------------------------------------------


def test_summary_patch_merges_per_rfc7396_and_rewrites_the_null_sentinel(ff_engine):
    c = claimed(ff_engine)
    assert ff_engine.call(patch(c, {"a": 1, "b": {"c": 2, "d": [1, 2]}, "e": "x"})).summary_version == 1
    reply = raw(ff_engine.redis, patch(c, {"b": {"c": None, "n": {"x": 1}, "d": [3]}, "e": "__ff_null__", "g": {}}))
    assert reply[4] == "2"
    document = json.loads(hash_of(ff_engine.redis, c.summary)["document"])
    assert document == {"a": 1, "b": {"d": [3], "n": {"x": 1}}, "e": None, "g": {}}
    ff_engine.call(patch(c, {"a": None, "deep": {"list": ["__ff_null__", {"k": "__ff_null__"}]}}))
    document = json.loads(hash_of(ff_engine.redis, c.summary)["document"])
    assert document == {"b": {"d": [3], "n": {"x": 1}}, "e": None, "g": {}, "deep": {"list": [None, {"k": None}]}}


def test_summary_patch_replaces_a_scalar_or_array_with_an_object(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(patch(c, {"a": 5, "b": [1, 2]}))
    ff_engine.call(patch(c, {"a": {"x": 1}, "b": {"y": 2}}))
    assert json.loads(hash_of(ff_engine.redis, c.summary)["document"]) == {"a": {"x": 1}, "b": {"y": 2}}


def test_summary_hash_fields_and_first_applied_ms_set_once(ff_engine):
    c = claimed(ff_engine)
    before = ff_engine.server_time_ms()
    ff_engine.call(patch(c, {"a": 1}))
    first = hash_of(ff_engine.redis, c.summary)
    assert list(first) == ["version", "document", "patch_kind", "last_updated_ms", "first_applied_ms"]
    assert (first["version"], first["patch_kind"]) == ("1", "json-merge-patch")
    assert int(first["first_applied_ms"]) == int(first["last_updated_ms"]) >= before
    time.sleep(0.005)
    ff_engine.call(patch(c, {"a": 2}, patch_kind=""))  # "" is accepted as json-merge-patch
    second = hash_of(ff_engine.redis, c.summary)
    assert second["version"] == "2"
    assert second["first_applied_ms"] == first["first_applied_ms"]
    assert int(second["last_updated_ms"]) > int(first["last_updated_ms"])


def test_summary_frame_carries_its_version_and_mode(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(patch(c, {"a": 1}, correlation_id="k"))
    ((_, fields),) = entries(ff_engine.redis, c.stream)
    assert [name for name, _ in fields] == [
        "frame_type",
        "ts",
        "payload",
        "encoding",
        "source",
        "mode",
        "correlation_id",
        "summary_version",
    ]
    assert dict(fields)["mode"] == "summary" and dict(fields)["summary_version"] == "1"
    assert hash_of(ff_engine.redis, c.meta)["has_durable_frame"] == "1"


def test_empty_object_and_empty_array_patches_are_accepted(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(patch(c, "{}"))
    ff_engine.call(patch(c, "[]"))  # decodes to an empty table, which counts as an object
    assert hash_of(ff_engine.redis, c.summary)["document"] == "{}"
    assert hash_of(ff_engine.redis, c.summary)["version"] == "2"


def test_patch_nesting_is_limited_to_sixteen_levels(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(patch(c, nested(16)))
    expect_error(ff_engine, patch(c, nested(17)), "invalid_input", ["patch_depth_exceeded"])
    assert hash_of(ff_engine.redis, c.summary)["version"] == "1"


@pytest.mark.parametrize(
    ("payload", "patch_kind", "detail"),
    [
        ("{}", "json-patch", "unsupported patch_kind"),
        ("not json", "json-merge-patch", "patch payload is not valid JSON"),
        ("", "json-merge-patch", "patch payload is not valid JSON"),
        ("[1, 2]", "json-merge-patch", "patch must be a JSON object"),
        ("5", "json-merge-patch", "patch must be a JSON object"),
        ('"text"', "json-merge-patch", "patch must be a JSON object"),
        ("null", "json-merge-patch", "patch must be a JSON object"),
    ],
)
def test_bad_summary_patch_is_invalid_input_and_leaves_stream_and_summary_alone(ff_engine, payload, patch_kind, detail):
    c = claimed(ff_engine)
    expect_error(ff_engine, patch(c, payload, patch_kind=patch_kind), "invalid_input", [detail])
    assert ff_engine.redis.exists(c.stream, c.summary) == 0
    # the stream metadata is created before the patch is looked at
    assert hash_of(ff_engine.redis, c.meta)["frame_count"] == "0"


def test_summary_mode_without_the_summary_key_is_invalid_input(ff_engine):
    c = claimed(ff_engine)
    model = patch(c, {"a": 1})
    reply = raw(ff_engine.redis, model, keys=model.keys()[:3])
    assert reply == [0, "invalid_input", "summary mode requires stream_summary key"]


def test_undecodable_stored_summary_is_corruption(ff_engine):
    c = claimed(ff_engine)
    ff_engine.redis.hset(c.summary, "document", "{broken")
    expect_error(ff_engine, patch(c, {"a": 1}), "corruption", ["stored summary document not decodeable"])
    assert hash_of(ff_engine.redis, c.summary) == {"document": "{broken"}


def test_summary_stream_is_trimmed_to_about_64_frames(ff_engine, small_stream_nodes):
    c = claimed(ff_engine)
    for i in range(150):
        ff_engine.call(patch(c, {"i": i}))
    assert 64 <= ff_engine.redis.xlen(c.stream) < 75
    assert hash_of(ff_engine.redis, c.meta)["frame_count"] == "150"
    assert hash_of(ff_engine.redis, c.summary)["version"] == "150"


# -- ff_append_frame: best-effort frames (§7.1 step 8) ----------------------------------------


def test_first_best_effort_frame_seeds_the_rate_so_maxlen_is_the_floor(ff_engine):
    c = claimed(ff_engine)
    before = ff_engine.server_time_ms()
    ff_engine.call(append(c, mode="best_effort", ttl_ms=1000))
    meta = hash_of(ff_engine.redis, c.meta)
    assert meta["ema_rate_hz"] == "32"  # floor 64 / (2 x 1 s)
    assert meta["maxlen_applied_last"] == "64"
    assert int(meta["last_append_ts_ms"]) >= before
    assert meta["has_durable_frame"] == "0"
    ttl = ff_engine.redis.pttl(c.stream)
    # 2 x ttl_ms from the append, less what has passed since (however long that took)
    assert 2000 - (ff_engine.server_time_ms() - before) <= ttl <= 2000
    ((_, fields),) = entries(ff_engine.redis, c.stream)
    assert fields[-2:] == [("mode", "best_effort"), ("ttl_ms", "1000")]


def test_best_effort_rate_is_an_ema_of_the_append_gaps(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c, mode="best_effort", ttl_ms=1000, maxlen_floor=4, ema_alpha=0.5))
    assert hash_of(ff_engine.redis, c.meta)["ema_rate_hz"] == "2"
    age_last_append(ff_engine.redis, c, 100)
    aged = int(hash_of(ff_engine.redis, c.meta)["last_append_ts_ms"])
    ff_engine.call(append(c, mode="best_effort", ttl_ms=1000, maxlen_floor=4, ema_alpha=0.5))
    meta = hash_of(ff_engine.redis, c.meta)
    rate = float(meta["ema_rate_hz"])
    gap = int(meta["last_append_ts_ms"]) - aged  # 100 ms, plus however long the second append took
    assert gap >= 100
    assert rate == pytest.approx(0.5 * (1000 / gap) + 0.5 * 2)
    assert meta["maxlen_applied_last"] == str(math.ceil(rate * 1 * 2))


def test_best_effort_maxlen_is_clamped_and_ceiling_raised_to_floor(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c, mode="best_effort", ttl_ms=1000, maxlen_floor=3, maxlen_ceiling=1))
    assert hash_of(ff_engine.redis, c.meta)["maxlen_applied_last"] == "3"
    ff_engine.redis.hset(c.meta, "ema_rate_hz", "100000")
    ff_engine.call(append(c, mode="best_effort", ttl_ms=1000, maxlen_floor=3, maxlen_ceiling=5))
    assert hash_of(ff_engine.redis, c.meta)["maxlen_applied_last"] == "5"


def test_out_of_range_best_effort_knobs_fall_back_to_defaults(ff_engine):
    c = claimed(ff_engine)
    model = append(c, mode="best_effort", ttl_ms=1000)
    argv = [*model.argv()[:16], "abc", "-1", "3"]  # floor, ceiling, alpha
    assert raw(ff_engine.redis, model, argv=argv)[:2] == [1, "OK"]
    meta = hash_of(ff_engine.redis, c.meta)
    assert (meta["ema_rate_hz"], meta["maxlen_applied_last"]) == ("32", "64")
    age_last_append(ff_engine.redis, c, 1000)
    raw(ff_engine.redis, model, argv=argv)
    assert 0.2 * (1000 / 1010) + 0.8 * 32 < float(hash_of(ff_engine.redis, c.meta)["ema_rate_hz"]) <= 0.2 + 0.8 * 32


def test_best_effort_without_ttl_sets_no_expiry_and_no_ttl_field(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c, mode="best_effort", ttl_ms=0))
    assert ff_engine.redis.pttl(c.stream) == -1
    assert "ttl_ms" not in dict(entries(ff_engine.redis, c.stream)[0][1])
    assert hash_of(ff_engine.redis, c.meta)["ema_rate_hz"] == "32000"  # 64 / (2 x 1 ms)


def test_best_effort_stream_is_trimmed_to_about_its_maxlen(ff_engine, small_stream_nodes):
    c = claimed(ff_engine)
    for _ in range(40):
        ff_engine.call(append(c, mode="best_effort", ttl_ms=1000, maxlen_floor=4, maxlen_ceiling=4))
    assert 4 <= ff_engine.redis.xlen(c.stream) < 15


# -- ff_append_frame: rejections, in check order (§7.1 steps 1-4) ----------------------------


def test_payload_over_the_limit_is_retention_limit_exceeded_before_any_lease_check(ff_engine):
    c = claimed(ff_engine)
    reply = raw(ff_engine.redis, append(c, payload=b"x" * 11, max_payload_bytes=10))
    assert reply == [0, "retention_limit_exceeded"]
    assert ff_engine.call(append(c, payload=b"x" * 10, max_payload_bytes=10)).frame_count == 1
    gone = fn.AppendFrame(
        execution_id=ExecutionId.mint(86), attempt_index=0, fence=c.fence, frame_type="x", payload=b"x" * 65_537
    )
    expect_error(ff_engine, gone, "retention_limit_exceeded")


def test_append_to_a_missing_or_inactive_execution_is_stream_closed(ff_engine):
    c = claimed(ff_engine)
    gone = fn.AppendFrame(execution_id=ExecutionId.mint(86), attempt_index=0, fence=c.fence, frame_type="x")
    expect_error(ff_engine, gone, "stream_closed", [])
    ff_engine.call(append(c))
    ff_engine.call(
        fn.CompleteExecution(
            execution_id=c.eid, fence=c.fence, lane_id=LANE, worker_instance_id=WIID, attempt_index=c.attempt_index
        )
    )
    expect_error(ff_engine, append(c), "stream_closed")
    assert ff_engine.call(read(c)).closed_reason == "attempt_success"


@pytest.mark.parametrize("ownership", ["lease_revoked", "lease_expired_reclaimable"])
def test_append_after_the_lease_was_lost_is_stale_owner(ff_engine, ownership):
    c = claimed(ff_engine)
    ff_engine.redis.hset(c.keys.core, "ownership_state", ownership)
    expect_error(ff_engine, append(c), "stale_owner_cannot_append", [])


def test_append_with_an_expired_lease_is_stale_owner(ff_engine):
    c = claimed(ff_engine, ttl_ms=50)
    time.sleep(0.08)
    expect_error(ff_engine, append(c), "stale_owner_cannot_append")


@pytest.mark.parametrize("part", ["attempt_index", "lease_id", "lease_epoch"])
def test_append_with_a_mismatched_fence_is_stale_owner(ff_engine, part):
    c = claimed(ff_engine)
    if part == "attempt_index":
        model = fn.AppendFrame(execution_id=c.eid, attempt_index=1, fence=c.fence, frame_type="x")
    elif part == "lease_id":
        model = append(c, fence=c.fence.model_copy(update={"lease_id": new_uuid()}))
    else:
        model = append(c, fence=c.fence.model_copy(update={"lease_epoch": 2}))
    expect_error(ff_engine, model, "stale_owner_cannot_append")
    assert ff_engine.redis.exists(c.meta) == 0


def test_append_does_not_check_the_attempt_id(ff_engine):
    c = claimed(ff_engine)
    other = c.fence.model_copy(update={"attempt_id": "someone-else"})
    assert ff_engine.call(append(c, fence=other)).frame_count == 1
    assert hash_of(ff_engine.redis, c.meta)["attempt_id"] == "someone-else"


def test_append_to_a_closed_stream_is_stream_closed(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c))
    ff_engine.redis.hset(c.meta, mapping={"closed_at": "1", "closed_reason": "x"})
    expect_error(ff_engine, append(c), "stream_closed")
    assert ff_engine.redis.xlen(c.stream) == 1


@pytest.mark.parametrize(
    ("position", "value", "mode", "detail"),
    [
        (13, "abc", "durable", "max_payload_bytes must be a number, got: abc"),
        (13, "", "durable", "max_payload_bytes must be a number, got: "),
        (11, "abc", "durable", "retention_maxlen must be a number, got: abc"),
        (11, "", "durable", "retention_maxlen must be a number, got: "),
        (11, "-1", "durable", "retention_maxlen must be a whole number >= 0, got: -1"),
        (11, "2.5", "durable", "retention_maxlen must be a whole number >= 0, got: 2.5"),
        (16, "", "best_effort", "ttl_ms must be a number, got: "),
        (16, "1.25", "best_effort", "ttl_ms must be a whole number of milliseconds, got: 1.25"),
        (17, "2.5", "best_effort", "best-effort MAXLEN must be a whole number, got: 2.5"),  # floor = ceiling
    ],
)
def test_malformed_numeric_append_argument_is_invalid_input_with_no_partial_writes(
    ff_engine, position, value, mode, detail
):
    c = claimed(ff_engine)
    model = append(c, mode=mode, ttl_ms=1000)
    argv = with_argv(model, position, value, *([(18, value)] if position == 17 else []))
    before = keyspace(ff_engine.redis)
    assert raw(ff_engine.redis, model, argv=argv) == [0, "invalid_input", detail]
    assert keyspace(ff_engine.redis) == before


def test_append_without_a_frame_type_is_invalid_input_with_no_partial_writes(ff_engine):
    c = claimed(ff_engine)
    model = append(c)
    before = keyspace(ff_engine.redis)
    assert raw(ff_engine.redis, model, argv=model.argv()[:4]) == [0, "invalid_input", "frame_type must be given"]
    assert keyspace(ff_engine.redis) == before


# -- ff_read_attempt_stream (§7.2) -------------------------------------------------------------------


def test_read_replies_nested_entries_and_open_stream_markers(ff_engine):
    c = claimed(ff_engine)
    ids = [ff_engine.call(append(c, payload=f"p{i}")).entry_id for i in range(3)]
    reply = raw(ff_engine.redis, read(c))
    assert reply[:2] == [1, "OK"] and reply[3:] == ["", ""]
    assert [entry[0] for entry in reply[2]] == ids
    assert reply[2][0][1][:6] == ["frame_type", "stdout", "ts", reply[2][0][1][3], "payload", "p0"]
    result = ff_engine.call(read(c))
    assert [f.id for f in result.frames] == ids
    assert [f.payload for f in result.frames] == ["p0", "p1", "p2"]
    assert (result.closed, result.closed_at, result.closed_reason) == (False, None, None)


def test_read_ranges_are_inclusive_and_count_limited(ff_engine):
    c = claimed(ff_engine)
    ids = [ff_engine.call(append(c, payload=str(i))).entry_id for i in range(5)]
    assert [f.id for f in ff_engine.call(read(c, count_limit=2)).frames] == ids[:2]
    assert [f.id for f in ff_engine.call(read(c, from_id=ids[1], to_id=ids[3])).frames] == ids[1:4]
    assert [f.id for f in ff_engine.call(read(c, from_id="0-0")).frames] == ids
    assert [f.id for f in ff_engine.call(read(c, from_id="(" + ids[3])).frames] == ids[4:]
    assert ff_engine.call(read(c, from_id="+", to_id="-")).frames == []


def test_read_defaults_to_the_whole_stream_with_three_or_fewer_arguments(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c))
    assert len(raw(ff_engine.redis, read(c), argv=["-", "+", "10"])[2]) == 1
    assert raw(ff_engine.redis, read(c), argv=[]) == [0, "invalid_input", "count_limit must be >= 1"]


def test_read_can_exclude_best_effort_frames_and_frames_without_mode_count_as_durable(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c, payload="d"))
    ff_engine.call(append(c, payload="b", mode="best_effort", ttl_ms=0))
    ff_engine.call(patch(c, {"s": 1}))
    ff_engine.redis.xadd(c.stream, {"frame_type": "legacy", "payload": "old"})
    everything = ff_engine.call(read(c))
    assert [f.mode for f in everything.frames] == ["durable", "best_effort", "summary", "durable"]
    visible = ff_engine.call(read(c, visibility="exclude_best_effort"))
    assert [f.frame_type for f in visible.frames] == ["stdout", "delta", "legacy"]


def test_read_reports_closed_at_and_closed_reason(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c))
    ff_engine.redis.hset(c.meta, mapping={"closed_at": "1700000000000", "closed_reason": "attempt_failure"})
    assert raw(ff_engine.redis, read(c))[3:] == ["1700000000000", "attempt_failure"]
    result = ff_engine.call(read(c))
    assert (result.closed, result.closed_at, result.closed_reason) == (True, 1_700_000_000_000, "attempt_failure")


def test_read_of_a_stream_never_written_is_empty(ff_engine):
    c = claimed(ff_engine)
    assert raw(ff_engine.redis, read(c)) == [1, "OK", [], "", ""]


@pytest.mark.parametrize(
    ("count", "detail"),
    [
        ("0", "count_limit must be >= 1"),
        ("-1", "count_limit must be >= 1"),
        ("abc", "count_limit must be >= 1"),
        ("", "count_limit must be >= 1"),
        ("10001", "count_limit_exceeds_hard_cap"),
        ("2.5", "count_limit must be a whole number, got: 2.5"),
    ],
)
def test_bad_count_limit_is_invalid_input(ff_engine, count, detail):
    c = claimed(ff_engine)
    assert raw(ff_engine.redis, read(c), argv=["-", "+", count]) == [0, "invalid_input", detail]


def test_count_limit_of_ten_thousand_is_allowed(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(append(c))
    assert len(ff_engine.call(read(c, count_limit=10_000)).frames) == 1


def test_malformed_stream_id_is_invalid_input(ff_engine):
    c = claimed(ff_engine)
    with pytest.raises(EngineError) as info:
        ff_engine.call(read(c, from_id="not-an-id"))
    assert info.value.code == "invalid_input"
    assert info.value.details[0].startswith("invalid stream range not-an-id .. +")


# -- ff_read_summary (§7.3) --------------------------------------------------------------------


def test_read_summary_of_an_attempt_without_one_is_empty_with_zero_counters(ff_engine):
    c = claimed(ff_engine)
    model = fn.ReadSummary(execution_id=c.eid, attempt_index=0)
    assert model.keys() == [c.summary] and model.argv() == []
    assert raw(ff_engine.redis, model) == [1, "OK", "", "0", "", "0", "0"]
    assert ff_engine.call(model) == fn.Summary(
        document=None, version=0, patch_kind="", last_updated_ms=0, first_applied_ms=0
    )


def test_read_summary_returns_document_version_kind_and_times(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(patch(c, {"tokens": 5, "status": "running"}))
    ff_engine.call(patch(c, {"tokens": 9}))
    stored = hash_of(ff_engine.redis, c.summary)
    model = fn.ReadSummary(execution_id=c.eid, attempt_index=0)
    assert raw(ff_engine.redis, model) == [
        1,
        "OK",
        stored["document"],
        "2",
        "json-merge-patch",
        stored["last_updated_ms"],
        stored["first_applied_ms"],
    ]
    summary = ff_engine.call(model)
    assert summary.document == {"tokens": 9, "status": "running"}
    assert (summary.version, summary.patch_kind) == (2, "json-merge-patch")


def test_read_summary_fills_missing_fields(ff_engine):
    c = claimed(ff_engine)
    ff_engine.redis.hset(c.summary, "document", '{"a":1}')
    assert raw(ff_engine.redis, fn.ReadSummary(execution_id=c.eid, attempt_index=0)) == [
        1,
        "OK",
        '{"a":1}',
        "0",
        "",
        "0",
        "0",
    ]
