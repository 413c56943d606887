"""Celery app for bench/celery_bench.py; BENCH_BROKER / BENCH_BACKEND pick the transport."""

import os
import time

from celery import Celery

BROKER = os.environ["BENCH_BROKER"]
app = Celery("bench_app", broker=BROKER, backend=os.environ["BENCH_BACKEND"])
if BROKER.startswith("flowfabric"):
    import ff_celery

    ff_celery.install(app)
    # BENCH_QUEUE_SHARDS=3: the queue spread over 3 lanes (celery_bench --cluster)
    app.conf.broker_transport_options = {"queue_shards": {"celery": int(os.environ.get("BENCH_QUEUE_SHARDS", "1"))}}
    if os.environ.get("BENCH_METRICS_PORT"):  # the worker exports Prometheus metrics (celery_bench --metrics)
        app.conf.flowfabric_metrics_port = int(os.environ["BENCH_METRICS_PORT"])
# The same settings for every transport (ff_celery's defaults), unless BENCH_SETTINGS=defaults
# asks for Celery's own (early acks, prefetch multiplier 4) on a peer broker.
if os.environ.get("BENCH_SETTINGS") != "defaults":
    app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_acks_on_failure_or_timeout=True)


@app.task
def noop():
    return None


@app.task
def started_after(sent_at):
    """Seconds from publish to start (same host, same clock)."""
    return time.time() - sent_at


@app.task
def inc(x):
    return x + 1


@app.task
def finished(_previous):
    """The last step of a canvas: when it ran (same host, same clock)."""
    return time.time()
