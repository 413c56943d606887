"""Contract tests: waitpoint HMAC tokens and the keystore.

Pins minting (inside ff_create_pending_waitpoint and ff_suspend_execution), validation (inside
ff_deliver_signal and ff_buffer_signal_for_pending_waitpoint), ff_rotate_waitpoint_hmac_secret
and ff_list_waitpoint_hmac_kids to /work/shared/spec/flowfabric-suspend-budget-stream-flow.md
§3.1-§3.4, §3.6, §3.7, §4.3 and §4.4 (steps 1-2), §10 and §11.1, on a real server.

Every expected token is computed here, independently of the Lua, as
``kid + ":" + HMAC-SHA1(bytes.fromhex(secret), f"{waitpoint_id}|{waitpoint_key}|{created_at}")``.
The "expires_at equals now" boundaries are hit by setting the field to the server's current
millisecond and running the FCALL in the same MULTI, retried until a TIME read after the
FCALL shows the millisecond did not change.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys

from .support import LANE, PARTITION, create, decode, expect_error, grant_and_claim, hash_of, keyspace, raw, server_ms

IDX = PartitionKeys(PARTITION)
KEYSTORE = IDX.waitpoint_hmac
WORKER, WIID = "worker-a", "worker-a-1"
KID = "k1"
SECRET = "00112233445566778899aabbccddeeff" * 2
SECRET_B = "bb" * 32
SECRET_C = "cc" * 32
TOKEN_SHAPE = re.compile(r"^k1:[0-9a-f]{40}$")

SET_FIELD_TO_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], tostring(now))
return now
"""


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    eid: ExecutionId
    fence: fn.Fence

    @property
    def keys(self) -> ExecKeys:
        return ExecKeys(self.eid)


def digest(secret_hex: str, wp_id: str, wp_key: str, created_at: str | int) -> str:
    message = f"{wp_id}|{wp_key}|{created_at}".encode()
    return hmac.new(bytes.fromhex(secret_hex), message, hashlib.sha1).hexdigest()


def sign(wp_id: str, wp_key: str, created_at: str | int, secret: str = SECRET, kid: str = KID) -> str:
    return f"{kid}:{digest(secret, wp_id, wp_key, created_at)}"


def seed(r: redis.Redis, kid: str = KID, secret: str = SECRET) -> None:
    r.hset(KEYSTORE, mapping={"current_kid": kid, f"secret:{kid}": secret})


def claimed(engine: Engine) -> Claimed:
    eid = create(engine)
    return Claimed(eid, grant_and_claim(engine, eid, lane=LANE, worker=(WORKER, WIID))[1])


def pending_request(c: Claimed, wp_id: str | None = None, wp_key: str | None = None) -> fn.CreatePendingWaitpoint:
    wp_id = wp_id or new_uuid()
    return fn.CreatePendingWaitpoint(
        execution_id=c.eid,
        attempt_index=0,
        waitpoint_id=wp_id,
        waitpoint_key=f"wpk:{wp_id}" if wp_key is None else wp_key,
        expires_at=4_102_444_800_000,
    )


def suspend_request(c: Claimed, *, extras: tuple[tuple[str, str], ...] = (), names: tuple[str, ...] = ()):
    wp_id = new_uuid()
    return fn.SuspendExecution(
        execution_id=c.eid,
        fence=c.fence,
        attempt_index=0,
        lane_id=LANE,
        worker_instance_id=WIID,
        suspension_id=new_uuid(),
        waitpoint_id=wp_id,
        waitpoint_key=f"wpk:{wp_id}",
        resume_condition_json=fn.ResumeCondition(signal_names=names).to_json(),
        extra_waitpoints=extras,
    )


def created_at(r: redis.Redis, c: Claimed, wp_id: str) -> str:
    return r.hget(c.keys.waitpoint(wp_id), "created_at").decode()


def deliver(eid: ExecutionId, wp_id: str, token: str, name: str = "go") -> fn.DeliverSignal:
    return fn.DeliverSignal(
        execution_id=eid,
        lane_id=LANE,
        signal_id=new_uuid(),
        waitpoint_id=wp_id,
        signal_name=name,
        waitpoint_token=token,
    )


