"""Prometheus metrics of the engine (``pip install ff-celery[metrics]``: ``prometheus_client``).

Two kinds:

- **counters of this process** (``ff_claims_total``, ``ff_claim_wait_seconds``,
  ``ff_lease_renewals_total``, ``ff_leases_lost_total``, ``ff_scanner_items_total``,
  ``ff_scanner_cycle_seconds``), moved by the claimer, the renewer and the scanners where
  they run;
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
from ff_celery.engine.inspection import lane_states

log = logging.getLogger(__name__)

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
CLAIM_WAIT = _metric(
    "Histogram", "ff_claim_wait_seconds", "How long an execution was runnable before this process claimed it", ["lane"]
)
LEASE_RENEWALS = _metric("Counter", "ff_lease_renewals_total", "Lease renewals by outcome", ["outcome"])
LEASES_LOST = _metric("Counter", "ff_leases_lost_total", "Leases this process lost, by error code", ["code"])
SCANNER_ITEMS = _metric("Counter", "ff_scanner_items_total", "Executions a scanner handled", ["scanner"])
SCANNER_CYCLE = _metric("Histogram", "ff_scanner_cycle_seconds", "Duration of one scanner pass", ["scanner"])


class EngineStateCollector:
    """Executions per lane and state, and each lane's head wait, read at each scrape
    (:func:`~ff_celery.engine.inspection.lane_states`)."""

    def __init__(self, engine: Engine, lanes: Callable[[], Iterable[str]]) -> None:
        self.engine, self.lanes = engine, lanes

    def collect(self) -> Iterator[Any]:
        counts = GaugeMetricFamily("ff_lane_executions", "Executions per lane and state", labels=["lane", "state"])
        waits = GaugeMetricFamily(
            "ff_lane_head_wait_seconds", "How long the next execution of the lane has waited", labels=["lane"]
        )
        for lane, state in lane_states(self.engine, self.lanes()).items():
            for name, total in state.executions.items():
                counts.add_metric([lane, name], total)
            waits.add_metric([lane], state.head_wait_s)
        yield counts
        yield waits


def serve(port: int, engine: Engine, lanes: Callable[[], Iterable[str]], address: str = "127.0.0.1") -> None:
    """Export this process's counters and the engine state on ``http://address:port/metrics``
    (a daemon thread)."""
    if prometheus_client is None:
        raise RuntimeError("metrics need prometheus_client: pip install 'ff-celery[metrics]'")
    prometheus_client.REGISTRY.register(EngineStateCollector(engine, lanes))
    prometheus_client.start_http_server(port, addr=address)
    log.info("metrics on http://%s:%d/metrics", address, port)
