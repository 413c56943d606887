"""The Python layer over waitpoints and signals, on a real server.

``ff_celery/engine/work/signals.py``: seeding the waitpoint HMAC keystore on every flow partition
(argument, ``FF_WAITPOINT_HMAC_SECRET``, an already seeded secret or a generated one; torn-write
repair; a partition keeps its own secret), rotation fanned out to every partition, signal
delivery (falling back to buffering for a pending waitpoint, the 256 KiB payload limit,
waking claimers on a resume), operator resume, and reading waitpoints and signals
(spec §3.5, §3.6, §4.4, §4.12). And the suspension methods of ``ClaimedTask``: ``suspend``
(idempotent on its suspension id after a lost reply; ``already_satisfied`` keeps the lease
renewing; the keystore is seeded lazily on ``hmac_secret_not_initialized``),
``create_pending_waitpoint`` and ``resume_signals``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from conftest import subscribers, wait_for
from contract.support import keyspace

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import ConflictError, EngineError, NotFoundError, StateError, ValidationError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys, wake_channel
from ff_celery.engine.core.notices import Listener
from ff_celery.engine.work import signals
from ff_celery.engine.work.claimed_task import ClaimedTask
from ff_celery.engine.work.claimer import Claimer

LANE = "default"
SECRET = "5e" * 32
SECRET_B = "b0" * 32
NUM_PARTITIONS = 256


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(signals.SECRET_ENV, raising=False)


@pytest.fixture
def claimer(ff_engine: Engine) -> Iterator[Any]:
    made: list[Claimer] = []

    def make(ttl_ms: int = 30_000) -> Claimer:
        made.append(Claimer(ff_engine, [LANE], worker_id="worker-a", lease_ttl_ms=ttl_ms))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def seeded(ff_engine: Engine) -> str:
    return signals.seed_waitpoint_secret(ff_engine, SECRET)


def claim(engine: Engine, claimer: Any, ttl_ms: int = 30_000) -> ClaimedTask:
    eid = engine.submit(LANE, b"payload").execution_id
    task = claimer(ttl_ms).claim_one(timeout_s=10)
    assert task is not None and task.execution_id == eid
    return task


def stores(r: redis.Redis) -> list[dict[str, str]]:
    """Every flow partition's keystore, in partition order."""
    pipe = r.pipeline(transaction=False)
    for partition in range(NUM_PARTITIONS):
        pipe.hgetall(PartitionKeys(partition).waitpoint_hmac)
    return [{k.decode(): v.decode() for k, v in raw.items()} for raw in pipe.execute()]


def sign(wp_id: str, wp_key: str, created_at: str | int, secret: str = SECRET, kid: str = "k1") -> str:
    message = f"{wp_id}|{wp_key}|{created_at}".encode()
    return f"{kid}:{hmac.new(bytes.fromhex(secret), message, hashlib.sha1).hexdigest()}"


def created_at(r: redis.Redis, eid: ExecutionId, wp_id: str) -> str:
    return r.hget(ExecKeys(eid).waitpoint(wp_id), "created_at").decode()


@contextmanager
def wake_listener(engine: Engine) -> Iterator[Listener]:
    listener = Listener(engine.redis)
    listener.subscribe(wake_channel(LANE))
    assert wait_for(lambda: subscribers(engine.redis, wake_channel(LANE)) >= 1)
    try:
        yield listener
    finally:
        listener.close()