def buffer(eid: ExecutionId, wp_id: str, token: str, name: str = "go") -> fn.BufferSignal:
    return fn.BufferSignal(
        execution_id=eid, signal_id=new_uuid(), waitpoint_id=wp_id, signal_name=name, waitpoint_token=token
    )


@dataclass(frozen=True)
class Target:
    """A waitpoint a signal can be sent to, and how to send one."""

    kind: str  # "deliver" (an active waitpoint of a suspended execution) or "buffer" (a pending one)
    c: Claimed
    ticket: fn.WaitpointTicket

    def signal(self, token: str | None = None, wp_id: str | None = None) -> fn.SignalRequest:
        make = deliver if self.kind == "deliver" else buffer
        return make(self.c.eid, wp_id or self.ticket.waitpoint_id, self.ticket.token if token is None else token)

    @property
    def keystore_position(self) -> int:
        return 13 if self.kind == "deliver" else 8


def target(engine: Engine, kind: str) -> Target:
    c = claimed(engine)
    if kind == "deliver":
        # a condition no signal here satisfies, so deliveries can repeat
        suspension = engine.call(suspend_request(c, names=("never",)))
        return Target(kind, c, suspension.waitpoint)
    return Target(kind, c, engine.call(pending_request(c)))


def stamp(r: redis.Redis, c: Claimed) -> str | None:
    value = r.hget(c.keys.core, "last_hmac_validation_failed_at")
    return value.decode() if value is not None else None


def expect_rejected(engine: Engine, r: redis.Redis, t: Target, request: fn.Fcall[Any], code: str, **kw: Any) -> None:
    """``request`` fails with ``code``, stamps last_hmac_validation_failed_at with the server's
    now and writes nothing else."""
    assert stamp(r, t.c) is None
    before = keyspace(r)
    low = server_ms(r)
    assert raw(r, request, keys=kw.get("keys")) == [0, code]
    value = stamp(r, t.c)
    assert value is not None and low <= int(value) <= server_ms(r)
    r.hdel(t.c.keys.core, "last_hmac_validation_failed_at")
    assert keyspace(r) == before


