"""The Prometheus endpoint: this process's counters (:mod:`ff_celery.engine.metrics`) and
the engine state read at each scrape: executions per lane and state
(``ff_lane_executions``) and how long the next execution of each lane has been waiting
(``ff_lane_head_wait_seconds``), whoever runs the work.

Processes that fork workers (Celery's prefork pool) export their children's counters in
prometheus_client's multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the worker starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ff_celery.engine.client import Engine
from ff_celery.engine.inspection import lane_states

log = logging.getLogger(__name__)

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra is not installed
    prometheus_client = None

#: prometheus_client's multiprocess mode: every process writes its counters under this directory.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


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


def multiprocess_mode() -> bool:
    """Whether this process writes its counters for prometheus_client's multiprocess mode."""
    return bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))


def serve(port: int, engine: Engine, lanes: Callable[[], Iterable[str]], address: str = "127.0.0.1") -> None:
    """Export the counters (of every process, in multiprocess mode) and the engine state on
    ``http://address:port/metrics`` (a daemon thread)."""
    if prometheus_client is None:
        raise RuntimeError("metrics need prometheus_client: pip install 'ff-celery[metrics]'")
    registry = prometheus_client.REGISTRY
    if multiprocess_mode():
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    registry.register(EngineStateCollector(engine, lanes))
    prometheus_client.start_http_server(port, addr=address, registry=registry)
    log.info("metrics on http://%s:%d/metrics", address, port)
