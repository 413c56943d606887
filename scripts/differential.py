"""Differential checker: FlowFabric's reference ``flowfabric`` library against ours.

Two fresh embedded servers (the same server binary) each get one library by ``FUNCTION LOAD
REPLACE``: the reference text from ``--reference`` on one, ours (``library_source()``, or the
file given with ``--ours``) on the other. The same scripted sequence of FCALLs (same KEYS and
ARGV, fixed ids; ``ff:config:partitions`` written on both first, as ff_celery's engine does)
runs against both; after every step the replies, the messages each server
published on ``ff:dag:completions`` during the step, and the whole keyspace are compared.

Server time differs between the two servers, so values are normalized before comparison
(disable with ``--no-normalize``): a 13-digit millisecond timestamp within a day of now becomes
``<ts>`` (also inside longer strings and as a sorted-set score), a stream entry id ``<sid>``,
and completion messages are compared as parsed JSON, order-insensitively within a step. Fields
and keys that are documented additions of ff_celery are left out (:data:`IGNORED_HASH_FIELDS`,
:data:`IGNORED_KEY_PREFIXES`, :data:`IGNORED_REPLIES`).

    # the reference: crates/ff-script/src/flowfabric.lua of a FlowFabric checkout
    git -C FlowFabric show HEAD:crates/ff-script/src/flowfabric.lua > /tmp/ff_reference.lua
    .venv/bin/python scripts/differential.py --reference /tmp/ff_reference.lua [--scenario flow]
    # self-check of the checker: the reference on both sides must give 28/28
    .venv/bin/python scripts/differential.py --reference /tmp/ff_reference.lua --ours /tmp/ff_reference.lua

Prints ``step NN <functions> MATCH|DIFF`` per step (with a readable diff for a mismatch) and
``matched X/Y steps``; the exit code is 0 iff every step matched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from ff_celery.devtools.devserver import DevServer, find_server_binary
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import DAG_COMPLETIONS_CHANNEL, ExecKeys, PartitionKeys
from ff_celery.engine.core.partitions import PARTITION_CONFIG_KEY, PartitionConfig, flow_tag
from ff_celery.engine.functions.base import Fcall, Fence
from ff_celery.engine.functions.execution import (
    CancelExecution,
    ClaimExecution,
    CompleteExecution,
    CreateExecution,
    FailExecution,
)
from ff_celery.engine.functions.scheduling import IssueClaimGrant

# -- what is deliberately not compared (documented additions of ff_celery) ----------------------

#: (key pattern, field prefix): hash fields of ours that FlowFabric does not have.
IGNORED_HASH_FIELDS: tuple[tuple[str, str], ...] = (
    (r"^ff:exec:.*:core$", "ffc_"),  # exec_core bookkeeping fields
    (r"^ff:wp:[^:]*:[^:]*$", "ffc_"),  # waitpoint signal counters (ffc_signals, ffc_signal_bytes)
    (r":tags$", "ffc."),  # ffc.alias / ffc.idempotency_key tags (execution and flow tags)
)
#: Keys of ff_celery's own (keys.py: outside FlowFabric's contract).
IGNORED_KEY_PREFIXES: tuple[str, ...] = ("ffc:",)
#: Functions whose reply is ours by design (``ff_version`` answers ``ff_celery-N``).
IGNORED_REPLIES: frozenset[str] = frozenset({"ff_version"})
#: Functions whose reply lists SMEMBERS output from this index on (order not part of the contract).
UNORDERED_REPLY_TAIL: dict[str, int] = {"ff_cancel_flow": 3}

DAY_MS = 86_400_000
TIMESTAMP = re.compile(r"(?<![\d.])(\d{13})(-\d+)?(?:\.\d+)?(?![\d.])")
LUA_LINE = re.compile(r"(user_function|user_script|script):\d+:")
SHOWN_CHARS = 400

# -- scenario model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One FCALL, sent identically to both servers."""

    function: str
    keys: list[str]
    argv: list[str | bytes]

    @classmethod
    def of(cls, typed: Fcall[Any]) -> Call:
        """The KEYS and ARGV a typed wrapper of ff_celery builds."""
        return cls(typed.function, typed.keys(), typed.argv())


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    calls: list[Call]

    @property
    def label(self) -> str:
        names: list[str] = []
        for call in self.calls:
            if call.function not in names:
                names.append(call.function)
        return "+".join(names)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def fixed_uuid(name: str) -> str:
    """A stable UUID per name, so both servers (and every run) see the same ids."""
    return str(uuid.uuid5(uuid.UUID("5b2f6c1e-8d4a-4f3b-9e7a-0c1d2e3f4a5b"), name))