def woken(listener: Listener, timeout_s: float = 10.0) -> bool:
    """True at the first wake-up; False after ``timeout_s`` without one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if listener.get(0.05) is not None:
            return True
    return False


def public_state(engine: Engine, eid: ExecutionId) -> str:
    return engine.read_core(eid, "public_state")["public_state"]


# -- seed_waitpoint_secret (§3.5) ----------------------------------------------------------------


def test_seeding_gives_every_flow_partition_k1_and_the_secret(ff_engine, ff_redis):
    assert signals.seed_waitpoint_secret(ff_engine, SECRET) == SECRET
    assert stores(ff_redis) == [{"current_kid": "k1", "secret:k1": SECRET}] * NUM_PARTITIONS


def test_seeding_takes_the_secret_from_ff_waitpoint_hmac_secret(ff_engine, ff_redis, monkeypatch):
    monkeypatch.setenv("FF_WAITPOINT_HMAC_SECRET", SECRET_B)
    assert signals.seed_waitpoint_secret(ff_engine) == SECRET_B
    assert {store["secret:k1"] for store in stores(ff_redis)} == {SECRET_B}


def test_an_explicit_secret_wins_over_the_environment(ff_engine, ff_redis, monkeypatch):
    monkeypatch.setenv("FF_WAITPOINT_HMAC_SECRET", SECRET_B)
    assert signals.seed_waitpoint_secret(ff_engine, SECRET) == SECRET
    assert {store["secret:k1"] for store in stores(ff_redis)} == {SECRET}


def test_seeding_without_a_configured_secret_generates_one_that_every_process_reuses(ff_engine, ff_redis, caplog):
    with caplog.at_level(logging.WARNING, logger="ff_celery.engine.work.signals"):
        generated = signals.seed_waitpoint_secret(ff_engine)
    assert len(generated) == 64 and bytes.fromhex(generated)
    assert "FF_WAITPOINT_HMAC_SECRET" in caplog.text
    other = Engine(ff_engine.redis)
    assert signals.seed_waitpoint_secret(other) == generated
    assert {store["secret:k1"] for store in stores(ff_redis)} == {generated}


def test_seeding_reuses_a_secret_already_seeded_on_another_partition(ff_engine, ff_redis):
    ff_redis.hset(PartitionKeys(200).waitpoint_hmac, mapping={"current_kid": "k1", "secret:k1": SECRET_B})
    assert signals.seed_waitpoint_secret(ff_engine) == SECRET_B
    assert {store["secret:k1"] for store in stores(ff_redis)} == {SECRET_B}


def test_seeding_with_a_custom_kid(ff_engine, ff_redis):
    signals.seed_waitpoint_secret(ff_engine, SECRET, kid="boot")
    assert stores(ff_redis)[86] == {"current_kid": "boot", "secret:boot": SECRET}


def test_seeding_repairs_a_torn_write(ff_engine, ff_redis):
    ff_redis.hset(PartitionKeys(5).waitpoint_hmac, "current_kid", "k7")
    signals.seed_waitpoint_secret(ff_engine, SECRET)
    assert stores(ff_redis)[5] == {"current_kid": "k7", "secret:k7": SECRET}


def test_a_partition_with_another_secret_keeps_its_own(ff_engine, ff_redis, caplog):
    own = {"current_kid": "k1", "secret:k1": SECRET_B, "secret:k0": "00", "expires_at:k0": "1"}
    ff_redis.hset(PartitionKeys(9).waitpoint_hmac, mapping=own)
    with caplog.at_level(logging.WARNING, logger="ff_celery.engine.work.signals"):
        assert signals.seed_waitpoint_secret(ff_engine, SECRET) == SECRET
    assert "partition 9 keeps its own waitpoint secret" in caplog.text
    everything = stores(ff_redis)
    assert everything[9] == own
    assert everything[10] == {"current_kid": "k1", "secret:k1": SECRET}


def test_seeding_twice_changes_nothing(ff_engine, ff_redis):
    signals.seed_waitpoint_secret(ff_engine, SECRET)
    before = keyspace(ff_redis)
    signals.seed_waitpoint_secret(ff_engine, SECRET)
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize("bad", ["xyz1", "abc", "ab cd"])
def test_seeding_rejects_a_secret_that_is_not_even_length_hex(ff_engine, ff_redis, bad):
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        signals.seed_waitpoint_secret(ff_engine, bad)
    assert raised.value.code == "invalid_secret_hex"
    assert keyspace(ff_redis) == before


def test_a_seeded_keystore_mints_tokens_a_client_can_verify(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    ticket = task.create_pending_waitpoint("wp-1", "key-1", ff_engine.server_time_ms() + 60_000)
    assert ticket.token == sign("wp-1", "key-1", created_at(ff_redis, task.execution_id, "wp-1"))
    task.complete()


# -- rotate_waitpoint_secret and waitpoint_kids (§3.6, §3.7) ---------------------------------------------


def test_rotation_fans_out_to_every_flow_partition(ff_engine, ff_redis, seeded):
    outcomes = signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B, grace_ms=1000)
    assert len(outcomes) == NUM_PARTITIONS
    assert (
        outcomes == [fn.Rotation(outcome="rotated", new_kid="k2", previous_kid="k1", forgotten_kids=0)] * NUM_PARTITIONS
    )
    for store in stores(ff_redis):
        assert (store["current_kid"], store["secret:k2"], store["previous_kid"]) == ("k2", SECRET_B, "k1")
        assert "expires_at:k1" in store


def test_rotation_uses_flowfabrics_default_grace_of_a_day(ff_engine, ff_redis, seeded):
    low = ff_engine.server_time_ms()
    signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B)
    expires = int(stores(ff_redis)[0]["expires_at:k1"])
    assert low + 86_400_000 <= expires <= ff_engine.server_time_ms() + 86_400_000


def test_repeating_a_rotation_is_a_noop_everywhere(ff_engine, seeded):
    signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B)
    outcomes = signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B)
    assert outcomes == [fn.Rotation(outcome="noop", new_kid="k2")] * NUM_PARTITIONS


def test_a_conflicting_rotation_raises_rotation_conflict(ff_engine, seeded):
    signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B)
    with pytest.raises(ConflictError) as raised:
        signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET)
    assert (raised.value.code, raised.value.details) == ("rotation_conflict", ["k2"])


def test_a_malformed_rotation_raises_the_engines_validation_error(ff_engine, ff_redis, seeded):
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        signals.rotate_waitpoint_secret(ff_engine, "k:2", SECRET_B)
    assert raised.value.code == "invalid_kid"
    assert keyspace(ff_redis) == before


def test_waitpoint_kids_lists_the_current_kid_and_those_in_grace(ff_engine, ff_redis, seeded):
    assert signals.waitpoint_kids(ff_engine, 3) == fn.Keystore(current_kid="k1", verifying={})
    signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B, grace_ms=60_000)
    listed = signals.waitpoint_kids(ff_engine, 3)
    assert listed.current_kid == "k2"
    assert listed.verifying == {"k1": int(stores(ff_redis)[3]["expires_at:k1"])}


def test_a_token_of_the_rotated_out_key_still_delivers_inside_its_grace(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition())
    signals.rotate_waitpoint_secret(ff_engine, "k2", SECRET_B, grace_ms=60_000)
    outcome = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "go")
    assert outcome.resumed


# -- deliver_signal (§4.3, §4.4) ------------------------------------------------------------------


def test_a_signal_that_resumes_the_execution_wakes_the_lane(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("approve",)))
    with wake_listener(ff_engine) as pubsub:
        outcome = signals.deliver_signal(
            ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "approve", b'{"ok":1}'
        )
        assert woken(pubsub)
    assert (outcome.resumed, outcome.effect, outcome.duplicate) == (True, "resume_condition_satisfied", False)
    assert public_state(ff_engine, task.execution_id) == "waiting"


def test_a_signal_that_does_not_resume_wakes_nobody(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("a", "b"), match="all"))
    with wake_listener(ff_engine) as pubsub:
        outcome = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "a")
        assert not woken(pubsub, 0.15)
    assert (outcome.resumed, outcome.effect) == (False, "appended_to_waitpoint")
    assert public_state(ff_engine, task.execution_id) == "suspended"


def test_a_signal_for_a_pending_waitpoint_is_buffered_and_counts_at_suspend(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    ticket = task.create_pending_waitpoint("wp-p", "key-p", ff_engine.server_time_ms() + 60_000)
    outcome = signals.deliver_signal(ff_engine, task.execution_id, "wp-p", ticket.token, "go", b"early")
    assert (outcome.effect, outcome.resumed) == ("buffered_for_pending_waitpoint", False)
    keys = ExecKeys(task.execution_id)
    assert ff_redis.hget(keys.signal(outcome.signal_id), "observed_effect") == b"buffered_for_pending_waitpoint"
    assert ff_redis.get(keys.signal_payload(outcome.signal_id)) == b"early"
    assert ff_redis.xlen(keys.waitpoint_signals("wp-p")) == 1
    suspension = task.suspend("wp-p", fn.ResumeCondition(signal_names=("go",)), use_pending=True)
    assert suspension.already_satisfied
    task.complete()


def test_deliver_signal_passes_the_signal_metadata_and_its_idempotency_key(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("never",)))
    common = {
        "source_type": "operator",
        "source_identity": "alice",
        "category": "approval",
        "idempotency_key": "once",
        "correlation_id": "corr",
        "payload_encoding": "binary",
    }
    token = suspension.waitpoint.token
    first = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "hello", b"x", **common)
    signal = {
        k.decode(): v.decode() for k, v in ff_redis.hgetall(ExecKeys(task.execution_id).signal(first.signal_id)).items()
    }
    assert {name: signal[name] for name in ("signal_name", "source_type", "source_identity", "signal_category")} == {
        "signal_name": "hello",
        "source_type": "operator",
        "source_identity": "alice",
        "signal_category": "approval",
    }
    assert (signal["idempotency_key"], signal["correlation_id"], signal["payload_encoding"]) == (
        "once",
        "corr",
        "binary",
    )
    again = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "hello", b"x", **common)
    assert (again.duplicate, again.signal_id, again.effect) == (True, first.signal_id, None)


def test_a_payload_over_256_kib_raises_payload_too_large_and_writes_nothing(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition())
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        signals.deliver_signal(
            ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "go", b"x" * (256 * 1024 + 1)
        )
    assert raised.value.code == "payload_too_large"
    assert keyspace(ff_redis) == before


def test_a_payload_of_exactly_256_kib_is_delivered(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition())
    payload = b"y" * (256 * 1024)
    outcome = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "go", payload)
    assert outcome.resumed
    assert ff_redis.get(ExecKeys(task.execution_id).signal_payload(outcome.signal_id)) == payload


def test_deliver_signal_with_a_wrong_token_raises_invalid_token(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    task.suspend("wp-1", fn.ResumeCondition())
    with pytest.raises(ValidationError) as raised:
        signals.deliver_signal(ff_engine, task.execution_id, "wp-1", "k1:" + "0" * 40, "go")
    assert raised.value.code == "invalid_token"
    assert public_state(ff_engine, task.execution_id) == "suspended"


def test_a_token_of_one_execution_cannot_resume_another_on_the_same_partition(ff_engine, seeded, claimer):
    first, second = claim(ff_engine, claimer), claim(ff_engine, claimer)
    token = first.suspend("wp-a", fn.ResumeCondition()).waitpoint.token
    second.suspend("wp-b", fn.ResumeCondition())
    with pytest.raises(ValidationError) as raised:  # answered as for an unknown waitpoint
        signals.deliver_signal(ff_engine, second.execution_id, "wp-a", token, "go")
    assert raised.value.code == "invalid_token"
    assert public_state(ff_engine, second.execution_id) == public_state(ff_engine, first.execution_id) == "suspended"
    assert signals.read_waitpoint(ff_engine, first.execution_id, "wp-a").state == "active"


def test_a_pending_waitpoint_of_one_execution_buffers_nothing_for_another(ff_engine, ff_redis, seeded, claimer):
    first, second = claim(ff_engine, claimer), claim(ff_engine, claimer)
    ticket = first.create_pending_waitpoint("wp-a", "approval", ff_engine.now_ms() + 60_000)
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        signals.deliver_signal(ff_engine, second.execution_id, "wp-a", ticket.token, "go")
    assert raised.value.code == "invalid_token"
    buffering = fn.BufferSignal(
        execution_id=second.execution_id, signal_id=new_uuid(), waitpoint_id="wp-a", signal_name="go",
        signal_category="signal", source_type="external", source_identity="", payload=b"",
        payload_encoding="json", idempotency_key="", correlation_id="", waitpoint_token=ticket.token,
    )  # fmt: skip
    with pytest.raises(EngineError) as raised:
        ff_engine.call(buffering)
    assert raised.value.code == "waitpoint_not_found"
    assert keyspace(ff_redis) == before


def test_deliver_signal_to_a_missing_execution_raises_execution_not_found(ff_engine, seeded):
    with pytest.raises(NotFoundError) as raised:
        signals.deliver_signal(ff_engine, ExecutionId.mint(86), "wp", "k1:" + "0" * 40, "go")
    assert raised.value.code == "execution_not_found"


# -- resume (§4.6) ---------------------------------------------------------------------------------


def test_an_operator_resume_wakes_the_lane_and_the_same_attempt_is_claimed_again(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    task.suspend("wp-1", fn.ResumeCondition(signal_names=("never",)))
    with wake_listener(ff_engine) as pubsub:
        assert signals.resume_execution(ff_engine, task.execution_id) == "waiting"
        assert woken(pubsub)
    again = claimer().claim_one(timeout_s=10)
    assert again is not None and again.execution_id == task.execution_id
    assert (again.attempt_index, again.lease_epoch, again.attempt_id) == (
        task.attempt_index,
        task.lease_epoch + 1,
        task.attempt_id,
    )
    assert again.resume_signals() == []
    again.complete()


def test_an_operator_resume_with_a_delay_answers_delayed(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    task.suspend("wp-1", fn.ResumeCondition())
    assert signals.resume_execution(ff_engine, task.execution_id, resume_delay_ms=60_000) == "delayed"
    assert public_state(ff_engine, task.execution_id) == "delayed"


def test_resuming_an_execution_that_is_not_suspended_raises_execution_not_suspended(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    for eid in (task.execution_id, ExecutionId.mint(86)):
        with pytest.raises(StateError) as raised:
            signals.resume_execution(ff_engine, eid)
        assert raised.value.code == "execution_not_suspended"
    task.complete()


# -- read_waitpoint, read_signals (§2.1, §2.4) ------------------------------------------------------


def test_read_waitpoint_reports_the_hash_and_the_matched_signals(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    timeout_at = ff_engine.server_time_ms() + 60_000
    suspension = task.suspend(
        "wp-1", fn.ResumeCondition(signal_names=("a", "b"), match="all"), waitpoint_key="key-1", timeout_at=timeout_at
    )
    first = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "a")
    record = signals.read_waitpoint(ff_engine, task.execution_id, "wp-1")
    assert record is not None
    assert record == signals.WaitpointRecord(
        waitpoint_id="wp-1",
        waitpoint_key="key-1",
        execution_id=task.execution_id,
        attempt_index=task.attempt_index,
        state="active",
        token=suspension.waitpoint.token,
        created_at=int(created_at(ff_redis, task.execution_id, "wp-1")),
        expires_at=timeout_at,
        close_reason="",
        matched_signal_ids=[first.signal_id],
        signal_names=["a", "b"],
    )
    assert not record.resumed
    assert record.ticket() == suspension.waitpoint
    second = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", suspension.waitpoint.token, "b")
    record = signals.read_waitpoint(ff_engine, task.execution_id, "wp-1")
    assert record is not None and record.resumed
    assert record.matched_signal_ids == [first.signal_id, second.signal_id]


def test_read_waitpoint_of_a_pending_waitpoint_without_an_expiry_or_condition(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    task.create_pending_waitpoint("wp-p", "key-p", 4_102_444_800_000)
    ff_redis.hset(ExecKeys(task.execution_id).waitpoint("wp-p"), "expires_at", "")
    record = signals.read_waitpoint(ff_engine, task.execution_id, "wp-p")
    assert record is not None
    assert (record.state, record.expires_at, record.matched_signal_ids) == ("pending", None, [])
    task.complete()


def test_read_waitpoint_of_a_missing_waitpoint_is_none(ff_engine):
    assert signals.read_waitpoint(ff_engine, ExecutionId.mint(86), "nope") is None


def test_read_signals_keeps_the_order_given_and_skips_missing_ones(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("one", "two", "never"), match="all"))
    token = suspension.waitpoint.token
    one = signals.deliver_signal(
        ff_engine, task.execution_id, "wp-1", token, "one", b"p1", source_identity="svc", correlation_id="c"
    )
    two = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "two")
    received = signals.read_signals(ff_engine, task.execution_id, [two.signal_id, "missing", one.signal_id])
    assert [s.signal_id for s in received] == [two.signal_id, one.signal_id]
    assert (received[0].name, received[0].payload) == ("two", None)
    first = received[1]
    assert (first.name, first.category, first.source_type, first.source_identity, first.correlation_id) == (
        "one",
        "signal",
        "external",
        "svc",
        "c",
    )
    assert first.payload == b"p1" and first.accepted_at > 0
    assert signals.read_signals(ff_engine, task.execution_id, []) == []


# -- resume_signals (§4.12) -------------------------------------------------------------------------


def test_resume_signals_are_the_matched_signals_in_matcher_order(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("a", "b"), match="all"))
    token = suspension.waitpoint.token
    signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "zzz")
    b = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "b", b"second")
    a = signals.deliver_signal(ff_engine, task.execution_id, "wp-1", token, "a", b"first")
    received = signals.resume_signals(ff_engine, task.execution_id, task.attempt_index)
    assert [(s.signal_id, s.name, s.payload) for s in received] == [
        (a.signal_id, "a", b"first"),
        (b.signal_id, "b", b"second"),
    ]
    assert signals.resume_signals(ff_engine, task.execution_id, task.attempt_index + 1) == []


def test_resume_signals_of_a_composite_resume_are_all_its_satisfiers(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    tree = {
        "kind": "AllOf",
        "path": "",
        "members": [
            {"kind": "Single", "path": "members[0]", "waitpoint_key": "key-a", "matcher": None},
            {"kind": "Single", "path": "members[1]", "waitpoint_key": "key-b", "matcher": None},
        ],
    }
    suspension = ff_engine.call(
        fn.SuspendExecution(
            **{k: v for k, v in task._holder().items() if k != "source"},
            suspension_id=new_uuid(),
            waitpoint_id="wp-a",
            waitpoint_key="key-a",
            resume_condition_json=json.dumps({"v": 1, "composite": True, "tree": tree}),
            extra_waitpoints=(("wp-b", "key-b"),),
        )
    )
    task.release()
    one = signals.deliver_signal(ff_engine, task.execution_id, "wp-a", suspension.waitpoint.token, "x")
    two = signals.deliver_signal(ff_engine, task.execution_id, "wp-b", suspension.extra_waitpoints[0].token, "y")
    assert two.resumed
    received = signals.resume_signals(ff_engine, task.execution_id, task.attempt_index)
    assert {s.signal_id for s in received} == {one.signal_id, two.signal_id}  # SMEMBERS order is unspecified


def test_resume_signals_after_a_timeout_auto_resume_are_empty(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    condition = fn.ResumeCondition(timeout_behavior="auto_resume")
    suspension = task.suspend("wp-1", condition, timeout_at=ff_engine.server_time_ms() + 20)
    time.sleep(0.04)
    outcome = ff_engine.call(
        fn.ExpireSuspension(
            execution_id=task.execution_id, lane_id=LANE, waitpoint_id=suspension.waitpoint.waitpoint_id
        )
    )
    assert outcome == ("auto_resume", "waiting")
    assert signals.resume_signals(ff_engine, task.execution_id, task.attempt_index) == []


def test_resume_signals_with_an_empty_satisfier_list_are_empty(ff_engine, ff_redis, seeded, claimer):
    # §11.16: cjson encodes an empty Lua table as {}
    task = claim(ff_engine, claimer)
    task.suspend("wp-1", fn.ResumeCondition())
    signals.resume_execution(ff_engine, task.execution_id)
    ff_redis.hset(ExecKeys(task.execution_id).suspension_current, "all_satisfier_signals", "{}")
    assert signals.resume_signals(ff_engine, task.execution_id, task.attempt_index) == []


def test_resume_signals_without_a_suspension_record_are_empty(ff_engine):
    assert signals.resume_signals(ff_engine, ExecutionId.mint(86), 0) == []


# -- ClaimedTask.suspend, create_pending_waitpoint, resume_signals ---------------------------------------------


def test_suspend_parks_the_task_and_stops_renewing_its_lease(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    made = claimer()
    assert task.is_lease_healthy()
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("go",)), reason="waiting_for_approval")
    assert task.finished
    assert not suspension.already_satisfied
    assert suspension.waitpoint.waitpoint_key == "wpk:wp-1"
    assert suspension.waitpoint.token == sign("wp-1", "wpk:wp-1", created_at(ff_redis, task.execution_id, "wp-1"))
    core = ff_engine.read_core(task.execution_id)
    assert (core["public_state"], core["blocking_reason"], core["current_suspension_id"]) == (
        "suspended",
        "waiting_for_approval",
        suspension.suspension_id,
    )
    dedup = ExecKeys(task.execution_id).suspend_dedup(suspension.suspension_id)
    assert ff_redis.hget(dedup, "outcome").decode().startswith(f"OK\t{suspension.suspension_id}\twp-1\t")
    assert 0 < ff_redis.pttl(dedup) <= 604_800_000
    made.close()


def test_a_suspend_repeated_after_a_lost_reply_returns_the_first_outcome(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension_id = new_uuid()
    condition = fn.ResumeCondition(signal_names=("go",))
    # the first attempt reached the engine, but its reply was lost
    first = ff_engine.call(
        fn.SuspendExecution(
            **{k: v for k, v in task._holder().items() if k != "source"},
            suspension_id=suspension_id,
            waitpoint_id="wp-1",
            waitpoint_key="wpk:wp-1",
            resume_condition_json=condition.to_json(),
            idempotency_key=suspension_id,
        )
    )
    again = task.suspend("wp-1", condition, suspension_id=suspension_id)
    assert again == first
    assert task.finished
    assert public_state(ff_engine, task.execution_id) == "suspended"


def test_a_suspend_with_a_timeout_records_it_and_the_behaviour(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    timeout_at = ff_engine.server_time_ms() + 60_000
    task.suspend("wp-1", fn.ResumeCondition(timeout_behavior="escalate"), timeout_at=timeout_at)
    record = ff_redis.hgetall(ExecKeys(task.execution_id).suspension_current)
    assert (record[b"timeout_at"], record[b"timeout_behavior"]) == (str(timeout_at).encode(), b"escalate")
    dedup_ttl = ff_redis.pttl(ExecKeys(task.execution_id).suspend_dedup(record[b"suspension_id"].decode()))
    assert 60_000 < dedup_ttl <= 120_000 + 1000


def test_an_already_satisfied_suspend_keeps_the_lease_renewing(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer, ttl_ms=1200)  # renewed every 400 ms
    ticket = task.create_pending_waitpoint("wp-p", "key-p", ff_engine.server_time_ms() + 60_000)
    signal = signals.deliver_signal(ff_engine, task.execution_id, "wp-p", ticket.token, "go", b"ready")
    first_expiry = task.lease_expires_at
    suspension = task.suspend("wp-p", fn.ResumeCondition(signal_names=("go",)), use_pending=True)
    assert suspension.already_satisfied
    assert suspension.waitpoint == ticket
    assert not task.finished
    assert task._renewer is not None and task._renewer.tracked == 1
    # half a TTL past the first expiry, by engine time: only renewals kept the lease alive
    assert first_expiry is not None
    assert wait_for(lambda: ff_engine.server_time_ms() > first_expiry + 600)
    assert task.lease_expires_at is not None and task.lease_expires_at > first_expiry
    assert task.is_lease_healthy()
    assert ff_engine.call(fn.MarkLeaseExpiredIfDue(execution_id=task.execution_id)).reason == "not_yet_expired"
    # no suspension record exists, so the task reads the condition itself (§4.12)
    assert task.resume_signals() == []
    record = signals.read_waitpoint(ff_engine, task.execution_id, "wp-p")
    assert record is not None and record.matched_signal_ids == [signal.signal_id]
    task.complete(b"done")
    assert public_state(ff_engine, task.execution_id) == "completed"


def test_suspend_seeds_an_unseeded_keystore_lazily(ff_engine, ff_redis, claimer):
    task = claim(ff_engine, claimer)
    assert ff_redis.exists(PartitionKeys(86).waitpoint_hmac) == 0
    suspension = task.suspend("wp-1", fn.ResumeCondition())
    assert task.finished and suspension.waitpoint.token.startswith("k1:")
    seeded_stores = stores(ff_redis)
    assert all(store.get("current_kid") == "k1" for store in seeded_stores)
    secret = seeded_stores[86]["secret:k1"]
    assert {store["secret:k1"] for store in seeded_stores} == {secret}
    assert suspension.waitpoint.token == sign(
        "wp-1", "wpk:wp-1", created_at(ff_redis, task.execution_id, "wp-1"), secret=secret
    )


def test_create_pending_waitpoint_seeds_an_unseeded_keystore_lazily(ff_engine, ff_redis, claimer, monkeypatch):
    monkeypatch.setenv("FF_WAITPOINT_HMAC_SECRET", SECRET_B)
    task = claim(ff_engine, claimer)
    ticket = task.create_pending_waitpoint("wp-p", "key-p", ff_engine.server_time_ms() + 60_000)
    assert ticket.token == sign("wp-p", "key-p", created_at(ff_redis, task.execution_id, "wp-p"), secret=SECRET_B)
    assert not task.finished
    task.complete()


def test_create_pending_waitpoint_binds_the_tasks_attempt(ff_engine, ff_redis, seeded, claimer):
    task = claim(ff_engine, claimer)
    expires_at = ff_engine.server_time_ms() + 60_000
    ticket = task.create_pending_waitpoint("wp-p", "key-p", expires_at)
    assert (ticket.waitpoint_id, ticket.waitpoint_key) == ("wp-p", "key-p")
    record = signals.read_waitpoint(ff_engine, task.execution_id, "wp-p")
    assert record is not None
    assert (record.state, record.execution_id, record.attempt_index, record.expires_at) == (
        "pending",
        task.execution_id,
        task.attempt_index,
        expires_at,
    )
    assert ff_redis.zscore(PartitionKeys(86).pending_waitpoint_expiry, "wp-p") == expires_at
    task.complete()


def test_a_suspend_after_the_lease_was_lost_finishes_the_task(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    ff_engine.revoke_lease(task.execution_id)
    with pytest.raises(StateError) as raised:
        task.suspend("wp-1", fn.ResumeCondition())
    assert raised.value.code == "lease_revoked"
    assert task.finished


def test_a_suspend_refused_for_another_reason_keeps_the_task_holding_its_lease(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    with pytest.raises(EngineError) as raised:
        task.suspend("no-such-pending", fn.ResumeCondition(), use_pending=True)
    assert raised.value.code == "waitpoint_not_found"
    assert not task.finished
    assert public_state(ff_engine, task.execution_id) == "active"
    task.complete()


def test_the_resumed_task_reads_the_signals_that_resumed_it(ff_engine, seeded, claimer):
    task = claim(ff_engine, claimer)
    suspension = task.suspend("wp-1", fn.ResumeCondition(signal_names=("approve",)))
    signal = signals.deliver_signal(
        ff_engine,
        task.execution_id,
        "wp-1",
        suspension.waitpoint.token,
        "approve",
        b'{"by":"alice"}',
        source_type="operator",
        source_identity="alice",
    )
    resumed = claimer().claim_one(timeout_s=10)
    assert resumed is not None and resumed.execution_id == task.execution_id
    assert (resumed.attempt_index, resumed.lease_epoch) == (task.attempt_index, task.lease_epoch + 1)
    (received,) = resumed.resume_signals()
    assert (received.signal_id, received.name, received.source_type, received.source_identity, received.payload) == (
        signal.signal_id,
        "approve",
        "operator",
        "alice",
        b'{"by":"alice"}',
    )
    resumed.complete()
