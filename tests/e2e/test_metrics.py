"""Prometheus metrics: a real worker's endpoint (``flowfabric_metrics_port``) while its tasks
run, renew their leases and are recovered after a ``kill -9``, and the standalone
``ff-celery metrics`` endpoint reading the engine."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ff_celery.devserver import free_port

from .conftest import wait_for


def scrape(port: int) -> dict[tuple[str, frozenset], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(port: int, name: str, **labels: str) -> float:
    return (scrape(port) or {}).get((name, frozenset(labels.items())), 0.0)


def test_a_workers_counters_and_the_engine_state_move_with_its_tasks(ffapp, start_worker):
    port = free_port()
    start_worker(concurrency=1, env={"FFAPP_METRICS_PORT": str(port)})
    assert wait_for(lambda: scrape(port) is not None, timeout=30)
    claimed = value(port, "ff_claims_total", lane="celery")
    waits = value(port, "ff_claim_wait_seconds_count", lane="celery")
    assert [ffapp.add.delay(i, i).get(timeout=30) for i in range(3)] == [0, 2, 4]
    assert ffapp.tracked_sleep.delay(1.5).get(timeout=30) == 1.5  # outlives a renewal interval (2 s lease)
    assert wait_for(lambda: value(port, "ff_claims_total", lane="celery") >= claimed + 4)
    assert value(port, "ff_claim_wait_seconds_count", lane="celery") >= waits + 4  # one wait per claim
    assert value(port, "ff_claim_wait_seconds_sum", lane="celery") >= 0
    assert value(port, "ff_lease_renewals_total", outcome="renewed") >= 1
    assert value(port, "ff_lane_executions", lane="celery", state="terminal") >= 4
    assert value(port, "ff_lane_executions", lane="celery", state="active") == 0
    assert wait_for(lambda: value(port, "ff_scanner_cycle_seconds_count", scanner="lease_expiry") > 0, timeout=30)

    # a task on a worker killed with -9 is requeued by this worker's lease-expiry scanner
    doomed = start_worker(concurrency=1, queues="doomed")
    requeued = value(port, "ff_scanner_items_total", scanner="lease_expiry")
    result = ffapp.tracked_sleep.apply_async((60,), queue="doomed")
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="doomed", state="active") == 1, timeout=30)
    doomed.kill()
    assert wait_for(lambda: value(port, "ff_scanner_items_total", scanner="lease_expiry") > requeued, timeout=30)
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="doomed", state="eligible") == 1, timeout=30)
    result.revoke()


def test_the_standalone_endpoint_reports_waiting_work_and_its_age(ffapp, ff_server):
    for _ in range(3):
        ffapp.add.apply_async((1, 1), queue="metrics-idle")  # a queue no worker consumes
    port = free_port()
    command = [sys.executable, "-m", "ff_celery.cli", "metrics", "--url", ff_server.url, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: scrape(port) is not None, timeout=30)
        assert value(port, "ff_lane_executions", lane="metrics-idle", state="eligible") == 3
        assert value(port, "ff_lane_head_wait_seconds", lane="metrics-idle") >= 0
        assert ("ff_lane_head_wait_seconds", frozenset({("lane", "metrics-idle")})) in scrape(port)
    finally:
        process.terminate()
        process.wait(timeout=30)
