"""A typical small Celery project, running on FlowFabric: only its URLs changed."""

import os

from celery import Celery

URL = os.environ.get("PROJ_URL", "flowfabric://127.0.0.1:6379/0")

app = Celery("proj", broker=URL, backend=URL, include=["proj.tasks"])
app.conf.result_extended = True
app.conf.broker_transport_options = {"lease_ttl_ms": 3000}
