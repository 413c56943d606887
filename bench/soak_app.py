"""Celery app for bench/soak.py: tasks that note each run in a journal on the same server.

``SOAK_MODE=steady`` (the steady-load run): the app's defaults, scanner settings included;
otherwise (the crash run) leases that lapse fast and scanners that notice at once."""

import os
import time

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

URL = os.environ["SOAK_URL"]
app = Celery("soak_app", broker=URL, backend=URL)
# a short retention, so the run can watch the trimmer give the memory back
app.conf.result_expires = float(os.environ.get("SOAK_RETENTION_S", "60"))
if os.environ.get("SOAK_MODE") != "steady":
    app.conf.update(
        broker_transport_options={"lease_ttl_ms": 3000, "poll_interval": 0.5},
        flowfabric_scanner_settings={
            "lease_expiry_interval_s": 0.5,
            "promote_interval_s": 0.25,
            "leader_ttl_s": 3.0,
            "retention_interval_s": 2.0,
            "batch_size": 500,
        },
    )
# the journal rides out the server restart (retried), so a task fails only for ff_celery's reasons
journal = redis.Redis.from_url(
    URL.replace("flowfabric://", "redis://", 1).rsplit("/", 1)[0] + "/2",
    retry=Retry(ExponentialBackoff(cap=1.0), 30),
    retry_on_error=[redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError],
)


@app.task
def work(number, seconds):
    """Runs ``seconds``; every run (first or again after a crash) is counted."""
    journal.hincrby("soak:runs", number, 1)
    time.sleep(seconds)
    return 2 * number


@app.task
def tick(number):
    """A steady-load task: counted (one key, whatever the number of runs)."""
    journal.incr("soak:ticks")
    return number