def in_the_same_ms(
    r: redis.Redis, field: str, make: Any, key: str = KEYSTORE, restore: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Set ``key``'s ``field`` to the server's now and run the FCALL ``make()`` builds in the
    same millisecond (a TIME read after it proves it); returns (that ms, the FCALL's reply).
    ``restore`` fields are written first in every try (an earlier try's FCALL committed)."""
    for _ in range(100):
        model = make()
        keys = model.keys()
        pipe = r.pipeline(transaction=True)
        if restore:
            pipe.hset(key, mapping=restore)
        pipe.eval(SET_FIELD_TO_NOW, 1, key, field)
        pipe.fcall(model.function, len(keys), *keys, *model.argv())
        pipe.time()
        *_, set_at, reply, (seconds, micros) = pipe.execute()
        if int(seconds) * 1000 + int(micros) // 1000 == set_at:
            return set_at, decode(reply)
    raise AssertionError("could not run the FCALL in the same millisecond")


# -- token format and algorithm (§3.1) ---------------------------------------------------------


def test_a_minted_token_is_the_kid_a_colon_and_40_lowercase_hex(ff_engine, ff_redis):
    seed(ff_redis)
    c = claimed(ff_engine)
    request = pending_request(c, "wp-1", "wpk:wp-1")
    ticket = ff_engine.call(request)
    assert TOKEN_SHAPE.match(ticket.token)
    assert ticket.token == sign("wp-1", "wpk:wp-1", created_at(ff_redis, c, "wp-1"))
    assert ff_redis.hget(c.keys.waitpoint("wp-1"), "waitpoint_token").decode() == ticket.token


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param(SECRET, id="32-bytes"),
        pytest.param("ab" * 64, id="64-bytes-exactly-one-block"),
        pytest.param("cd" * 65, id="65-bytes-hashed-first"),
        pytest.param("0123456789abcdef" * 25, id="200-bytes-hashed-first"),
        pytest.param("00", id="one-zero-byte"),
        pytest.param("ff", id="one-byte"),
        pytest.param("DEADBEEF" * 8, id="uppercase-hex"),
    ],
)
def test_the_token_digest_is_hmac_sha1_keyed_by_the_hex_decoded_secret(ff_engine, ff_redis, secret):
    seed(ff_redis, secret=secret)
    c = claimed(ff_engine)
    ticket = ff_engine.call(pending_request(c, "wp-1", "key-1"))
    assert ticket.token == sign("wp-1", "key-1", created_at(ff_redis, c, "wp-1"), secret=secret)


@pytest.mark.parametrize(
    "wp_key",
    [
        pytest.param("", id="empty-key"),
        pytest.param("a|b", id="key-with-a-pipe"),
        pytest.param("ключ-✓", id="utf-8-key"),
        pytest.param("x" * 300, id="long-key"),
    ],
)
def test_the_token_message_is_id_pipe_key_pipe_created_at_in_utf8(ff_engine, ff_redis, wp_key):
    seed(ff_redis)
    c = claimed(ff_engine)
    ticket = ff_engine.call(pending_request(c, "wp-1", wp_key))
    assert ticket.token == sign("wp-1", wp_key, created_at(ff_redis, c, "wp-1"))


def test_the_token_is_minted_under_the_current_kid(ff_engine, ff_redis):
    seed(ff_redis, kid="rot-2024.b", secret=SECRET_B)
    c = claimed(ff_engine)
    ticket = ff_engine.call(pending_request(c, "wp-1", "k"))
    assert ticket.token == sign("wp-1", "k", created_at(ff_redis, c, "wp-1"), secret=SECRET_B, kid="rot-2024.b")


def test_the_token_does_not_bind_the_execution(ff_engine, ff_redis):
    # §3.1: the execution id is not in the message
    seed(ff_redis)
    a, b = claimed(ff_engine), claimed(ff_engine)
    ta = ff_engine.call(pending_request(a, "wp-a", "same-key"))
    tb = ff_engine.call(pending_request(b, "wp-a2", "same-key"))
    assert ta.token == sign("wp-a", "same-key", created_at(ff_redis, a, "wp-a"))
    assert tb.token == sign("wp-a2", "same-key", created_at(ff_redis, b, "wp-a2"))


# -- minting errors (§3.3) ---------------------------------------------------------------------


@pytest.mark.standalone
def test_create_pending_without_the_keystore_key_answers_invalid_keys_missing_hmac(ff_engine, ff_redis):
    seed(ff_redis)
    c = claimed(ff_engine)
    request = pending_request(c)
    keys = request.keys()
    keys[3] = ""
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, keys=keys) == [0, "invalid_keys_missing_hmac"]
    assert keyspace(ff_redis) == before


@pytest.mark.standalone
def test_suspend_without_the_keystore_key_answers_invalid_keys_missing_hmac(ff_engine, ff_redis):
    seed(ff_redis)
    c = claimed(ff_engine)
    request = suspend_request(c)
    keys = request.keys()
    keys[16] = ""
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, keys=keys) == [0, "invalid_keys_missing_hmac"]
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize(
    "store",
    [
        pytest.param({}, id="empty"),
        pytest.param({f"secret:{KID}": SECRET}, id="no-current-kid"),
        pytest.param({"current_kid": KID}, id="no-secret-for-the-current-kid"),
        pytest.param({"current_kid": KID, "secret:other": SECRET}, id="only-another-kids-secret"),
    ],
)
@pytest.mark.parametrize("call", ["create_pending", "suspend", "suspend_with_extras"])
def test_minting_without_a_usable_current_secret_answers_hmac_secret_not_initialized(ff_engine, ff_redis, store, call):
    c = claimed(ff_engine)
    if store:
        ff_redis.hset(KEYSTORE, mapping=store)
    if call == "create_pending":
        request: fn.Fcall[Any] = pending_request(c)
    else:
        request = suspend_request(c, extras=(("wp-x", "key-x"),) if call == "suspend_with_extras" else ())
    before = keyspace(ff_redis)
    expect_error(ff_engine, request, "hmac_secret_not_initialized", [])
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize("bad", ["zz" * 32, "abc", "0g"])
@pytest.mark.parametrize("call", ["create_pending", "suspend"])
def test_minting_with_a_non_hex_secret_answers_invalid_secret(ff_engine, ff_redis, bad, call):
    seed(ff_redis, secret=bad)
    c = claimed(ff_engine)
    request = pending_request(c) if call == "create_pending" else suspend_request(c)
    before = keyspace(ff_redis)
    expect_error(ff_engine, request, "invalid_secret", [])
    assert keyspace(ff_redis) == before


