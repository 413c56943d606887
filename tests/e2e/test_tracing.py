"""OpenTelemetry traces (``flowfabric_tracing``): one trace per task, from the publishing
process through every attempt in real workers: a retry, a resume after a signal and a
reclaim after a ``kill -9`` continue the trace the publish started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ff_celery
from ff_celery.features.signals import suspended_waitpoint

from .conftest import HERE, runs, wait_for

PUBLISH = """
import json, ffapp
print(json.dumps({
    "flaky": ffapp.flaky.apply_async((1,), queue="traced").id,
    "approval": ffapp.await_approval.apply_async(queue="traced").id,
    "sleeper": ffapp.tracked_sleep.apply_async((3,), queue="traced-doomed").id,
}))
"""


def spans_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_a_trace_follows_a_task_through_retries_resumes_and_reclaims(ffapp, app_url, start_worker, tmp_path):
    spans_file = tmp_path / "spans.jsonl"
    env = {"FFAPP_TRACE_FILE": str(spans_file)}
    publisher = subprocess.run(
        [sys.executable, "-c", PUBLISH], cwd=HERE, capture_output=True, text=True, timeout=60,
        env={**os.environ, "FFAPP_URL": app_url, "PYTHONPATH": str(HERE), **env},
    )  # fmt: skip
    assert publisher.returncode == 0, publisher.stderr
    ids = json.loads(publisher.stdout)

    doomed = start_worker(concurrency=1, queues="traced-doomed", env=env)
    assert wait_for(lambda: runs(ffapp, ids["sleeper"]) != [], timeout=30)
    doomed.kill()  # mid-run: another worker reclaims the execution once its lease lapses
    start_worker(concurrency=1, queues="traced,traced-doomed", env=env)

    assert ffapp.app.AsyncResult(ids["flaky"]).get(timeout=30) == 1
    approval = ffapp.app.AsyncResult(ids["approval"])
    assert wait_for(lambda: approval.state == "SUSPENDED", timeout=30)
    point = suspended_waitpoint(approval)
    ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "approve", {"by": "otel"})
    assert approval.get(timeout=30)["signals"][0][0] == "approve"
    assert ffapp.app.AsyncResult(ids["sleeper"]).get(timeout=60) == 3

    def of(task_id: str, kind: str) -> list[dict]:
        return [
            span
            for span in spans_in(spans_file)
            if span["name"].startswith(kind) and span["attributes"].get("celery.task_id", task_id) == task_id
            and (kind != "claim" or span["attributes"].get("ff.execution_id") == execution_of(task_id))
        ]  # fmt: skip

    def execution_of(task_id: str) -> str:
        return str(ffapp.app.backend.engine.resolve(task_id))

    assert wait_for(lambda: len(of(ids["sleeper"], "run")) == 1, timeout=30)  # the killed attempt never ended
    for task_id, attempts in ((ids["flaky"], 2), (ids["approval"], 2), (ids["sleeper"], 1)):
        publish = min(of(task_id, "publish"), key=lambda span: span["start_time"])
        trace_id = publish["context"]["trace_id"]
        run_spans = sorted(of(task_id, "run"), key=lambda span: span["start_time"])
        assert len(run_spans) == attempts, run_spans
        assert {span["context"]["trace_id"] for span in run_spans + of(task_id, "claim")} == {trace_id}
        assert run_spans[0]["parent_id"] == publish["context"]["span_id"]
        assert run_spans[-1]["attributes"]["celery.state"] == "SUCCESS"

    flaky_runs = sorted(of(ids["flaky"], "run"), key=lambda span: span["start_time"])
    assert [span["attributes"]["celery.state"] for span in flaky_runs] == ["RETRY", "SUCCESS"]
    approval_runs = sorted(of(ids["approval"], "run"), key=lambda span: span["start_time"])
    assert approval_runs[0]["attributes"]["celery.state"] == "IGNORED"  # suspended: its slot freed
    sleeper_claims = sorted(of(ids["sleeper"], "claim"), key=lambda span: span["end_time"])
    # the killed worker's claim, then the claim of the attempt the scanner reclaimed
    assert [span["attributes"]["ff.attempt_index"] for span in sleeper_claims] == [0, 1]
    assert [span["attributes"]["ff.attempt_type"] for span in sleeper_claims] == ["initial", "resumed"]
