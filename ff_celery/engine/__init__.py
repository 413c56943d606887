"""The FlowFabric engine: ff_celery's client of FlowFabric's Valkey functions. It knows nothing
of Celery, and this module is its front door: the Celery layer, the CLI and the tools import
engine names from here only (``from ff_celery.engine import Engine, ClaimedTask``), which
``tests/test_structure.py`` enforces.

Inside, three layers each import only those below them:

- :mod:`ff_celery.engine.core`: the :class:`Engine` handle, connections and the function
  library, keys and ids, policies, errors, notices;
- :mod:`ff_celery.engine.work`: claiming and holding executions (claimed task, claimer, lease
  renewal) and what an attempt does while it runs (budgets and quotas, signals, streams);
- :mod:`ff_celery.engine.duties`: scanners, retention, inspection and the metrics exporter;

and :mod:`ff_celery.engine.functions`, one typed call per FlowFabric function, mirrors the Lua
library in ``lua/``.
"""

from ff_celery.engine.core.connection import (
    CONNECT_TIMEOUT_S,
    cluster_aware,
    connect,
    packed_by_hiredis,
    redis_url,
    refresh_slot_map,
)
from ff_celery.engine.core.decoding import optional_integer
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import (
    CODES,
    LEASE_LOST_CODES,
    BugError,
    ConflictError,
    ContentionError,
    EngineError,
    EngineTimeoutError,
    ErrorClass,
    ExecutionNotActiveError,
    Kind,
    NotFoundError,
    ResourceExhaustedError,
    StateError,
    TransportError,
    UnavailableError,
    ValidationError,
    error_for_code,
    retry_transport_for,
)
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.executor import RETRYABLE_REDIS_ERRORS
from ff_celery.engine.core.flows import FlowRef, FlowView
from ff_celery.engine.core.ids import ExecutionId, budget_id_for, canonical_uuid, quota_id_for
from ff_celery.engine.core.keys import DONE_NOTICE, chord_failure_key, done_channel, wake_channel
from ff_celery.engine.core.library import ensure_library, library_source, library_version, loaded_version
from ff_celery.engine.core.metrics import metric
from ff_celery.engine.core.new_execution import ExecutionSpec, NewExecution
from ff_celery.engine.core.notices import Listener
from ff_celery.engine.core.policy import (
    KEEP_FOREVER_MS,
    UNLIMITED_RETRIES,
    ExecutionPolicy,
    ExponentialBackoff,
    FixedBackoff,
    RetryPolicy,
)
from ff_celery.engine.core.snapshot import ExecutionSnapshot
from ff_celery.engine.core.work_index import read_plan
from ff_celery.engine.duties.exporter import (
    DEFAULT_STATE_INTERVAL_S,
    MULTIPROCESS_DIR_VARIABLE,
    EngineStateCollector,
    Exporter,
    multiprocess_mode,
    registry_for,
    serve_exporter,
)
from ff_celery.engine.duties.flows import FlowDuties
from ff_celery.engine.duties.inspection import (
    STATE_INDEXES,
    ExecutionReport,
    ExecutionSummary,
    current_waitpoints,
    describe_execution,
    held_executions,
    lane_states,
    lease_history,
    list_executions,
    resolve_flow,
    resolve_target,
)
from ff_celery.engine.duties.scanners import EngineScanners, ScannerSettings
from ff_celery.engine.functions import (
    Appended,
    BlockExecutionForAdmission,
    CloseWaitpoint,
    Created,
    FailOutcome,
    Frame,
    Lease,
    ResumeCondition,
    SignalOutcome,
    StreamMode,
    StreamRead,
    TimeoutBehavior,
    WaitpointTicket,
)
from ff_celery.engine.work.budgets import (
    Admission,
    BudgetStatus,
    QuotaPolicy,
    budget_status,
    budget_statuses,
    create_budget,
    create_quota,
    quota_policies,
    reset_budget,
    set_budget_limits,
)
from ff_celery.engine.work.claimed_task import LEASE_GONE_CODES, ClaimedTask, lease_given_up
from ff_celery.engine.work.claimer import Claimer
from ff_celery.engine.work.lane_shards import shard_lanes
from ff_celery.engine.work.registry import shared_engine, shared_renewer
from ff_celery.engine.work.renewal import LeaseRenewer
from ff_celery.engine.work.signals import (
    DEFAULT_GRACE_MS,
    MAX_SIGNAL_PAYLOAD_BYTES,
    SECRET_ENV,
    ReceivedSignal,
    WaitpointRecord,
    deliver_signal,
    read_signals,
    read_waitpoint,
    resume_execution,
    resume_signals,
    rotate_waitpoint_secret,
    seed_waitpoint_secret,
    text_encoding,
    waitpoint_kids,
)
from ff_celery.engine.work.streams import follow_execution, read_frames

