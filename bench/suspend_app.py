"""Celery app for bench/suspend_bench.py; SUSPEND_BENCH_URL is the flowfabric:// server."""

import os
import time

from celery import Celery

import ff_celery

app = Celery("suspend_app", broker=os.environ["SUSPEND_BENCH_URL"], backend=os.environ["SUSPEND_BENCH_URL"])
ff_celery.install(app)
# The settings of bench/celery_bench.py's worker.
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_acks_on_failure_or_timeout=True)


@app.task
def wait_for_go():
    """Suspends on its first run; after the signal it runs again from the top and answers when
    its code started (``ran_at``) and when the wait returned the signal (``resumed_at``)."""
    ran_at = time.time()
    ff_celery.wait_for_signal("go")
    return {"ran_at": ran_at, "resumed_at": time.time()}
