"""The Celery app the end-to-end tests run in real ``celery worker`` subprocesses.

Configured from the environment so the test process and its workers share it:
FFAPP_URL (flowfabric:// URL), FFAPP_LEASE_TTL_MS, FFAPP_SCAN_S (scanner intervals).
Tasks record what they do in Redis (``ffapp:runs:<task id>``) so tests can count runs.
"""

import os
import socket
import time

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

import ff_celery
from ff_celery.engine.core.connection import connect

URL = os.environ.get("FFAPP_URL", "flowfabric://127.0.0.1:6379/0")
SCAN_S = float(os.environ.get("FFAPP_SCAN_S", "0.2"))
#: FFAPP_QUEUE_SHARDS="queue=3,other=2": queues spread over several lanes.
QUEUE_SHARDS = {
    queue: int(shards)
    for queue, _, shards in (
        item.partition("=") for item in os.environ.get("FFAPP_QUEUE_SHARDS", "").split(",") if item
    )
}

app = Celery("ffapp", broker=URL, backend=URL)
ff_celery.install(app)
app.conf.update(
    result_extended=True,
    broker_transport_options={
        "lease_ttl_ms": int(os.environ.get("FFAPP_LEASE_TTL_MS", "2000")),
        "poll_interval": float(os.environ.get("FFAPP_POLL_INTERVAL", "0.5")),
        # FFAPP_QUEUE_SHARDS="queue=3,other=2": queues spread over several lanes
        "queue_shards": {
            queue: int(shards)
            for queue, shards in (
                item.split("=") for item in os.environ.get("FFAPP_QUEUE_SHARDS", "").split(",") if item
            )
        },
    },
    flowfabric_scanner_settings={
        "promote_interval_s": SCAN_S,
        "lease_expiry_interval_s": SCAN_S,
        "attempt_timeout_interval_s": SCAN_S,
        "deadline_interval_s": SCAN_S,
        "suspension_timeout_interval_s": SCAN_S,
        "pending_waitpoint_interval_s": SCAN_S,
        "unblock_interval_s": SCAN_S,
        "dependency_reconcile_interval_s": 5 * SCAN_S,
        "cancel_reconcile_interval_s": 5 * SCAN_S,
        "leader_ttl_s": 2.0,
    },
    worker_prefetch_multiplier=int(os.environ.get("FFAPP_PREFETCH", "1")),
)
if os.environ.get("FFAPP_TRACE_FILE"):  # OpenTelemetry spans of this process, one JSON object per line
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    spans = open(os.environ["FFAPP_TRACE_FILE"], "a")  # noqa: SIM115 (open for the process's life)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=spans, formatter=lambda span: span.to_json(indent=None) + "\n"))
    )
    trace.set_tracer_provider(provider)
    app.conf.flowfabric_tracing = True
if os.environ.get("FFAPP_METRICS_PORT"):
    app.conf.flowfabric_metrics_port = int(os.environ["FFAPP_METRICS_PORT"])
    app.conf.flowfabric_metrics_interval = 1.0  # the engine state, read this often: tests wait for it to move
if os.environ.get("FFAPP_RETENTION_SCAN_S"):  # a retention trimmer pass that often; queue "brief" keeps 1 s
    app.conf.flowfabric_scanner_settings["retention_interval_s"] = float(os.environ["FFAPP_RETENTION_SCAN_S"])
    app.conf.flowfabric_queue_retention = {"brief": 1}


def runs() -> redis.Redis:
    return connect(URL)  # a cluster client on a cluster


def record(task, event: str) -> None:
    runs().rpush(f"ffapp:runs:{task.request.id}", f"{event}:{socket.gethostname()}:{os.getpid()}:{time.time():.3f}")


@app.task
def add(x, y):
    return x + y


@app.task(ff_retention=1)
def briefly_kept(x):
    return x


@app.task(ff_retention=None)
def kept_forever(x):
    return x


