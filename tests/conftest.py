import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from ff_celery.devserver import CLUSTER_VARIABLE
from ff_celery.engine.client import Engine

pytest_plugins = ["ff_celery.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a cluster-mode server, what FlowFabric's contract makes cross-slot (spec §1.5) and
    databases other than 0 do not exist: those tests are skipped, naming why."""
    if os.environ.get(CLUSTER_VARIABLE) != "1":
        return
    reason = pytest.mark.skip(reason="cross-slot by FlowFabric's contract (spec §1.5) or database > 0: standalone only")
    for item in items:
        if item.get_closest_marker("standalone"):
            item.add_marker(reason)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy; False once ``timeout`` seconds passed first.

    For what a background thread, scanner or server does: a fixed sleep before the assertion
    fails whenever a loaded machine is slower than the sleep, a generous timeout only costs
    time when the test fails anyway."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextmanager
def engine_time(engine: Engine, now_ms: float) -> Iterator[None]:
    """Within the block ``engine.server_time_ms()`` answers ``now_ms``, so scanner passes (which
    take their "now" from it) run as of that moment: "not yet due" checks hold however late a
    loaded machine gets to them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "server_time_ms", lambda: int(now_ms))
        yield
