"""Prometheus metrics: a real worker's endpoint (``flowfabric_metrics_port``) while its tasks
run, renew their leases, are recovered after a ``kill -9``, fail, retry, suspend, are revoked
and hit a budget; the signal server's endpoint while signals are delivered and refused; and
the standalone ``ff-celery metrics`` endpoint reading the engine."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ff_celery.devtools.devserver import free_port
from ff_celery.features import budgets
from ff_celery.features.budgets import BudgetExceeded
from ff_celery.features.signals import suspended_waitpoint

from .conftest import runs, wait_for


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
    assert value(port, "ff_lease_renewal_total", outcome="ok") >= 1
    assert value(port, "ff_claim_from_grant_duration_seconds_count", lane="celery") >= 1
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="celery", state="terminal") >= 4)
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="celery", state="active") == 0)
    assert wait_for(lambda: value(port, "ff_scanner_cycle_total", scanner="lease_expiry") > 0, timeout=30)
    assert value(port, "ff_scanner_cycle_duration_seconds_count", scanner="lease_expiry") > 0

    # a task on a worker killed with -9 is requeued by this worker's lease-expiry scanner
    doomed = start_worker(concurrency=1, queues="doomed")
    requeued = value(port, "ff_scanner_items_total", scanner="lease_expiry")
    result = ffapp.tracked_sleep.apply_async((60,), queue="doomed")
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="doomed", state="active") == 1, timeout=30)
    doomed.kill()
    assert wait_for(lambda: value(port, "ff_scanner_items_total", scanner="lease_expiry") > requeued, timeout=30)
    assert value(port, "ff_leases_expired_total", lane="doomed") == 1
    assert value(port, "ff_reclaims_total", lane="doomed") == 1
    assert wait_for(lambda: value(port, "ff_lane_executions", lane="doomed", state="eligible") == 1, timeout=30)
    result.revoke()


def test_a_prefork_workers_tasks_are_counted_and_timed_in_multiprocess_mode(ffapp, start_worker, tmp_path):
    port, directory = free_port(), tmp_path / "prometheus"
    directory.mkdir()
    start_worker(concurrency=2, env={"FFAPP_METRICS_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert wait_for(lambda: scrape(port) is not None, timeout=30)

    assert ffapp.add.delay(2, 2).get(timeout=30) == 4
    with pytest.raises(KeyError):
        ffapp.boom.delay().get(timeout=30)
    assert ffapp.flaky.delay(1).get(timeout=30) == 1
    running = ffapp.tracked_sleep.delay(60)
    assert wait_for(lambda: runs(ffapp, running.id) != [], timeout=30)
    running.revoke(terminate=True)
    suspended = ffapp.await_approval.delay()
    assert wait_for(lambda: suspended.state == "SUSPENDED", timeout=30)

    name = f"tokens-{uuid.uuid4().hex[:8]}"
    budgets.create_budget(ffapp.app, name, hard={"tokens": 100}, soft={"tokens": 50})
    assert ffapp.spend_tokens.apply_async((2, 40), ff_budgets=[name]).get(timeout=30) == 80  # 80 > soft 50
    with pytest.raises(BudgetExceeded):
        ffapp.spend_tokens.apply_async((1, 30), ff_budgets=[name]).get(timeout=30)  # 110 > hard 100: refused

    def tasks(task: str, state: str) -> float:
        return value(port, "ff_celery_tasks_total", task=f"ffapp.{task}", state=state)

    assert wait_for(lambda: tasks("tracked_sleep", "REVOKED") == 1, timeout=30)
    assert tasks("add", "SUCCESS") == 1
    assert tasks("boom", "FAILURE") == 1
    assert (tasks("flaky", "RETRY"), tasks("flaky", "SUCCESS")) == (1, 1)
    assert tasks("await_approval", "SUSPENDED") == 1
    assert tasks("spend_tokens", "SUCCESS") == 1 and tasks("spend_tokens", "FAILURE") == 1
    assert value(port, "ff_celery_task_runtime_seconds_count", task="ffapp.add") == 1
    assert value(port, "ff_celery_task_start_latency_seconds_count", task="ffapp.add") == 1
    assert value(port, "ff_celery_task_runtime_seconds_sum", task="ffapp.add") >= 0
    assert value(port, "ff_budget_soft_breach_total", dimension="tokens") == 1
    assert value(port, "ff_budget_hit_total", dimension="tokens") == 1
    assert value(port, "ff_claims_total", lane="celery") >= 8  # the main process's counters too
    suspended.revoke()


def post(url: str, body: bytes = b"{}") -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_signal_server_counts_signals_delivered_and_refused(ffapp, app_url, start_worker):
    start_worker(concurrency=1)
    result = ffapp.await_approval.delay()
    assert wait_for(lambda: result.state == "SUSPENDED", timeout=30)
    http_port, port = free_port(), free_port()
    command = [sys.executable, "-m", "ff_celery.cli", "signal-server", "--url", app_url,
               "--port", str(http_port), "--metrics-port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: scrape(port) is not None, timeout=30)
        point = suspended_waitpoint(result)
        url = point.callback_url(f"http://127.0.0.1:{http_port}", "approve")
        forged = url.replace(point.token.split(":")[1], "0" * 40)
        assert post(forged) == 403
        assert post(url) == 202
        assert result.get(timeout=30)["signals"][0][0] == "approve"
        assert value(port, "ff_signals_total", outcome="invalid_token") == 1
        assert value(port, "ff_signals_total", outcome="delivered") == 1
    finally:
        process.terminate()
        process.wait(timeout=30)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def test_the_signal_servers_metrics_listen_on_their_own_host_not_the_webhooks(app_url):
    http_port, port = free_port(), free_port()
    command = [sys.executable, "-m", "ff_celery.cli", "signal-server", "--url", app_url,
               "--host", "127.0.0.2", "--port", str(http_port), "--metrics-port", str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: scrape(port) is not None, timeout=30)  # on 127.0.0.1, the default
        assert wait_for(lambda: answers(f"http://127.0.0.2:{http_port}/healthz"), timeout=30)  # the webhook's host
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=30)


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