def test_create_pending_checks_the_lease_before_minting(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = pending_request(c).model_copy(update={"attempt_index": 1})
    expect_error(ff_engine, request, "stale_lease")


# -- validation (§3.4, deliver §4.4 step 2, buffer §4.3) -----------------------------------------------


KINDS = ["deliver", "buffer"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_token_is_accepted_and_stamps_nothing(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    assert raw(ff_redis, t.signal())[0] == 1
    assert stamp(ff_redis, t.c) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.standalone
def test_validation_without_the_keystore_key_answers_invalid_keys_missing_hmac(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    request = t.signal()
    keys = request.keys()
    keys[t.keystore_position] = ""
    expect_rejected(ff_engine, ff_redis, t, request, "invalid_keys_missing_hmac", keys=keys)


@pytest.mark.parametrize("kind", KINDS)
def test_an_empty_token_answers_missing_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=""), "missing_token")


@pytest.mark.parametrize("kind", KINDS)
def test_an_absent_token_argument_answers_missing_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    request = t.signal()
    assert raw(ff_redis, request, request.argv()[:17]) == [0, "missing_token"]
    assert stamp(ff_redis, t.c) is not None


MALFORMED = [
    pytest.param("a" * 40, id="no-colon"),
    pytest.param(":" + "a" * 40, id="empty-kid"),
    pytest.param("k1:", id="empty-digest"),
    pytest.param("k1:" + "a" * 39, id="39-hex"),
    pytest.param("k1:" + "a" * 41, id="41-hex"),
    pytest.param("k1:" + "g" * 40, id="40-non-hex"),
    pytest.param("k1:" + "ab:" + "c" * 37, id="second-colon-inside-the-digest"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("token", MALFORMED)
def test_a_malformed_token_answers_invalid_token(ff_engine, ff_redis, kind, token):
    seed(ff_redis)
    t = target(ff_engine, kind)
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=token), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_the_token_shape_is_checked_before_the_keystore(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.delete(KEYSTORE)
    expect_rejected(ff_engine, ff_redis, t, t.signal(token="k1:short"), "invalid_token")
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=""), "missing_token")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("store", [{}, {f"secret:{KID}": SECRET}], ids=["empty", "no-current-kid"])
def test_a_well_formed_token_with_an_uninitialized_keystore_answers_hmac_secret_not_initialized(
    ff_engine, ff_redis, kind, store
):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.delete(KEYSTORE)
    if store:
        ff_redis.hset(KEYSTORE, mapping=store)
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "hmac_secret_not_initialized")


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_under_an_unknown_kid_answers_invalid_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    forged = "k9:" + t.ticket.token.split(":", 1)[1]
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=forged), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_a_wrong_digest_answers_invalid_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    forged = sign(t.ticket.waitpoint_id, t.ticket.waitpoint_key, 1, secret=SECRET_B)
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=forged), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_an_uppercase_digest_answers_invalid_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    kid, hexdigest = t.ticket.token.split(":", 1)
    assert hexdigest != hexdigest.upper()
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=f"{kid}:{hexdigest.upper()}"), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("field", ["created_at", "waitpoint_key"])
def test_the_token_is_bound_to_the_waitpoints_key_and_created_at(ff_engine, ff_redis, kind, field):
    seed(ff_redis)
    t = target(ff_engine, kind)
    wp_key = t.c.keys.waitpoint(t.ticket.waitpoint_id)
    old = ff_redis.hget(wp_key, field).decode()
    ff_redis.hset(wp_key, field, str(int(old) + 1) if field == "created_at" else old + "x")
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_another_waitpoints_token_answers_invalid_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    other = ff_engine.call(pending_request(claimed(ff_engine)))
    expect_rejected(ff_engine, ff_redis, t, t.signal(token=other.token), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_the_current_kid_without_its_secret_answers_invalid_token(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.hdel(KEYSTORE, f"secret:{KID}")
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "invalid_token")


@pytest.mark.parametrize("kind", KINDS)
def test_a_non_hex_secret_answers_invalid_secret(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.hset(KEYSTORE, f"secret:{KID}", "not hex!")
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "invalid_secret")


@pytest.mark.parametrize("kind", KINDS)
def test_a_rotated_out_kid_validates_inside_its_grace(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_engine.call(
        fn.RotateWaitpointSecret(partition=PARTITION, new_kid="k2", new_secret_hex=SECRET_B, grace_ms=60_000)
    )
    assert raw(ff_redis, t.signal())[0] == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "expires_at",
    [pytest.param("past", id="past"), "0", "-5", "soon", pytest.param(None, id="missing")],
)
def test_a_rotated_out_kid_past_or_without_a_valid_expiry_answers_token_expired(ff_engine, ff_redis, kind, expires_at):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.hset(KEYSTORE, mapping={"current_kid": "k2", "secret:k2": SECRET_B})
    if expires_at == "past":
        ff_redis.hset(KEYSTORE, f"expires_at:{KID}", str(server_ms(ff_redis) - 1))
    elif expires_at is not None:
        ff_redis.hset(KEYSTORE, f"expires_at:{KID}", expires_at)
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "token_expired")