@dataclass
class FlowScenario:
    """Flow F with members A, B, C, D: A→B (data passing), B→C, and D behind an any_of group
    {A→D, C→D} with cancel_remaining. A succeeds, B fails, C is skipped, the flow is cancelled."""

    flow_id: str = field(default_factory=lambda: fixed_uuid("flow-F"))
    lane: str = "default"
    namespace: str = "diff"
    worker_id: str = "diff-worker"
    worker_instance_id: str = "diff-worker-1"

    def __post_init__(self) -> None:
        self.partition = PartitionConfig().flow_partition(self.flow_id)
        self.tag = flow_tag(self.partition)
        self.index = PartitionKeys(self.partition)
        self.ids = {name: ExecutionId.mint(self.partition, fixed_uuid(f"exec-{name}")) for name in "ABCD"}
        self.edges = {pair: fixed_uuid(f"edge-{pair}") for pair in ("AB", "BC", "CA", "AD", "CD")}

    # flow keys (spec §1.5)
    def flow_key(self, suffix: str) -> str:
        return f"ff:flow:{self.tag}:{self.flow_id}:{suffix}"

    @property
    def flow_core(self) -> str:
        return self.flow_key("core")

    @property
    def members(self) -> str:
        return self.flow_key("members")

    @property
    def flow_index(self) -> str:
        return f"ff:idx:{self.tag}:flow_index"

    @property
    def pending_cancel_groups(self) -> str:
        return f"ff:idx:{self.tag}:pending_cancel_groups"

    def x(self, name: str) -> ExecKeys:
        return ExecKeys(self.ids[name])

    # flow functions (spec §8.2), built here from the spec
    def create_flow(self) -> Call:
        keys = [self.flow_core, self.members, self.flow_index]
        return Call("ff_create_flow", keys, [self.flow_id, "dag", self.namespace, str(now_ms())])

    def add_member(self, name: str) -> Call:
        keys = [self.flow_core, self.members, self.flow_index, self.x(name).core]
        return Call("ff_add_execution_to_flow", keys, [self.flow_id, self.ids[name], str(now_ms())])

    def stage(self, pair: str, revision: int, data_passing_ref: str = "") -> Call:
        up, down, edge = self.ids[pair[0]], self.ids[pair[1]], self.edges[pair]
        keys = [
            self.flow_core,
            self.members,
            self.flow_key(f"edge:{edge}"),
            self.flow_key(f"out:{up}"),
            self.flow_key(f"in:{down}"),
            self.flow_key(f"grant:{edge}"),
        ]
        argv = [self.flow_id, edge, up, down, "success_only", data_passing_ref, str(revision), str(now_ms())]
        return Call("ff_stage_dependency_edge", keys, list(argv))

    def edge_group(self, name: str) -> str:
        return self.flow_key(f"edgegroup:{self.ids[name]}")

    def set_group_policy(self, name: str, variant: str, on_satisfied: str, k: int = 0) -> Call:
        keys = [self.flow_core, self.edge_group(name)]
        return Call("ff_set_edge_group_policy", keys, [variant, on_satisfied, str(k), str(now_ms())])

    def apply(self, pair: str, revision: int, data_passing_ref: str = "") -> Call:
        child, edge = self.x(pair[1]), self.edges[pair]
        keys = [
            child.core,
            child.deps_meta,
            child.deps_unresolved,
            child.dep(edge),
            self.index.eligible(self.lane),
            self.index.blocked(self.lane, "dependencies"),
            child.deps_all_edges,
            self.edge_group(pair[1]),
        ]
        argv = [self.flow_id, edge, self.ids[pair[0]], str(revision), "success_only", data_passing_ref, str(now_ms())]
        return Call("ff_apply_dependency_to_child", keys, list(argv))

    def resolve(self, pair: str, upstream_outcome: str, child_attempt_index: int = 0) -> Call:
        up, child, edge = self.x(pair[0]), self.x(pair[1]), self.edges[pair]
        keys = [
            child.core,
            child.deps_meta,
            child.deps_unresolved,
            child.dep(edge),
            self.index.eligible(self.lane),
            self.index.terminal(self.lane),
            self.index.blocked(self.lane, "dependencies"),
            child.attempt(child_attempt_index),
            child.stream_meta(child_attempt_index),
            child.payload,
            up.result,
            self.edge_group(pair[1]),
            self.flow_key(f"in:{self.ids[pair[1]]}"),
            self.pending_cancel_groups,
        ]
        argv = [edge, upstream_outcome, str(now_ms()), self.flow_id, self.ids[pair[1]]]
        return Call("ff_resolve_dependency", keys, list(argv))

    def evaluate(self, name: str) -> Call:
        return Call("ff_evaluate_flow_eligibility", [self.x(name).core, self.x(name).deps_meta], [])

    def promote(self, name: str) -> Call:
        x = self.x(name)
        keys = [
            x.core,
            self.index.blocked(self.lane, "dependencies"),
            self.index.eligible(self.lane),
            x.deps_meta,
            x.deps_unresolved,
        ]
        return Call("ff_promote_blocked_to_eligible", keys, [self.ids[name], str(now_ms())])

    def sibling_group(self, function: str, name: str) -> Call:
        keys = [self.pending_cancel_groups, self.edge_group(name)]
        return Call(function, keys, [self.flow_id, self.ids[name]])

    def set_flow_tags(self, *pairs: str) -> Call:
        return Call("ff_set_flow_tags", [self.flow_core, self.flow_key("tags")], list(pairs))

    def cancel_flow(self, reason: str, policy: str, grace_ms: str) -> Call:
        keys = [
            self.flow_core,
            self.members,
            self.flow_index,
            self.flow_key("pending_cancels"),
            f"ff:idx:{self.tag}:cancel_backlog",
        ]
        return Call("ff_cancel_flow", keys, [self.flow_id, reason, policy, str(now_ms()), grace_ms])

    def ack_cancel(self, name: str) -> Call:
        keys = [self.flow_key("pending_cancels"), f"ff:idx:{self.tag}:cancel_backlog"]
        return Call("ff_ack_cancel_member", keys, [self.ids[name], self.flow_id])

    # core functions, through ff_celery's typed wrappers (core spec §5)
    def create_execution(self, name: str) -> Call:
        typed = CreateExecution(
            execution_id=self.ids[name],
            namespace=self.namespace,
            lane_id=self.lane,
            execution_kind="diff_task",
            input_payload=f'{{"member":"{name}"}}'.encode(),
        )
        return Call.of(typed)

    def fence(self, name: str) -> Fence:
        # the first claim of a fresh execution always gets epoch 1
        return Fence(lease_id=fixed_uuid(f"lease-{name}"), lease_epoch=1, attempt_id=fixed_uuid(f"attempt-{name}"))

    def claim(self, name: str) -> list[Call]:
        common = {
            "execution_id": self.ids[name],
            "worker_id": self.worker_id,
            "worker_instance_id": self.worker_instance_id,
            "lane_id": self.lane,
        }
        fence = self.fence(name)
        claim = ClaimExecution(**common, lease_id=fence.lease_id, lease_ttl_ms=30_000, attempt_id=fence.attempt_id)
        return [Call.of(IssueClaimGrant(**common)), Call.of(claim)]

    def holder(self, name: str) -> dict[str, Any]:
        return {
            "execution_id": self.ids[name],
            "fence": self.fence(name),
            "lane_id": self.lane,
            "worker_instance_id": self.worker_instance_id,
            "attempt_index": 0,
        }

    def complete(self, name: str, result: bytes) -> Call:
        return Call.of(CompleteExecution(**self.holder(name), result_payload=result))

    def fail(self, name: str, reason: str) -> Call:
        return Call.of(FailExecution(**self.holder(name), failure_reason=reason, failure_category="permanent"))

    def cancel_member(self, name: str, reason: str) -> Call:
        # what the server's cancel_all dispatch sends: the member was never claimed (no attempt,
        # waitpoint or holder to pre-read)
        typed = CancelExecution(
            execution_id=self.ids[name], reason=reason, source="operator_override", lane_id=self.lane
        )
        return Call.of(typed)

    def steps(self) -> list[Step]:
        p = self
        plan: list[tuple[str, list[Call]]] = [
            ("create flow F", [p.create_flow()]),
            ("create flow F again: ALREADY_SATISFIED", [p.create_flow()]),
            ("create execution A", [p.create_execution("A")]),
            ("create execution B", [p.create_execution("B")]),
            ("create execution C", [p.create_execution("C")]),
            ("create execution D", [p.create_execution("D")]),
            ("add A to F (graph_revision 1)", [p.add_member("A")]),
            ("add B to F (2)", [p.add_member("B")]),
            ("add C to F (3)", [p.add_member("C")]),
            ("add D to F (4)", [p.add_member("D")]),
            ("add A again: ALREADY_SATISFIED", [p.add_member("A")]),
            ("stage A→B at revision 4, data passing", [p.stage("AB", 4, "result")]),
            ("stage B→C at stale revision 4: stale_graph_revision", [p.stage("BC", 4)]),
            ("stage B→C at revision 5", [p.stage("BC", 5)]),
            ("stage C→A at revision 6: cycle_detected", [p.stage("CA", 6)]),
            ("edge group of D: any_of, cancel_remaining", [p.set_group_policy("D", "any_of", "cancel_remaining")]),
            ("stage A→D at revision 6", [p.stage("AD", 6)]),
            ("stage C→D at revision 7", [p.stage("CD", 7)]),
            ("apply A→B: B blocked", [p.apply("AB", 5, "result")]),
            ("apply B→C: C blocked", [p.apply("BC", 6)]),
            ("apply A→D: D blocked", [p.apply("AD", 7)]),
            ("apply C→D", [p.apply("CD", 8)]),
            ("evaluate B (blocked); promote B: deps_not_satisfied", [p.evaluate("B"), p.promote("B")]),
            ("claim A: grant, then claim", p.claim("A")),
            (
                "complete A; resolve A→B (data injected), A→D (any_of satisfied); reconcile D: siblings_running",
                [
                    p.complete("A", b'{"answer":42}'),
                    p.resolve("AB", "success"),
                    p.resolve("AD", "success"),
                    p.sibling_group("ff_reconcile_sibling_cancel_group", "D"),
                ],
            ),
            (
                "claim and fail B; evaluate C; resolve B→C (C skipped), C→D (already fired); reconcile, drain D",
                [
                    *p.claim("B"),
                    p.fail("B", "boom"),
                    p.evaluate("C"),
                    p.resolve("BC", "failed"),
                    p.resolve("CD", "skipped"),
                    p.sibling_group("ff_reconcile_sibling_cancel_group", "D"),
                    p.sibling_group("ff_drain_sibling_cancel_group", "D"),
                ],
            ),
            (
                "flow tags on F; a bad tag key: invalid_tag_key",
                [p.set_flow_tags("cairn.owner", "x", "cairn.team", "y"), p.set_flow_tags("Bad", "z")],
            ),
            (
                "cancel F (cancel_all, default grace); cancel member D; ack every member",
                [
                    p.cancel_flow("flow_cancelled", "cancel_all", ""),
                    p.cancel_member("D", "flow_cancelled"),
                    *(p.ack_cancel(name) for name in "ABCD"),
                ],
            ),
        ]
        return [Step(number, title, calls) for number, (title, calls) in enumerate(plan, start=1)]