__all__ = [
    "CODES",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_GRACE_MS",
    "DEFAULT_STATE_INTERVAL_S",
    "DONE_NOTICE",
    "KEEP_FOREVER_MS",
    "LEASE_GONE_CODES",
    "LEASE_LOST_CODES",
    "MAX_SIGNAL_PAYLOAD_BYTES",
    "MULTIPROCESS_DIR_VARIABLE",
    "RETRYABLE_REDIS_ERRORS",
    "SECRET_ENV",
    "STATE_INDEXES",
    "UNLIMITED_RETRIES",
    "Admission",
    "Appended",
    "BlockExecutionForAdmission",
    "BudgetStatus",
    "BugError",
    "ClaimedTask",
    "Claimer",
    "CloseWaitpoint",
    "ConflictError",
    "ContentionError",
    "CoreField",
    "Created",
    "Engine",
    "EngineError",
    "EngineScanners",
    "EngineStateCollector",
    "EngineTimeoutError",
    "ErrorClass",
    "ExecutionId",
    "ExecutionNotActiveError",
    "ExecutionPolicy",
    "ExecutionReport",
    "ExecutionSnapshot",
    "ExecutionSpec",
    "ExecutionSummary",
    "ExponentialBackoff",
    "Exporter",
    "FailOutcome",
    "FixedBackoff",
    "FlowDuties",
    "FlowRef",
    "FlowView",
    "Frame",
    "Kind",
    "Lease",
    "LeaseRenewer",
    "Listener",
    "NewExecution",
    "NotFoundError",
    "QuotaPolicy",
    "ReceivedSignal",
    "ResourceExhaustedError",
    "ResumeCondition",
    "RetryPolicy",
    "ScannerSettings",
    "SignalOutcome",
    "StateError",
    "StreamMode",
    "StreamRead",
    "TimeoutBehavior",
    "TransportError",
    "UnavailableError",
    "ValidationError",
    "WaitpointRecord",
    "WaitpointTicket",
    "budget_id_for",
    "budget_status",
    "budget_statuses",
    "canonical_uuid",
    "chord_failure_key",
    "cluster_aware",
    "connect",
    "create_budget",
    "create_quota",
    "current_waitpoints",
    "deliver_signal",
    "describe_execution",
    "done_channel",
    "ensure_library",
    "error_for_code",
    "follow_execution",
    "held_executions",
    "lane_states",
    "lease_given_up",
    "lease_history",
    "library_source",
    "library_version",
    "list_executions",
    "loaded_version",
    "metric",
    "multiprocess_mode",
    "optional_integer",
    "packed_by_hiredis",
    "quota_id_for",
    "quota_policies",
    "read_frames",
    "read_plan",
    "read_signals",
    "read_waitpoint",
    "redis_url",
    "refresh_slot_map",
    "registry_for",
    "reset_budget",
    "resolve_flow",
    "resolve_target",
    "resume_execution",
    "resume_signals",
    "retry_transport_for",
    "rotate_waitpoint_secret",
    "seed_waitpoint_secret",
    "serve_exporter",
    "set_budget_limits",
    "shard_lanes",
    "shared_engine",
    "shared_renewer",
    "text_encoding",
    "waitpoint_kids",
    "wake_channel",
]