def test_an_expired_kid_is_checked_before_the_digest(ff_engine, ff_redis):
    seed(ff_redis)
    t = target(ff_engine, "deliver")
    ff_redis.hset(KEYSTORE, mapping={"current_kid": "k2", "secret:k2": SECRET_B, f"expires_at:{KID}": "1"})
    expect_rejected(ff_engine, ff_redis, t, t.signal(token="k1:" + "0" * 40), "token_expired")


@pytest.mark.single_node  # one server's MULTI with a keyless TIME
@pytest.mark.parametrize("kind", KINDS)
def test_a_kid_whose_expiry_is_exactly_now_still_validates(ff_engine, ff_redis, kind):
    seed(ff_redis)
    t = target(ff_engine, kind)
    ff_redis.hset(KEYSTORE, mapping={"current_kid": "k2", "secret:k2": SECRET_B})
    _, reply = in_the_same_ms(ff_redis, f"expires_at:{KID}", t.signal)
    assert reply[0] == 1, reply


def test_every_failure_restamps_last_hmac_validation_failed_at(ff_engine, ff_redis):
    seed(ff_redis)
    t = target(ff_engine, "deliver")
    ff_engine.call(t.signal())
    assert stamp(ff_redis, t.c) is None
    raw(ff_redis, t.signal(token=""))
    first = stamp(ff_redis, t.c)
    ff_redis.hset(t.c.keys.core, "last_hmac_validation_failed_at", "1")
    raw(ff_redis, t.signal(token="k1:x"))
    assert first is not None and int(stamp(ff_redis, t.c) or 0) >= int(first)


# -- rotation (§3.6) ------------------------------------------------------------------------------


def rotate(kid: str, secret: str, grace_ms: int = 60_000, partition: int = PARTITION) -> fn.RotateWaitpointSecret:
    return fn.RotateWaitpointSecret(partition=partition, new_kid=kid, new_secret_hex=secret, grace_ms=grace_ms)


def test_rotate_keys_and_argv(ff_engine):
    request = rotate("k2", SECRET_B, 5000, partition=7)
    assert request.keys() == ["ff:sec:{fp:7}:waitpoint_hmac"]
    assert request.argv() == ["k2", SECRET_B, "5000"]


def test_the_first_rotation_of_an_empty_keystore_installs_the_kid(ff_engine, ff_redis):
    assert raw(ff_redis, rotate("k1", SECRET)) == [1, "OK", "rotated", "", "k1", "0"]
    assert hash_of(ff_redis, KEYSTORE) == {"current_kid": "k1", "secret:k1": SECRET}


