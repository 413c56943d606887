"""The showcase app: a Celery app on FlowFabric, configured from SHOWCASE_URL.

The scanner intervals are short (the defaults are FlowFabric's, made for servers, not for a
demo that should answer in a second)."""

import os

from celery import Celery

import ff_celery

URL = os.environ.get("SHOWCASE_URL", "flowfabric://127.0.0.1:6379/0")
SCAN_S = 0.2

app = Celery("showcase", broker=URL, backend=URL, include=["showcase.tasks"])
ff_celery.install(app)
app.conf.update(
    result_extended=True,
    broker_transport_options={"lease_ttl_ms": 3000, "poll_interval": 0.5},
    flowfabric_scanner_settings={
        "promote_interval_s": SCAN_S,
        "lease_expiry_interval_s": SCAN_S,
        "attempt_timeout_interval_s": SCAN_S,
        "deadline_interval_s": SCAN_S,
        "suspension_timeout_interval_s": SCAN_S,
        "pending_waitpoint_interval_s": SCAN_S,
        "unblock_interval_s": SCAN_S,
        "leader_ttl_s": 2.0,
    },
)
