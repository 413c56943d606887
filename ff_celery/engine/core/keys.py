"""Every Valkey key template ff_celery touches, in one place.

FlowFabric's templates come first; execution-scoped keys embed the execution id, which
itself begins with the ``{fp:N}`` tag, so they carry the tag twice. The few keys that are
ff_celery's own additions (wake-up channels, leader lock, task aliases) are at the end; they
are outside FlowFabric's contract and nothing FlowFabric runs reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.partitions import PARTITION_CONFIG_KEY, budget_tag, flow_tag, quota_tag  # noqa: F401

LANE_REGISTRY_KEY = "ff:idx:lanes"
DAG_COMPLETIONS_CHANNEL = "ff:dag:completions"
BLOCKED_SUFFIXES = ("dependencies", "budget", "quota", "route", "operator")
#: The per-lane index of each state an execution of the lane can be in (besides blocked).
LANE_STATES = ("eligible", "delayed", "active", "suspended", "terminal")


@dataclass(frozen=True)
class ExecKeys:
    """Keys of one execution (all on its ``{fp:N}`` partition)."""

    execution_id: ExecutionId

    def __post_init__(self) -> None:
        if not isinstance(self.execution_id, ExecutionId):  # a plain string: validate and keep its tag
            object.__setattr__(self, "execution_id", ExecutionId(self.execution_id))

    @property
    def tag(self) -> str:
        return self.execution_id.tag

    def _exec(self, suffix: str) -> str:
        return f"ff:exec:{self.tag}:{self.execution_id}:{suffix}"

    @property
    def core(self) -> str:
        return self._exec("core")

    @property
    def payload(self) -> str:
        return self._exec("payload")

    @property
    def result(self) -> str:
        return self._exec("result")

    @property
    def policy(self) -> str:
        return self._exec("policy")

    @property
    def tags(self) -> str:
        return self._exec("tags")

    @property
    def lease_current(self) -> str:
        return self._exec("lease:current")

    @property
    def lease_history(self) -> str:
        return self._exec("lease:history")

    @property
    def claim_grant(self) -> str:
        return self._exec("claim_grant")

    @property
    def attempts(self) -> str:
        return self._exec("attempts")

    @property
    def suspension_current(self) -> str:
        return self._exec("suspension:current")

    @property
    def satisfied_set(self) -> str:
        """Composite-condition satisfier tokens of the current suspension."""
        return self._exec("suspension:current:satisfied_set")

    @property
    def satisfied_signals(self) -> str:
        return self._exec("suspension:current:satisfied_set:signals")

    @property
    def member_map(self) -> str:
        return self._exec("suspension:current:member_map")

    def suspend_dedup(self, idempotency_key: str) -> str:
        return f"ff:dedup:suspend:{self.tag}:{self.execution_id}:{idempotency_key}"

    @property
    def waitpoints(self) -> str:
        return self._exec("waitpoints")

    @property
    def signals(self) -> str:
        return self._exec("signals")

    def attempt(self, attempt_index: int | str) -> str:
        return f"ff:attempt:{self.tag}:{self.execution_id}:{attempt_index}"

    def attempt_usage(self, attempt_index: int | str) -> str:
        return self.attempt(attempt_index) + ":usage"

    def attempt_policy(self, attempt_index: int | str) -> str:
        return self.attempt(attempt_index) + ":policy"

    def stream(self, attempt_index: int | str) -> str:
        return f"ff:stream:{self.tag}:{self.execution_id}:{attempt_index}"

    def stream_meta(self, attempt_index: int | str) -> str:
        return self.stream(attempt_index) + ":meta"

    def waitpoint(self, waitpoint_id: str) -> str:
        return PartitionKeys(self.execution_id.partition).waitpoint(waitpoint_id)

    def waitpoint_condition(self, waitpoint_id: str) -> str:
        return self.waitpoint(waitpoint_id) + ":condition"

    def waitpoint_signals(self, waitpoint_id: str) -> str:
        """Per-waitpoint signal log (also the buffer of a pending waitpoint)."""
        return self.waitpoint(waitpoint_id) + ":signals"

    def signal(self, signal_id: str) -> str:
        return f"ff:signal:{self.tag}:{signal_id}"

    def signal_payload(self, signal_id: str) -> str:
        return self.signal(signal_id) + ":payload"

    def signal_dedup(self, waitpoint_id: str, idempotency_key: str) -> str:
        return f"ff:sigdedup:{self.tag}:{waitpoint_id}:{idempotency_key}"

    def stream_summary(self, attempt_index: int | str) -> str:
        return self.attempt(attempt_index) + ":summary"

    @property
    def deps_meta(self) -> str:
        return self._exec("deps:meta")

    @property
    def deps_unresolved(self) -> str:
        return self._exec("deps:unresolved")

    @property
    def deps_all_edges(self) -> str:
        return self._exec("deps:all_edges")

    def dep(self, edge_id: str) -> str:
        return self._exec(f"dep:{edge_id}")

    def every_key(
        self, attempt_count: int, waitpoint_ids: Iterable[str], signal_ids: Iterable[str], edge_ids: Iterable[str]
    ) -> list[str]:
        """Every key of the execution, as FlowFabric's retention trimmer deletes them (core
        and policy last)."""
        keys = [self.payload, self.result, self.tags, self.lease_current, self.lease_history, self.claim_grant]
        keys += [self.attempts, self.suspension_current, self.satisfied_set, self.satisfied_signals, self.member_map]
        for index in range(attempt_count):
            keys += [self.attempt(index), self.attempt_usage(index), self.attempt_policy(index)]
            keys += [self.stream(index), self.stream_meta(index), self.stream_summary(index)]
        keys += [self.deps_meta, self.deps_unresolved, self.deps_all_edges, *(self.dep(e) for e in edge_ids)]
        for waitpoint_id in waitpoint_ids:
            keys += [self.waitpoint(waitpoint_id), self.waitpoint_condition(waitpoint_id)]
            keys.append(self.waitpoint_signals(waitpoint_id))
        keys.append(self.waitpoints)
        for signal_id in signal_ids:
            keys += [self.signal(signal_id), self.signal_payload(signal_id)]
        keys += [self.signals, self.core, self.policy]
        return keys


@dataclass(frozen=True)
class PartitionKeys:
    """Index keys of one ``{fp:N}`` partition."""

    partition: int

    @property
    def tag(self) -> str:
        return flow_tag(self.partition)

    def lane(self, lane: str, suffix: str) -> str:
        return f"ff:idx:{self.tag}:lane:{lane}:{suffix}"

    def eligible(self, lane: str) -> str:
        return self.lane(lane, "eligible")

    def delayed(self, lane: str) -> str:
        return self.lane(lane, "delayed")

    def active(self, lane: str) -> str:
        return self.lane(lane, "active")

    def terminal(self, lane: str) -> str:
        return self.lane(lane, "terminal")

    def suspended(self, lane: str) -> str:
        return self.lane(lane, "suspended")

    def blocked(self, lane: str, reason: str) -> str:
        return self.lane(lane, f"blocked:{reason}")

    def _index(self, name: str) -> str:
        return f"ff:idx:{self.tag}:{name}"

    @property
    def lease_expiry(self) -> str:
        return self._index("lease_expiry")

    @property
    def attempt_timeout(self) -> str:
        return self._index("attempt_timeout")

    @property
    def execution_deadline(self) -> str:
        return self._index("execution_deadline")

    @property
    def suspension_timeout(self) -> str:
        return self._index("suspension_timeout")

    @property
    def pending_waitpoint_expiry(self) -> str:
        return self._index("pending_waitpoint_expiry")

    @property
    def all_executions(self) -> str:
        return self._index("all_executions")

    def worker_leases(self, worker_instance_id: str) -> str:
        return self._index(f"worker:{worker_instance_id}:leases")

    @property
    def waitpoint_hmac(self) -> str:
        """The HMAC keystore (one identical copy per flow partition)."""
        return f"ff:sec:{self.tag}:waitpoint_hmac"

    def waitpoint(self, waitpoint_id: str) -> str:
        return f"ff:wp:{self.tag}:{waitpoint_id}"

    @property
    def signal_delivery(self) -> str:
        """Partition-wide feed of delivered signals."""
        return f"ff:part:{self.tag}:signal_delivery"

    @property
    def noop(self) -> str:
        """Placeholder for an unused KEYS slot; never read or written."""
        return f"ff:noop:{self.tag}"

    def idempotency(self, namespace: str, idempotency_key: str) -> str:
        return f"ff:idem:{self.tag}:{namespace}:{idempotency_key}"

    @property
    def flow_index(self) -> str:
        return self._index("flow_index")

    @property
    def cancel_backlog(self) -> str:
        """Flows owing member cancels, scored by when the reconciler may take them."""
        return self._index("cancel_backlog")

    @property
    def pending_cancel_groups(self) -> str:
        """``<flow_id>|<downstream id>`` of edge groups whose siblings are owed a cancel."""
        return self._index("pending_cancel_groups")


@dataclass(frozen=True)
class FlowKeys:
    """Keys of one flow, on its ``{fp:N}`` partition (which its members share)."""

    flow_id: str
    partition: int

    @property
    def tag(self) -> str:
        return flow_tag(self.partition)

    def _flow(self, suffix: str) -> str:
        return f"ff:flow:{self.tag}:{self.flow_id}:{suffix}"

    @property
    def core(self) -> str:
        return self._flow("core")

    @property
    def members(self) -> str:
        return self._flow("members")

    def edge(self, edge_id: str) -> str:
        return self._flow(f"edge:{edge_id}")

    def outgoing(self, upstream_id: str) -> str:
        """Edge ids leaving ``upstream_id``."""
        return self._flow(f"out:{upstream_id}")

    def incoming(self, downstream_id: str) -> str:
        """Edge ids entering ``downstream_id``."""
        return self._flow(f"in:{downstream_id}")

    def edge_group(self, downstream_id: str) -> str:
        """The join policy and counters of ``downstream_id``'s inbound edges."""
        return self._flow(f"edgegroup:{downstream_id}")

    def grant(self, edge_id: str) -> str:
        """Passed to ``ff_stage_dependency_edge``; never read or written."""
        return self._flow(f"grant:{edge_id}")

    @property
    def pending_cancels(self) -> str:
        return self._flow("pending_cancels")

    @property
    def summary(self) -> str:
        return self._flow("summary")

    @property
    def tags(self) -> str:
        return self._flow("tags")


