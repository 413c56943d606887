"""The error table: every FlowFabric code with its retry class (spec §9) and typed kind."""

import pytest

from ff_celery.engine.core.errors import (
    CODES,
    BugError,
    ConflictError,
    ContentionError,
    ErrorClass,
    ExecutionNotActiveError,
    NotFoundError,
    StateError,
    TransportError,
    ValidationError,
    error_for_code,
)

# Spec §9, typed in independently of the implementation's table.
TERMINAL = [
    "execution_not_found",
    "execution_not_active",
    "stale_lease",
    "lease_expired",
    "lease_revoked",
    "fence_required",
    "partial_fence_triple",
    "invalid_capabilities",
    "invalid_policy_json",
    "invalid_input",
    "invalid_tag_key",
    "max_retries_exhausted",
    "execution_not_terminal",
    "max_replays_exhausted",
    "invalid_blocking_reason",
    "target_not_signalable",
    "payload_too_large",
    "signal_limit_exceeded",
    "invalid_waitpoint_key",
    "invalid_token",
    "stream_closed",
    "stale_owner_cannot_append",
    "retention_limit_exceeded",
    "invalid_lease_for_suspend",
    "resume_condition_not_met",
    "invalid_dependency",
    "execution_already_in_flow",
    "cycle_detected",
    "flow_not_found",
    "execution_not_in_flow",
    "dependency_already_exists",
    "self_referencing_edge",
    "flow_already_terminal",
    "invalid_waitpoint_for_execution",
    "not_runnable",
    "terminal",
    "attempt_not_found",
    "attempt_not_started",
    "execution_not_eligible_for_attempt",
    "replay_not_allowed",
    "unauthorized",
    "budget_not_found",
    "invalid_budget_scope",
    "budget_attach_conflict",
    "budget_override_not_allowed",
    "quota_policy_not_found",
    "quota_attach_conflict",
    "invalid_quota_spec",
    "waitpoint_not_token_bound",
    "invalid_kid",
    "invalid_secret_hex",
    "invalid_grace_ms",
    "rotation_conflict",
]
RETRYABLE = [
    "use_claim_resumed_execution",
    "not_a_resumed_execution",
    "execution_not_leaseable",
    "lease_conflict",
    "invalid_claim_grant",
    "claim_grant_expired",
    "capability_mismatch",
    "no_eligible_execution",
    "waitpoint_not_found",
    "waitpoint_pending_use_buffer_script",
    "stale_graph_revision",
    "rate_limit_exceeded",
    "concurrency_limit_exceeded",
    "invalid_offset",
]
INFORMATIONAL = [
    "no_active_lease",
    "execution_not_eligible",
    "execution_not_in_eligible_set",
    "grant_already_exists",
    "execution_not_reclaimable",
    "execution_not_suspended",
    "already_suspended",
    "waitpoint_closed",
    "duplicate_signal",
    "ok_already_applied",
    "attempt_already_terminal",
    "stream_already_closed",
    "budget_soft_exceeded",
    "waitpoint_already_exists",
    "waitpoint_not_open",
    "waitpoint_not_pending",
    "pending_waitpoint_expired",
    "not_blocked_by_deps",
    "deps_not_satisfied",
]
EXPECTED_CLASSES = {
    **dict.fromkeys(TERMINAL, ErrorClass.TERMINAL),
    **dict.fromkeys(RETRYABLE, ErrorClass.RETRYABLE),
    **dict.fromkeys(INFORMATIONAL, ErrorClass.INFORMATIONAL),
    "active_attempt_exists": ErrorClass.BUG,
    "attempt_not_in_created_state": ErrorClass.BUG,
    "budget_exceeded": ErrorClass.COOPERATIVE,
    "stream_not_found": ErrorClass.EXPECTED,
    "invalid_frame_type": ErrorClass.SOFT_ERROR,
}


#: Codes FlowFabric's Lua returns that ScriptError does not map (they would be parse errors
#: in Rust); the table treats them as terminal, the corrupt summary document as a bug.
LUA_ONLY = {
    **dict.fromkeys(
        [
            "additional_waitpoint_binding_malformed",
            "use_pending_with_extras_unsupported",
            "invalid_keys_missing_hmac",
            "hmac_secret_not_initialized",
            "invalid_secret",
            "missing_token",
            "token_expired",
            "already_member_of_different_flow",
            "invalid_args",
        ],
        ErrorClass.TERMINAL,
    ),
    "corruption": ErrorClass.BUG,
    "invariant_violation": ErrorClass.BUG,
}


def test_the_table_holds_all_91_wire_codes_of_flowfabrics_script_error_and_the_lua_only_ones():
    # ScriptError has 92 variants: 91 wire codes plus Parse (our TransportError).
    assert len(EXPECTED_CLASSES) == 91
    assert set(CODES) == set(EXPECTED_CLASSES) | set(LUA_ONLY)


@pytest.mark.parametrize(("code", "error_class"), sorted({**EXPECTED_CLASSES, **LUA_ONLY}.items()))
def test_each_code_carries_flowfabrics_retry_class(code, error_class):
    assert CODES[code].error_class is error_class
    assert error_for_code(code, []).error_class is error_class


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("execution_not_found", NotFoundError),
        ("flow_not_found", NotFoundError),
        ("invalid_input", ValidationError),
        ("capability_mismatch", ValidationError),
        ("invalid_token", ValidationError),
        ("lease_conflict", ContentionError),
        ("execution_not_eligible", ContentionError),
        ("cycle_detected", ConflictError),
        ("active_attempt_exists", ConflictError),
        ("stale_lease", StateError),
        ("budget_exceeded", StateError),
        ("grant_already_exists", StateError),
        ("attempt_not_in_created_state", BugError),
    ],
)
def test_codes_raise_as_the_kind_flowfabric_maps_them_to(code, kind):
    assert isinstance(error_for_code(code, []), kind)


def test_not_found_names_the_missing_entity():
    assert error_for_code("budget_not_found", []).entity == "budget"


def test_the_lua_detail_payload_is_preserved():
    error = error_for_code("capability_mismatch", ["cuda,gpu"], function="ff_issue_claim_grant", execution_id="e")
    assert error.details == ["cuda,gpu"]
    assert "cuda,gpu" in str(error) and "ff_issue_claim_grant" in str(error)


def test_execution_not_active_exposes_its_four_reconciliation_slots():
    error = error_for_code("execution_not_active", ["success", "3", "terminal", "att-1"])
    assert isinstance(error, ExecutionNotActiveError)
    assert (error.terminal_outcome, error.lease_epoch, error.lifecycle_phase, error.attempt_id) == (
        "success",
        "3",
        "terminal",
        "att-1",
    )


def test_an_unknown_code_is_a_terminal_transport_error():
    error = error_for_code("no_such_code", [])
    assert isinstance(error, TransportError)
    assert error.error_class is ErrorClass.TERMINAL
    assert not error.is_retryable


def test_a_code_carrying_an_id_after_a_colon_names_the_id_as_its_first_detail():
    error = error_for_code("already_member_of_different_flow:flow-1", [])
    assert isinstance(error, ConflictError)
    assert (error.code, error.details) == ("already_member_of_different_flow", ["flow-1"])
