"""A Celery app migrated by its URLs alone: it never imports ff_celery and calls no setup.

PLAINAPP_BROKER and PLAINAPP_BACKEND are its two URLs (broker and backend on different
databases, as most Celery apps have them).
"""

import os
import time

import redis
from celery import Celery, Task

app = Celery(
    "plainapp",
    broker=os.environ.get("PLAINAPP_BROKER", "flowfabric://127.0.0.1:6379/0"),
    backend=os.environ.get("PLAINAPP_BACKEND", "flowfabric://127.0.0.1:6379/1"),
)
app.conf.broker_transport_options = {"lease_ttl_ms": 1500, "poll_interval": 0.5}


def journal() -> redis.Redis:
    """Where tasks note that they ran (the broker's server, database 2)."""
    url = app.conf.broker_url.replace("flowfabric://", "redis://", 1)
    return redis.Redis.from_url(url.rsplit("/", 1)[0] + "/2")


@app.task
def add(x, y):
    return x + y


@app.task(acks_late=False)
def early_acked(seconds, value):
    """Celery's default early ack, made explicit: acknowledged when it starts."""
    journal().rpush(f"ran:{early_acked.request.id}", time.time())
    time.sleep(seconds)
    return value


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def retried_once(self, value):
    if self.request.retries == 0:
        raise self.retry()
    return (value, self.request.retries)


class Doubler(Task):
    name = "plainapp.doubler"

    def run(self, value):
        return 2 * value


app.register_task(Doubler())


@app.task(bind=True, default_retry_delay=0.1)
def retried_with_new_arguments(self, *args, **kwargs):
    if self.request.retries == 0:
        raise self.retry(args=("new",), kwargs={"by": "retry"})
    return [list(args), kwargs, self.request.retries]


@app.task
def fails(message):
    raise ValueError(message)