SCENARIOS: dict[str, Callable[[], list[Step]]] = {"flow": lambda: FlowScenario().steps()}

# -- normalization -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalizer:
    enabled: bool = True

    def text(self, value: bytes | str) -> str:
        decoded = value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else value
        if not self.enabled:
            return decoded
        return TIMESTAMP.sub(self._replace_timestamp, decoded)

    @staticmethod
    def _replace_timestamp(match: re.Match[str]) -> str:
        if abs(int(match.group(1)) - now_ms()) > DAY_MS:
            return match.group(0)
        return "<sid>" if match.group(2) else "<ts>"

    def score(self, value: float) -> str:
        return self.text(str(int(value)) if float(value).is_integer() else repr(value))

    def reply(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.reply(item) for item in value]
        if isinstance(value, int):
            return value if self.text(str(value)) == str(value) else "<ts>"
        if isinstance(value, bytes | str):
            return self.text(value)
        return repr(value)

    def error(self, exc: redis.ResponseError) -> dict[str, str]:
        message = str(exc)
        return {"error": LUA_LINE.sub(r"\1:<line>:", message) if self.enabled else message}

    def message(self, payload: bytes) -> Any:
        """A completion message: parsed JSON (normalized), else the normalized text."""
        if not self.enabled:
            return payload.decode("utf-8", errors="backslashreplace")
        try:
            parsed = json.loads(payload)
        except ValueError:
            return self.text(payload)
        return self.json_value(parsed)

    def json_value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {key: self.json_value(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.json_value(item) for item in value]
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return self.reply(int(value)) if float(value).is_integer() else value
        return value


def ignored_field(key: str, field_name: str) -> bool:
    return any(re.search(pattern, key) and field_name.startswith(prefix) for pattern, prefix in IGNORED_HASH_FIELDS)


def snapshot(client: redis.Redis, norm: Normalizer) -> dict[str, dict[str, Any]]:
    """Every key: its type, whether it has a TTL, and its normalized content."""
    result: dict[str, dict[str, Any]] = {}
    for raw_key in sorted(client.scan_iter(count=1000)):
        key = raw_key.decode("utf-8", errors="backslashreplace")
        if key.startswith(IGNORED_KEY_PREFIXES):
            continue
        kind = client.type(raw_key).decode()
        content: Any
        if kind == "string":
            content = norm.text(client.get(raw_key) or b"")
        elif kind == "hash":
            pairs = client.hgetall(raw_key)
            content = {
                name: norm.text(value)
                for name, value in sorted((f.decode("utf-8", "backslashreplace"), v) for f, v in pairs.items())
                if not ignored_field(key, name)
            }
        elif kind == "set":
            content = sorted(norm.text(member) for member in client.smembers(raw_key))
        elif kind == "zset":
            # by member: timestamp scores normalize to the same text, so their order is not comparable
            entries = client.zrange(raw_key, 0, -1, withscores=True)
            content = sorted([norm.text(member), norm.score(score)] for member, score in entries)
        elif kind == "list":
            content = [norm.text(item) for item in client.lrange(raw_key, 0, -1)]
        elif kind == "stream":
            entries = client.xrange(raw_key)
            content = [[[norm.text(f), norm.text(v)] for f, v in fields.items()] for _, fields in entries]
        else:
            content = f"<unsupported type {kind}>"
        result[key] = {"type": kind, "ttl": client.pttl(raw_key) >= 0, "value": content}
    return result


# -- one side: a server with a library -----------------------------------------------------------


class Side:
    """A server, a client, and a subscriber on ``ff:dag:completions``."""

    def __init__(self, name: str, server: DevServer, library: str, norm: Normalizer) -> None:
        self.name = name
        self.norm = norm
        self.client = redis.Redis(host="127.0.0.1", port=server.port)
        self.load_error: str | None = None
        try:
            self.client.function_load(library, replace=True)
        except redis.ResponseError as exc:
            self.load_error = str(exc)
        self.client.hset(PARTITION_CONFIG_KEY, mapping=PartitionConfig().as_hash())
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(DAG_COMPLETIONS_CHANNEL)
        self._barrier_count = 0
        self.published()  # consume the subscribe confirmation

    def call(self, call: Call) -> Any:
        try:
            raw = self.client.fcall(call.function, len(call.keys), *call.keys, *call.argv)
        except redis.ResponseError as exc:
            return self.norm.error(exc)
        if call.function in IGNORED_REPLIES:
            return "<ignored>"
        value = self.norm.reply(raw)
        tail = UNORDERED_REPLY_TAIL.get(call.function)
        if tail is not None and isinstance(value, list):
            value = value[:tail] + sorted(value[tail:], key=repr)
        return value

    def version(self) -> str:
        try:
            value = self.client.fcall("ff_version", 0)
        except redis.ResponseError as exc:
            return f"<error: {exc}>"
        return value.decode() if isinstance(value, bytes) else str(value)

    def published(self) -> list[Any]:
        """Completion messages received since the last call, in canonical order (a PING on the
        subscriber connection is the barrier: its reply comes after every earlier message)."""
        self._barrier_count += 1
        token = f"differential-barrier-{self._barrier_count}"
        self.pubsub.ping(token)
        messages: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message["type"] == "pong" and message["data"] == token.encode():
                return sorted(messages, key=lambda m: json.dumps(m, sort_keys=True))
            if message["type"] == "message":
                messages.append(self.norm.message(message["data"]))
        raise RuntimeError(f"{self.name}: no reply to the pub/sub barrier PING")

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


# -- comparison and report -----------------------------------------------------------------------


def shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + f"... ({len(text)} chars)"


def keyspace_diff(ref: dict[str, dict[str, Any]], ours: dict[str, dict[str, Any]]) -> Iterator[str]:
    for key in sorted(ref.keys() | ours.keys()):
        left, right = ref.get(key), ours.get(key)
        if left == right:
            continue
        if right is None:
            yield f"  - {key}: only in reference ({left['type']}) {shown(left['value'])}"  # type: ignore[index]
        elif left is None:
            yield f"  + {key}: only in ours ({right['type']}) {shown(right['value'])}"
        elif left["type"] != right["type"]:
            yield f"  ~ {key}: type reference={left['type']} ours={right['type']}"
            yield f"      reference: {shown(left['value'])}"
            yield f"      ours:      {shown(right['value'])}"
        else:
            yield f"  ~ {key} ({left['type']}):"
            if left["ttl"] != right["ttl"]:
                yield f"      has a TTL: reference={left['ttl']} ours={right['ttl']}"
            yield from value_diff(left["type"], left["value"], right["value"])


def value_diff(kind: str, left: Any, right: Any) -> Iterator[str]:
    """The differing parts of two values of one key type: fields of a hash, members of a set
    or sorted set, positions of a list or stream."""
    missing = "<absent>"
    if kind == "hash":
        for name in sorted(left.keys() | right.keys()):
            if left.get(name) != right.get(name):
                yield f"      {name}: reference={shown(left.get(name, missing))} ours={shown(right.get(name, missing))}"
    elif kind in ("set", "zset"):
        for item in left:
            if item not in right:
                yield f"      only in reference: {shown(item)}"
        for item in right:
            if item not in left:
                yield f"      only in ours:      {shown(item)}"
    elif kind in ("list", "stream"):
        for position in range(max(len(left), len(right))):
            a = left[position] if position < len(left) else missing
            b = right[position] if position < len(right) else missing
            if a != b:
                yield f"      [{position}] reference: {shown(a)}"
                yield f"      [{position}] ours:      {shown(b)}"
    elif left != right:
        yield f"      reference: {shown(left)}"
        yield f"      ours:      {shown(right)}"


def run_step(step: Step, ref: Side, ours: Side, verbose: bool = False) -> list[str]:
    """Run one step on both sides; the lines describing every difference (none: a match)."""
    problems: list[str] = []
    for index, call in enumerate(step.calls, start=1):
        left, right = ref.call(call), ours.call(call)
        if verbose:
            print(f"    call {index} {call.function}: {shown(left)}")
        if left != right:
            problems.append(f"  reply of call {index} ({call.function}) differs:")
            problems.append(f"      reference: {shown(left)}")
            problems.append(f"      ours:      {shown(right)}")
    left_messages, right_messages = ref.published(), ours.published()
    if verbose and left_messages:
        print(f"    published: {shown(left_messages)}")
    if left_messages != right_messages:
        problems.append(f"  messages on {DAG_COMPLETIONS_CHANNEL} differ:")
        problems.append(f"      reference: {shown(left_messages)}")
        problems.append(f"      ours:      {shown(right_messages)}")
    problems.extend(keyspace_diff(snapshot(ref.client, ref.norm), snapshot(ours.client, ours.norm)))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="FlowFabric's flowfabric.lua")
    parser.add_argument("--ours", type=Path, help="library text for our side (default: this checkout's lua/)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="flow")
    parser.add_argument("--no-normalize", action="store_true", help="compare timestamps and stream ids verbatim")
    parser.add_argument("--verbose", "-v", action="store_true", help="print every reference reply")
    args = parser.parse_args(argv)

    reference_text = args.reference.read_text(encoding="utf-8")
    if args.ours is not None:
        ours_text = args.ours.read_text(encoding="utf-8")
    else:
        from ff_celery.engine.core.library import library_source

        ours_text = library_source()
    norm = Normalizer(enabled=not args.no_normalize)
    steps = SCENARIOS[args.scenario]()
    binary = find_server_binary()

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(DevServer(binary=binary)) for _ in range(2)]
        print(f"servers: {servers[0].version} on ports {servers[0].port} (reference), {servers[1].port} (ours)")
        ref = Side("reference", servers[0], reference_text, norm)
        ours = Side("ours", servers[1], ours_text, norm)
        stack.callback(ref.close)
        stack.callback(ours.close)
        for side in (ref, ours):
            if side.load_error:
                print(f"warning: FUNCTION LOAD failed on {side.name}: {side.load_error}")
            else:
                print(f"{side.name}: library loaded, ff_version {side.version()}")
        matched = 0
        for step in steps:
            problems = run_step(step, ref, ours, verbose=args.verbose)
            matched += not problems
            print(f"step {step.number:02d} {step.label} {'DIFF' if problems else 'MATCH'}  # {step.title}")
            for line in problems:
                print(line)
        print(f"matched {matched}/{len(steps)} steps")
    return 0 if matched == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