def test_rotating_keeps_the_previous_kid_for_its_grace(ff_engine, ff_redis):
    seed(ff_redis)
    low = server_ms(ff_redis)
    assert raw(ff_redis, rotate("k2", SECRET_B, 60_000)) == [1, "OK", "rotated", "k1", "k2", "0"]
    high = server_ms(ff_redis)
    store = hash_of(ff_redis, KEYSTORE)
    expires = store.pop(f"expires_at:{KID}")
    assert low + 60_000 <= int(expires) <= high + 60_000
    assert store == {
        "current_kid": "k2",
        "secret:k1": SECRET,
        "secret:k2": SECRET_B,
        "previous_kid": "k1",
        "previous_expires_at": expires,
    }
    assert "expires_at:k2" not in store


def test_tokens_minted_after_a_rotation_use_the_new_kid(ff_engine, ff_redis):
    seed(ff_redis)
    ff_engine.call(rotate("k2", SECRET_B))
    c = claimed(ff_engine)
    ticket = ff_engine.call(pending_request(c, "wp-1", "key"))
    assert ticket.token == sign("wp-1", "key", created_at(ff_redis, c, "wp-1"), secret=SECRET_B, kid="k2")


def test_a_to_b_to_c_keeps_every_kid_valid_inside_its_grace(ff_engine, ff_redis):
    seed(ff_redis, kid="A", secret=SECRET)
    t_a = target(ff_engine, "deliver")
    ff_engine.call(rotate("B", SECRET_B))
    t_b = target(ff_engine, "deliver")
    assert raw(ff_redis, rotate("C", SECRET_C)) == [1, "OK", "rotated", "B", "C", "0"]
    t_c = target(ff_engine, "deliver")
    assert [t.ticket.token.split(":")[0] for t in (t_a, t_b, t_c)] == ["A", "B", "C"]
    for t in (t_a, t_b, t_c):
        assert raw(ff_redis, t.signal())[0] == 1, t.ticket.token
    store = hash_of(ff_redis, KEYSTORE)
    assert {"secret:A", "secret:B", "secret:C", "expires_at:A", "expires_at:B"} <= set(store)
    assert (store["current_kid"], store["previous_kid"]) == ("C", "B")


def test_rotating_to_the_installed_kid_and_secret_is_a_noop(ff_engine, ff_redis):
    seed(ff_redis)
    ff_engine.call(rotate("k2", SECRET_B))
    ff_redis.hset(KEYSTORE, "expires_at:gone", "1")
    before = keyspace(ff_redis)
    assert raw(ff_redis, rotate("k2", SECRET_B)) == [1, "OK", "noop", "k2"]
    assert keyspace(ff_redis) == before  # no GC on the noop path either
    assert ff_engine.call(rotate("k2", SECRET_B)) == fn.Rotation(outcome="noop", new_kid="k2")


def test_rotating_to_the_installed_kid_with_another_secret_answers_rotation_conflict(ff_engine, ff_redis):
    seed(ff_redis)
    before = keyspace(ff_redis)
    assert raw(ff_redis, rotate(KID, SECRET_B)) == [0, "rotation_conflict", KID]
    assert keyspace(ff_redis) == before
    expect_error(ff_engine, rotate(KID, SECRET_B), "rotation_conflict", [KID])


def test_rotating_to_the_installed_kid_without_its_secret_repairs_the_torn_write(ff_engine, ff_redis):
    ff_redis.hset(KEYSTORE, "current_kid", KID)
    assert raw(ff_redis, rotate(KID, SECRET)) == [1, "OK", "noop", KID]
    assert hash_of(ff_redis, KEYSTORE) == {"current_kid": KID, f"secret:{KID}": SECRET}


