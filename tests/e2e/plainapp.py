"""A Celery app migrated by its URLs alone: it never imports ff_celery and calls no setup.

PLAINAPP_BROKER and PLAINAPP_BACKEND are its two URLs (broker and backend on different
databases, as most Celery apps have them); PLAINAPP_ENABLE_PICKLE enables kombu's pickle
decoder in the process (the app's accept_content stays Celery's default, JSON). With
PLAINAPP_BEAT_KEY set, ``celery beat`` runs ``tick`` every second; PLAINAPP_SCANNER_SETTINGS
(JSON) sets ``flowfabric_scanner_settings``.
"""

import json
import os
import time

import kombu
import redis
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

app = Celery(
    "plainapp",
    broker=os.environ.get("PLAINAPP_BROKER", "flowfabric://127.0.0.1:6379/0"),
    backend=os.environ.get("PLAINAPP_BACKEND", "flowfabric://127.0.0.1:6379/1"),
)
app.conf.broker_transport_options = {"lease_ttl_ms": 1500, "poll_interval": 0.5}
if os.environ.get("PLAINAPP_SCANNER_SETTINGS"):
    app.conf.flowfabric_scanner_settings = json.loads(os.environ["PLAINAPP_SCANNER_SETTINGS"])
if os.environ.get("PLAINAPP_ENABLE_PICKLE"):  # other code in the process needs pickle; the app accepts JSON only
    kombu.enable_insecure_serializers(["pickle"])


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


# -- for test_celery_api_compat: callbacks, custom states, canvases, routing, worker options, beat --

app.conf.task_routes = {"plainapp.routed_by_configuration": {"queue": "routed"}}
if os.environ.get("PLAINAPP_BEAT_KEY"):  # `celery beat` runs `tick` every second
    app.conf.beat_schedule = {
        "tick-every-second": {"task": "plainapp.tick", "schedule": 1.0, "args": (os.environ["PLAINAPP_BEAT_KEY"],)}
    }


@app.task
def noted(value, key):
    """A callback: appends what it was given (a parent's result, or a failed task's id) to ``key``."""
    journal().rpush(key, json.dumps(value))
    return value


@app.task
def failed_id_noted(task_id):
    """An old-style error callback: sent as a task of its own, with the failed task's id."""
    journal().rpush(f"failed:{task_id}", 1)


@app.task
def failure_noted(request, exc, traceback, key):
    """An error callback with Celery's (request, exc, traceback) signature."""
    journal().rpush(key, json.dumps([request.id, repr(exc)]))


@app.task
def gated(key):
    """Notes its start (``started:<key>``, its pid), then runs until the test opens its gate
    (``go:<key>``), at most a minute: as long as the test needs, however slow the machine."""
    notes = journal()
    notes.rpush(f"started:{key}", os.getpid())
    deadline = time.time() + 60
    while not notes.exists(f"go:{key}") and time.time() < deadline:
        time.sleep(0.05)
    return key


@app.task(bind=True)
def in_progress(self, key):
    """Reports a custom PROGRESS state, then runs until the test opens its gate (``go:<key>``)."""
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    gated.run(key)
    return "finished"


@app.task(bind=True)
def progress_after_gate(self, key):
    """Runs until the test opens its gate (``go:<key>``), then reports a custom PROGRESS state."""
    gated.run(key)
    self.update_state(state="PROGRESS", meta={"done": 1, "total": 2})
    return "finished"


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task(bind=True)
def whoami(self):
    """The worker that ran it, and the queue it came from."""
    return [self.request.hostname, self.request.delivery_info.get("routing_key")]


@app.task(bind=True)
def routed_by_configuration(self):
    """Sent to the "routed" queue by ``task_routes``."""
    return self.request.hostname


@app.task
def pid():
    return os.getpid()


@app.task
def tick(key):
    journal().rpush(f"tick:{key}", time.time())


# -- for test_url_only_migration: ff_* options on Celery's own task class -----------------------


@app.task(ff_budgets=["plainapp-tokens"])
def spend_tokens(tokens):
    """Reports ``tokens`` spent to the task's own budget, as the README's example does."""
    import ff_celery  # in the task only: the app module never imports ff_celery

    ff_celery.report_usage(tokens=tokens)
    return tokens


@app.task
def reports_without_budget():
    import ff_celery

    ff_celery.report_usage(tokens=1)


@app.task(ff_quota="plainapp-one-at-a-time")
def one_at_a_time(key, seconds):
    """Runs ``seconds``, then appends when it started and ended to ``span:<key>``."""
    started = time.time()
    time.sleep(seconds)
    journal().rpush(f"span:{key}", json.dumps([started, time.time()]))


# -- for test_celery_canvas_mechanism: canvases on Celery's own mechanism (a redis:// backend) --


@app.task
def identity(value):
    return value


@app.task(bind=True)
def published_eta(self):
    """The ``eta`` the task was published with, as the task sees it."""
    return self.request.eta


@app.task
def counted(key):
    """Counts its runs in ``key``."""
    return journal().incr(key)


@app.task(soft_time_limit=1)
def survives_soft_limit(value, gate):
    """Waits for a gate nobody opens (``go:<gate>``), catches its soft time limit, returns ``value``."""
    try:
        gated.run(gate)
    except SoftTimeLimitExceeded:
        return value
    return None