@dataclass(frozen=True)
class BudgetKeys:
    """Keys of one budget (on its ``{b:M}`` partition)."""

    budget_id: str
    partition: int

    @property
    def tag(self) -> str:
        return budget_tag(self.partition)

    @property
    def definition(self) -> str:
        return f"ff:budget:{self.tag}:{self.budget_id}"

    @property
    def limits(self) -> str:
        return self.definition + ":limits"

    @property
    def usage(self) -> str:
        return self.definition + ":usage"

    def by_execution(self, execution_id: str) -> str:
        """Spend attributed to one execution."""
        return self.definition + f":by_exec:{execution_id}"

    @property
    def by_execution_index(self) -> str:
        return self.definition + ":by_exec:index"

    @property
    def resets(self) -> str:
        return budget_resets_key(self.partition)

    @property
    def policies(self) -> str:
        return budget_policies_key(self.partition)

    def usage_dedup(self, dedup_id: str) -> str:
        return f"ff:usagededup:{self.tag}:{dedup_id}"


@dataclass(frozen=True)
class QuotaKeys:
    """Keys of one quota policy (on its ``{q:K}`` partition)."""

    quota_policy_id: str
    partition: int

    @property
    def tag(self) -> str:
        return quota_tag(self.partition)

    @property
    def definition(self) -> str:
        return f"ff:quota:{self.tag}:{self.quota_policy_id}"

    def window(self, dimension: str = "default") -> str:
        """Sliding admission window; FlowFabric's scheduler admits on ``default``."""
        return self.definition + f":window:{dimension}"

    @property
    def concurrency(self) -> str:
        return self.definition + ":concurrency"

    def admitted(self, execution_id: str) -> str:
        return self.definition + f":admitted:{execution_id}"

    @property
    def admitted_set(self) -> str:
        return self.definition + ":admitted_set"

    @property
    def policies(self) -> str:
        return quota_policies_key(self.partition)