def test_rotation_forgets_kids_whose_grace_ended(ff_engine, ff_redis):
    seed(ff_redis)
    future = str(server_ms(ff_redis) + 600_000)
    ff_redis.hset(
        KEYSTORE,
        mapping={
            "secret:old1": "11",
            "expires_at:old1": str(server_ms(ff_redis) - 1),
            "secret:old2": "22",
            "expires_at:old2": "junk",
            "secret:old3": "33",
            "expires_at:old3": "0",
            "expires_at:orphan": "-1",
            "secret:live": "44",
            "expires_at:live": future,
        },
    )
    reply = raw(ff_redis, rotate("k2", SECRET_B))
    assert reply == [1, "OK", "rotated", KID, "k2", "4"]
    store = hash_of(ff_redis, KEYSTORE)
    for kid in ("old1", "old2", "old3", "orphan"):
        assert f"secret:{kid}" not in store and f"expires_at:{kid}" not in store, kid
    assert (store["secret:live"], store["expires_at:live"]) == ("44", future)
    assert store[f"secret:{KID}"] == SECRET
    assert ff_engine.call(rotate("k3", SECRET_C)).forgotten_kids == 0


@pytest.mark.single_node  # one server's MULTI with a keyless TIME
def test_a_kid_whose_expiry_is_exactly_now_survives_the_gc(ff_engine, ff_redis):
    seed(ff_redis)
    counter = iter(range(1000))
    set_at, reply = in_the_same_ms(
        ff_redis, "expires_at:old", lambda: rotate(f"n{next(counter)}", SECRET_B), restore={"secret:old": "11"}
    )
    assert reply[:3] == [1, "OK", "rotated"] and reply[5] == "0"
    store = hash_of(ff_redis, KEYSTORE)
    assert (store["secret:old"], store["expires_at:old"]) == ("11", str(set_at))


def test_a_token_of_a_forgotten_kid_answers_invalid_token(ff_engine, ff_redis):
    seed(ff_redis)
    t = target(ff_engine, "deliver")
    ff_engine.call(rotate("k2", SECRET_B, grace_ms=0))
    ff_redis.hset(KEYSTORE, f"expires_at:{KID}", "1")
    ff_engine.call(rotate("k3", SECRET_C))
    assert f"secret:{KID}" not in hash_of(ff_redis, KEYSTORE)
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "invalid_token")


def test_a_zero_grace_ends_the_previous_kid_at_once(ff_engine, ff_redis):
    seed(ff_redis)
    t = target(ff_engine, "deliver")
    low = server_ms(ff_redis)
    ff_engine.call(rotate("k2", SECRET_B, grace_ms=0))
    expires = int(hash_of(ff_redis, KEYSTORE)[f"expires_at:{KID}"])
    assert low <= expires <= server_ms(ff_redis)
    while server_ms(ff_redis) <= expires:
        pass
    expect_rejected(ff_engine, ff_redis, t, t.signal(), "token_expired")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["", SECRET, "0"], "invalid_kid"),
        (["a:b", SECRET, "0"], "invalid_kid"),
        (["", "zz", "x"], "invalid_kid"),
        (["k2", "", "0"], "invalid_secret_hex"),
        (["k2", "abc", "0"], "invalid_secret_hex"),
        (["k2", "0g", "0"], "invalid_secret_hex"),
        (["k2", "a b ", "0"], "invalid_secret_hex"),
        (["k2", "zz", "x"], "invalid_secret_hex"),
        (["k2", SECRET, "x"], "invalid_grace_ms"),
        (["k2", SECRET, ""], "invalid_grace_ms"),
        (["k2", SECRET, "-1"], "invalid_grace_ms"),
        (["k2", SECRET, "1.5"], "invalid_grace_ms"),
        (["k2", SECRET, "nan"], "invalid_grace_ms"),
        (["k2", SECRET, "inf"], "invalid_grace_ms"),
        (["k2", SECRET, "9007199254740992"], "invalid_grace_ms"),
        (["k2", SECRET], "invalid_grace_ms"),
    ],
)
def test_rotate_rejects_malformed_arguments_in_order_and_writes_nothing(ff_engine, ff_redis, argv, code):
    seed(ff_redis)
    before = keyspace(ff_redis)
    assert raw(ff_redis, rotate("k2", SECRET), argv) == [0, code]
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize("secret", ["ABCDEF0123", "00"])
def test_rotate_accepts_any_even_length_hex(ff_engine, ff_redis, secret):
    assert raw(ff_redis, rotate("k2", secret))[:3] == [1, "OK", "rotated"]
    assert hash_of(ff_redis, KEYSTORE)["secret:k2"] == secret


