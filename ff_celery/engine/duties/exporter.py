"""The Prometheus endpoint: this process's counters (:mod:`ff_celery.engine.core.metrics`) and
the engine state: executions per lane and state (``ff_lane_executions``), how long the next
execution of each lane has been waiting (``ff_lane_head_wait_seconds``), whoever runs the
work, and how old that reading is (``ff_lane_state_age_seconds``).

One background thread reads the engine state once per interval (a reading costs a command
per lane index of every partition, pipelined); a scrape serves the last reading, so any
number of scrapes, at once or not, cost the server no command.

Processes that fork workers (Celery's prefork pool) export their children's counters in
prometheus_client's multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory before the worker starts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ff_celery.engine.core.engine import Engine
from ff_celery.engine.duties.inspection import LaneState, lane_states

log = logging.getLogger(__name__)

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the optional extra is not installed
    prometheus_client = None

#: prometheus_client's multiprocess mode: every process writes its counters under this directory.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two readings of the engine state.
DEFAULT_STATE_INTERVAL_S = 15.0
#: The longest interval accepted (a day).
MAX_STATE_INTERVAL_S = 86_400.0
#: Seconds a scrape waits for the first reading of an endpoint just started.
FIRST_READING_WAIT_S = 10.0


class EngineStateCollector:
    """Executions per lane and state, and each lane's head wait, as last read by :meth:`read`
    (:func:`~ff_celery.engine.duties.inspection.lane_states`); :meth:`start` reads once per interval."""

    def __init__(
        self, engine: Engine, lanes: Callable[[], Iterable[str]], interval_s: float = DEFAULT_STATE_INTERVAL_S
    ) -> None:
        if not (math.isfinite(interval_s) and 0 < interval_s <= MAX_STATE_INTERVAL_S):
            limit = f"> 0 and <= {MAX_STATE_INTERVAL_S:g} seconds"
            raise ValueError(f"the metrics interval must be {limit}, not {interval_s!r}")
        self.engine, self.lanes, self.interval_s = engine, lanes, interval_s
        self.reading: tuple[dict[str, LaneState], float] | None = None  # the states, when (monotonic)
        self._first_reading = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> None:
        """Read every lane's state now; on failure, log it and keep the last reading."""
        try:
            self.reading = lane_states(self.engine, self.lanes()), time.monotonic()
        except Exception as exc:  # the reader outlives an outage
            log.warning("metrics: reading the engine state failed, the last reading stays: %r", exc)
        finally:
            self._first_reading.set()

    def start(self) -> EngineStateCollector:
        """Read now, then once per interval, in a daemon thread."""
        self._thread = threading.Thread(target=self._read_each_interval, name="ff-metrics-reader", daemon=True)
        self._thread.start()
        return self

    def _read_each_interval(self) -> None:
        self.read()
        while not self._stopping.wait(self.interval_s):
            self.read()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def describe(self) -> Iterator[Any]:
        """The families without samples (registering the collector reads nothing)."""
        return iter(self._families())

    def collect(self) -> Iterator[Any]:
        if self._thread is not None:
            self._first_reading.wait(FIRST_READING_WAIT_S)
        counts, waits, age = families = self._families()
        if self.reading is not None:
            states, read_at = self.reading
            for lane, state in states.items():
                for name, total in state.executions.items():
                    counts.add_metric([lane, name], total)
                waits.add_metric([lane], state.head_wait_s)
            age.add_metric([], time.monotonic() - read_at)
        return iter(families)

    @staticmethod
    def _families() -> tuple[Any, Any, Any]:
        return (
            GaugeMetricFamily("ff_lane_executions", "Executions per lane and state", labels=["lane", "state"]),
            GaugeMetricFamily(
                "ff_lane_head_wait_seconds", "How long the next execution of the lane has waited", labels=["lane"]
            ),
            GaugeMetricFamily("ff_lane_state_age_seconds", "Seconds since the lane state was read", labels=[]),
        )


@dataclass
class Exporter:
    """A running ``/metrics`` endpoint and its engine state reader."""

    server: Any
    state: EngineStateCollector

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.state.stop()


def multiprocess_mode() -> bool:
    """Whether this process writes its counters for prometheus_client's multiprocess mode."""
    return bool(os.environ.get(MULTIPROCESS_DIR_VARIABLE))


def registry_for(state: EngineStateCollector) -> Any:
    """A registry of the counters (of every process, in multiprocess mode) and ``state``."""
    if prometheus_client is None:
        raise RuntimeError("metrics need prometheus_client: pip install 'ff-celery[metrics]'")
    registry = prometheus_client.CollectorRegistry()
    if multiprocess_mode():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(prometheus_client.REGISTRY)
    registry.register(state)
    return registry


def serve_exporter(port: int, state: EngineStateCollector, address: str = "127.0.0.1") -> Exporter:
    """Export the counters (of every process, in multiprocess mode) and the engine state (read
    by ``state`` once per interval from now on) on ``http://address:port/metrics`` (daemon
    threads)."""
    registry = registry_for(state)
    state.start()
    try:
        server, _ = prometheus_client.start_http_server(port, addr=address, registry=registry)
    except BaseException:
        state.stop()
        raise
    log.info("metrics on http://%s:%d/metrics (engine state read every %g s)", address, port, state.interval_s)
    return Exporter(server, state)