@app.task
def beating(seconds, path):
    """Runs ``seconds``, appending ``<pid> <time>`` to the file at ``path`` every 50 ms."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with open(path, "a") as beats:
            beats.write(f"{os.getpid()} {time.time():.3f}\n")
        time.sleep(0.05)
    return seconds


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task(bind=True)
def collect(self, *args):
    """Records its run and answers the arguments it was given (what a canvas passed it)."""
    record(self, "run")
    return list(args)


@app.task
def note_error(request, exc, traceback):
    """An errback (Celery's new style): records which task failed, and how."""
    runs().rpush("ffapp:errbacks", f"{request.id} {type(exc).__name__} {exc}")


@app.task(bind=True)
def tracked_sleep(self, seconds):
    record(self, "start")
    time.sleep(seconds)
    record(self, "finish")
    return seconds


@app.task(bind=True)
def gated(self):
    """Runs until the test opens its gate (``ffapp:go:<task id>``), at most a minute: running for
    as long as the test needs, however slow the machine."""
    return wait_for_gate(self)


@app.task(bind=True, acks_late=False)
def gated_early_acked(self):
    """``gated``, acknowledged when it starts (Celery's own task class does so)."""
    return wait_for_gate(self)


def wait_for_gate(task) -> str:
    record(task, "start")
    deadline = time.time() + 60
    while not runs().exists(f"ffapp:go:{task.request.id}") and time.time() < deadline:
        time.sleep(0.05)
    record(task, "finish")
    return "opened"


@app.task(bind=True, default_retry_delay=0.1)
def retried_with_new_arguments(self, *args, **kwargs):
    if self.request.retries == 0:
        raise self.retry(args=("new",), kwargs={"by": "retry"})
    return [list(args), kwargs, self.request.retries]


@app.task(bind=True)
def record_run(self, value=None):
    record(self, "run")
    return value


@app.task(bind=True)
def sends_a_step_then_waits(self, step_id):
    """Publishes ``record_run`` as ``step_id`` (as a chain publishes its next step), runs until
    that step ran and the test opened its gate (``ffapp:go:<task id>``)."""
    record(self, "start")
    record_run.apply_async(("step",), task_id=step_id)
    deadline = time.time() + 60
    gates = (f"ffapp:runs:{step_id}", f"ffapp:go:{self.request.id}")
    while not all(runs().exists(gate) for gate in gates) and time.time() < deadline:
        time.sleep(0.05)
    return "sent"


@app.task(bind=True, max_retries=3, default_retry_delay=0.3)
def flaky(self, fail_times, countdown=None):
    record(self, f"attempt{self.request.retries}")
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"), countdown=countdown)
    return self.request.retries


@app.task(
    bind=True, autoretry_for=(ConnectionError,), retry_backoff=1, retry_backoff_max=4, retry_jitter=False, max_retries=2
)
def autoretried(self):
    record(self, f"attempt{self.request.retries}")
    raise ConnectionError("still down")


@app.task
def boom():
    raise KeyError("nope")


@app.task(ignore_result=True, bind=True)
def fire_and_forget(self):
    record(self, "run")
    return "not stored"


@app.task(bind=True, soft_time_limit=0.5)
def soft_limited(self):
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        record(self, "soft-limit")
        raise


@app.task(bind=True, time_limit=1)
def hard_limited(self):
    record(self, "start")
    time.sleep(30)


@app.task(bind=True)
def record_priority(self, label):
    record(self, f"run-{label}")
    return label


@app.task(bind=True)
def replaced_by_add(self, x, y):
    record(self, "replace")
    raise self.replace(add.s(x, y))


@app.task(bind=True)
def replaced_by_chain(self, x):
    record(self, "replace")
    runs().set(f"ffapp:replaced-execution:{self.request.id}", self.request.ff["execution_id"])
    raise self.replace(add.s(x, 1) | add.s(10))


@app.task(bind=True)
def ignored(self):
    from celery.exceptions import Ignore

    record(self, "run")
    raise Ignore()


@app.task(bind=True)
def await_approval(self, timeout=None, on_timeout="fail"):
    record(self, "run")
    signals = ff_celery.wait_for_signal("approve", "reject", timeout=timeout, on_timeout=on_timeout)
    record(self, "resumed")
    if signals.timed_out:
        return {"timed_out": True}
    return {"signals": [[s.name, s.payload, s.source_identity] for s in signals]}


@app.task(bind=True)
def early_waiter(self):
    """Hands out its waitpoint token, then waits once the test says so (signals may come first)."""
    waitpoint = ff_celery.waitpoint("early")
    runs().set(f"ffapp:waitpoint:{self.request.id}", waitpoint.model_dump_json())
    deadline = time.time() + 20
    while not runs().exists(f"ffapp:go:{self.request.id}") and time.time() < deadline:
        time.sleep(0.05)
    record(self, "waiting")
    signals = waitpoint.wait("go")
    return [s.name for s in signals]


@app.task(bind=True)
def spend_tokens(self, calls, tokens_per_call):
    """An LLM-style loop that reports its token use after each call."""
    for call in range(calls):
        ff_celery.report_usage(tokens=tokens_per_call, dedup_key=f"call-{call}")
        record(self, f"call{call}")
    return calls * tokens_per_call


@app.task(bind=True)
def quota_sleeper(self, seconds):
    record(self, "start")
    time.sleep(seconds)
    record(self, "finish")
    return seconds


@app.task(bind=True)
def streaming_report(self, steps, pause):
    for step in range(1, steps + 1):
        ff_celery.append_frame("log", f"line {step}", correlation_id=f"step-{step}")
        ff_celery.progress(100 * step / steps, f"step {step} of {steps}")
        time.sleep(pause)
    try:
        ff_celery.append_frame("log", "x" * 70_000)
    except Exception as exc:
        return getattr(exc, "code", repr(exc))
    return "too big frame accepted"