def test_rotate_accepts_the_largest_grace_and_stores_a_decimal_integer_expiry(ff_engine, ff_redis):
    # §3.6 step 3 accepts grace_ms up to 2^53-1 and step 6 writes now+grace as a timestamp, which
    # §0.4 says is a decimal integer string of ms. Lua's tostring (%.14g) gives e.g.
    # "9.0089946586674e+15" for such a sum, which ListWaitpointKids.parse cannot read either.
    seed(ff_redis)
    low = server_ms(ff_redis)
    assert raw(ff_redis, rotate("k2", SECRET_B, 9007199254740991))[:3] == [1, "OK", "rotated"]
    high = server_ms(ff_redis)
    store = hash_of(ff_redis, KEYSTORE)
    assert re.fullmatch(r"[0-9]+", store[f"expires_at:{KID}"]), store[f"expires_at:{KID}"]
    # past 2^53 a Lua number (a double) is only exact to 2 ms
    assert low + 9007199254740991 - 2 <= int(store[f"expires_at:{KID}"]) <= high + 9007199254740991 + 2
    assert store["previous_expires_at"] == store[f"expires_at:{KID}"]


def test_rotation_parses_into_a_typed_outcome(ff_engine, ff_redis):
    seed(ff_redis)
    assert ff_engine.call(rotate("k2", SECRET_B)) == fn.Rotation(
        outcome="rotated", new_kid="k2", previous_kid=KID, forgotten_kids=0
    )


# -- listing kids (§3.7) --------------------------------------------------------------------------


def kids(r: redis.Redis) -> tuple[str, dict[str, str]]:
    reply = raw(r, fn.ListWaitpointKids(partition=PARTITION))
    assert reply[:2] == [1, "OK"]
    current, n, *pairs = reply[2:]
    assert int(n) * 2 == len(pairs)
    return current, dict(zip(pairs[::2], pairs[1::2]))


def test_listing_an_uninitialized_keystore(ff_engine, ff_redis):
    assert raw(ff_redis, fn.ListWaitpointKids(partition=PARTITION)) == [1, "OK", "", "0"]
    assert fn.ListWaitpointKids(partition=PARTITION).argv() == []


def test_listing_shows_the_current_kid_and_every_kid_still_in_grace(ff_engine, ff_redis):
    seed(ff_redis, kid="A")
    ff_engine.call(rotate("B", SECRET_B))
    ff_engine.call(rotate("C", SECRET_C))
    store = hash_of(ff_redis, KEYSTORE)
    assert kids(ff_redis) == ("C", {"A": store["expires_at:A"], "B": store["expires_at:B"]})
    keystore = ff_engine.call(fn.ListWaitpointKids(partition=PARTITION))
    assert keystore == fn.Keystore(
        current_kid="C", verifying={"A": int(store["expires_at:A"]), "B": int(store["expires_at:B"])}
    )


def test_listing_leaves_out_expired_and_invalid_expiries(ff_engine, ff_redis):
    seed(ff_redis, kid="C")
    future = str(server_ms(ff_redis) + 600_000)
    ff_redis.hset(
        KEYSTORE,
        mapping={
            "expires_at:past": str(server_ms(ff_redis) - 1),
            "expires_at:zero": "0",
            "expires_at:junk": "soon",
            "expires_at:live": future,
        },
    )
    assert kids(ff_redis) == ("C", {"live": future})


@pytest.mark.single_node  # one server's MULTI with a keyless TIME
def test_listing_includes_a_kid_whose_expiry_is_exactly_now(ff_engine, ff_redis):
    seed(ff_redis, kid="C")
    set_at, reply = in_the_same_ms(ff_redis, "expires_at:edge", lambda: fn.ListWaitpointKids(partition=PARTITION))
    assert reply == [1, "OK", "C", "1", "edge", str(set_at)]