def budget_resets_key(partition: int) -> str:
    """Budgets of a ``{b:M}`` partition by next reset time."""
    return f"ff:idx:{budget_tag(partition)}:budget_resets"


def budget_policies_key(partition: int) -> str:
    return f"ff:idx:{budget_tag(partition)}:budget_policies"


def quota_policies_key(partition: int) -> str:
    return f"ff:idx:{quota_tag(partition)}:quota_policies"


def worker_alive_key(namespace: str, worker_instance_id: str) -> str:
    return f"ff:worker:{namespace}:{worker_instance_id}:alive"


def worker_caps_key(namespace: str, worker_instance_id: str) -> str:
    return f"ff:worker:{namespace}:{worker_instance_id}:caps"


def worker_index_key(namespace: str) -> str:
    return f"ff:idx:{namespace}:workers"


# -- ff_celery's own keys (outside FlowFabric's contract) ---------------------------------

#: Leader lock of the background scanners.
SCANNER_LEADER_KEY = "ffc:leader:scanners"
#: Lanes with executions under budgets or quotas: claims there go through admission.
ADMISSION_LANES_KEY = "ffc:admission:lanes"
#: Partitions where ff_celery put executions off their lane's own partition (flow members),
#: scored by when it last did (a zset; see :mod:`ff_celery.engine.core.work_index`).
PARTITIONS_IN_USE_KEY = "ffc:idx:partitions"
#: Tags ff_celery adds at submit, so retention can remove the keys that name the execution
#: from outside its own (its alias and FlowFabric's idempotency key).
ALIAS_TAG, IDEMPOTENCY_KEY_TAG = "ffc.alias", "ffc.idempotency_key"


