"""Key templates and identifiers (spec §1.1, §2)."""

import pytest

from ff_celery.engine.core.errors import ValidationError
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys, alias_key, wake_channel

EID = "{fp:7}:550e8400-e29b-41d4-a716-446655440000"


def test_execution_keys_carry_the_hash_tag_twice():
    keys = ExecKeys(ExecutionId(EID))
    assert keys.core == "ff:exec:{fp:7}:{fp:7}:550e8400-e29b-41d4-a716-446655440000:core"
    assert keys.lease_current == f"ff:exec:{{fp:7}}:{EID}:lease:current"
    assert keys.lease_history == f"ff:exec:{{fp:7}}:{EID}:lease:history"
    assert keys.claim_grant == f"ff:exec:{{fp:7}}:{EID}:claim_grant"
    assert keys.attempts == f"ff:exec:{{fp:7}}:{EID}:attempts"
    assert keys.attempt(3) == f"ff:attempt:{{fp:7}}:{EID}:3"
    assert keys.attempt_usage(3) == f"ff:attempt:{{fp:7}}:{EID}:3:usage"
    assert keys.attempt_policy(3) == f"ff:attempt:{{fp:7}}:{EID}:3:policy"
    assert keys.stream_meta(3) == f"ff:stream:{{fp:7}}:{EID}:3:meta"
    assert keys.waitpoint("w") == "ff:wp:{fp:7}:w"


def test_partition_index_keys_carry_the_tag_once_and_the_lane_verbatim():
    index = PartitionKeys(7)
    assert index.eligible("my lane") == "ff:idx:{fp:7}:lane:my lane:eligible"
    assert index.blocked("default", "budget") == "ff:idx:{fp:7}:lane:default:blocked:budget"
    assert index.lease_expiry == "ff:idx:{fp:7}:lease_expiry"
    assert index.worker_leases("w-1") == "ff:idx:{fp:7}:worker:w-1:leases"
    assert index.attempt_timeout == "ff:idx:{fp:7}:attempt_timeout"
    assert index.execution_deadline == "ff:idx:{fp:7}:execution_deadline"
    assert index.all_executions == "ff:idx:{fp:7}:all_executions"
    assert index.noop == "ff:noop:{fp:7}"
    assert index.idempotency("ns", "k") == "ff:idem:{fp:7}:ns:k"
    assert index.waitpoint_hmac == "ff:sec:{fp:7}:waitpoint_hmac"


def test_ff_celery_keys_stay_outside_flowfabrics_namespace():
    assert wake_channel("default") == "ffc:wake:default"
    assert alias_key("ns", "task-1") == "ffc:alias:ns:task-1"


def test_execution_id_exposes_its_partition_and_uuid():
    eid = ExecutionId(EID)
    assert (eid.partition, eid.tag, eid.uuid) == (7, "{fp:7}", "550e8400-e29b-41d4-a716-446655440000")
    assert ExecutionId.mint(42).startswith("{fp:42}:")


@pytest.mark.parametrize(
    "bad",
    [
        "550e8400-e29b-41d4-a716-446655440000",
        "{fp:x}:550e8400-e29b-41d4-a716-446655440000",
        "{fp:70000}:550e8400-e29b-41d4-a716-446655440000",
        "{fp:07}:550e8400-e29b-41d4-a716-446655440000",
        "{fp:7}:550E8400-E29B-41D4-A716-446655440000",
        "{fp:7}:not-a-uuid",
        "{fp:7}",
        "{fp:7}:550e8400-e29b-41d4-a716-446655440000 ",
        "{fp:7}:550e8400e29b41d4a716446655440000",
        "{fp:7}:{550e8400-e29b-41d4-a716-446655440000}",
        "{fp:\u0667}:550e8400-e29b-41d4-a716-446655440000",  # an Arabic-Indic seven
    ],
)
def test_malformed_execution_ids_are_rejected_with_a_validation_error(bad):
    with pytest.raises(ValidationError) as raised:
        ExecutionId(bad)
    assert raised.value.code == "invalid_input"
    assert bad in str(raised.value)
