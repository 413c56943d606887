"""Prometheus metrics of the engine (``pip install ff-celery[metrics]``: ``prometheus_client``).

Two kinds:

- **counters of this process** (``ff_claims_total``, ``ff_lease_renewals_total``,
  ``ff_leases_lost_total``, ``ff_scanner_items_total``, ``ff_scanner_cycle_seconds``), moved
  by the claimer, the renewer and the scanners where they run;
- **engine state** read at each scrape by :class:`EngineStateCollector`: executions per
  lane and state (``ff_lane_executions``) and how long the next execution of each lane has
  been waiting (``ff_lane_head_wait_seconds``), whoever runs the work.

Without ``prometheus_client`` the counters do nothing and :func:`serve` raises.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ff_celery.engine.client import Engine
from ff_celery.engine.ids import valid_execution_ids
from ff_celery.engine.keys import BLOCKED_SUFFIXES, ExecKeys, PartitionKeys

log = logging.getLogger(__name__)

#: The lane index sets counted, by the state label they are exported under.
LANE_STATES = ("eligible", "delayed", "active", "suspended", "terminal")

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra is not installed
    prometheus_client = None


class _Unmeasured:
    """Stands in for a metric when prometheus_client is not installed."""

    def labels(self, *_: Any, **__: Any) -> _Unmeasured:
        return self

    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass

    def time(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _metric(kind: str, name: str, documentation: str, labels: Iterable[str]) -> Any:
    if prometheus_client is None:
        return _Unmeasured()
    return getattr(prometheus_client, kind)(name, documentation, list(labels))


CLAIMS = _metric("Counter", "ff_claims_total", "Executions claimed by this process", ["lane"])
LEASE_RENEWALS = _metric("Counter", "ff_lease_renewals_total", "Lease renewals by outcome", ["outcome"])
LEASES_LOST = _metric("Counter", "ff_leases_lost_total", "Leases this process lost, by error code", ["code"])
SCANNER_ITEMS = _metric("Counter", "ff_scanner_items_total", "Executions a scanner handled", ["scanner"])
SCANNER_CYCLE = _metric("Histogram", "ff_scanner_cycle_seconds", "Duration of one scanner pass", ["scanner"])


class EngineStateCollector:
    """Executions per lane and state, read from the lane indexes of every partition in two
    round trips at each scrape."""

    def __init__(self, engine: Engine, lanes: Callable[[], Iterable[str]]) -> None:
        self.engine, self.lanes = engine, lanes

    def collect(self) -> Iterator[Any]:
        lanes = sorted(self.lanes())
        partitions = [PartitionKeys(p) for p in range(self.engine.partitions.num_flow_partitions)]
        states = [*LANE_STATES, *(f"blocked_{reason}" for reason in BLOCKED_SUFFIXES)]
        reads = self.engine.batch()
        for lane in lanes:
            for index in partitions:
                for state in LANE_STATES:
                    reads.command("zcard", index.lane(lane, state))
                for reason in BLOCKED_SUFFIXES:
                    reads.command("zcard", index.blocked(lane, reason))
                reads.command("zrange", index.eligible(lane), 0, 0)
        replies = iter(reads.execute())
        counts = GaugeMetricFamily("ff_lane_executions", "Executions per lane and state", labels=["lane", "state"])
        heads: list[tuple[str, str]] = []
        for lane in lanes:
            totals = dict.fromkeys(states, 0)
            for _ in partitions:
                for state in states:
                    reply = next(replies)
                    totals[state] += reply if isinstance(reply, int) else 0
                head = next(replies)
                heads += [(lane, eid) for eid in valid_execution_ids(head or [], f"the eligible set of lane {lane}")]
            for state, total in totals.items():
                counts.add_metric([lane, state], total)
        yield counts
        yield self._head_waits(lanes, heads)

    def _head_waits(self, lanes: list[str], heads: list[tuple[str, str]]) -> Any:
        """Per lane: the longest a next-in-line execution (one per partition) has waited."""
        waits = GaugeMetricFamily(
            "ff_lane_head_wait_seconds", "How long the next execution of the lane has waited", labels=["lane"]
        )
        reads = self.engine.batch()
        for _, eid in heads:
            reads.command("hget", ExecKeys(eid).core, "created_at")
        now = self.engine.server_time_ms()
        longest = dict.fromkeys(lanes, 0.0)
        for (lane, _), created_at in zip(heads, reads.execute() if heads else []):
            if isinstance(created_at, bytes) and created_at.isdigit():
                longest[lane] = max(longest[lane], (now - int(created_at)) / 1000)
        for lane, seconds in longest.items():
            waits.add_metric([lane], seconds)
        return waits


def serve(port: int, engine: Engine, lanes: Callable[[], Iterable[str]], address: str = "127.0.0.1") -> None:
    """Export this process's counters and the engine state on ``http://address:port/metrics``
    (a daemon thread)."""
    if prometheus_client is None:
        raise RuntimeError("metrics need prometheus_client: pip install 'ff-celery[metrics]'")
    prometheus_client.REGISTRY.register(EngineStateCollector(engine, lanes))
    prometheus_client.start_http_server(port, addr=address)
    log.info("metrics on http://%s:%d/metrics", address, port)