def retention_due_key(partition: int) -> str:
    """Terminal executions of the partition by the time their retention ends (a zset)."""
    return f"ffc:retention:{flow_tag(partition)}:due"


def retention_cursor_key(partition: int) -> str:
    """Per lane of the partition: the completion time up to which its terminal executions
    are in :func:`retention_due_key` (a hash)."""
    return f"ffc:retention:{flow_tag(partition)}:cursor"


def wake_channel(lane: str) -> str:
    """Pub/Sub channel a publisher pings when work becomes eligible on ``lane``."""
    return f"ffc:wake:{lane}"


#: A wake-up's data when it names no execution (see ``Claimer.note_wake``).
WAKE_ANY = "1"


def alias_key(namespace: str, alias: str) -> str:
    """Maps an external id (a Celery task id) to its execution id."""
    return f"ffc:alias:{namespace}:{alias}"


def next_attempt_payload_key(execution_id: str) -> str:
    """ff_celery's replacement payload for the execution's next attempts (a retry with new
    arguments); in the execution's hash slot."""
    return f"ffc:next-payload:{execution_id}"


#: The payload of a completion notice on a :func:`done_channel`.
DONE_NOTICE = b"1"


def done_channel(namespace: str, alias: str) -> str:
    """Pub/Sub channel announcing that the execution behind ``alias`` has an outcome."""
    return f"ffc:done:{namespace}:{alias}"


def chord_failure_key(namespace: str, body_alias: str) -> str:
    """Set by the first header task of a chord that fails for good (the chord's errbacks run once)."""
    return f"ffc:chord-failed:{namespace}:{body_alias}"
