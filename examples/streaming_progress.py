"""Streaming a long task's log and progress, followed live from another process.

``showcase.tasks.build_index`` indexes documents one by one; for each it appends a ``log``
frame (``ff_celery.append_frame``) and reports progress (``ff_celery.progress``: on the
execution, as a ``progress`` frame, and as Celery's ``PROGRESS`` state). This script starts
an embedded Valkey/Redis and a real ``celery -A showcase worker``, submits the task and:

- follows its output stream live with ``ff_celery.features.streams.follow``, drawing a progress bar
  from the progress frames and printing the log frames as they arrive;
- notes the Celery state (``AsyncResult.state`` / ``.info``) seen while it ran: ``PROGRESS``;
- after it finished, reads the whole stream again with ``read_frames`` (closed, with the
  reason) and prints the result.

Stops everything it started.

    .venv/bin/python examples/streaming_progress.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent
DOCUMENTS = [
    "annual report 2025",
    "board minutes march",
    "pricing sheet",
    "security audit findings",
    "supplier contract renewal",
    "travel policy",
    "q3 sales figures by region",
    "onboarding guide",
    "incident postmortem 42",
    "roadmap draft",
]


def bar(percent: float, width: int = 30) -> str:
    filled = round(width * percent / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}%"


def main() -> None:
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://")
        os.environ["SHOWCASE_URL"] = url
        sys.path.insert(0, str(HERE))
        from showcase import launch
        from showcase.celery import app
        from showcase.tasks import build_index

        from ff_celery.features.streams import follow, read_frames

        print(f"embedded server {server.url} (pid {server.pid})")
        with launch.worker(url, concurrency=1, name="indexer"):
            result = build_index.delay(DOCUMENTS, pause=0.25)
            print(f"\nbuild_index({len(DOCUMENTS)} documents) submitted: task {result.id}; following its stream\n")
            started = time.monotonic()
            celery_states = []
            for attempt, frame in follow(app, result.id, block_s=1.0):
                elapsed = time.monotonic() - started
                if frame.frame_type == "progress":
                    report = json.loads(frame.payload)
                    print(f"   {elapsed:5.2f} s  {bar(report['percent'])}  {report['message']}")
                    celery_states.append((result.state, result.info))  # what Celery clients see meanwhile
                else:
                    print(f"   {elapsed:5.2f} s  {frame.frame_type} (attempt {attempt}): {frame.payload}")
            print(f"\nthe stream ended with the task: {result.get(timeout=10)} ({result.state})")

            progress_states = [info for state, info in celery_states if state == "PROGRESS"]
            example = progress_states[len(progress_states) // 2] if progress_states else None
            print(f"Celery state read at each progress frame: PROGRESS {len(progress_states)} times out of "
                  f"{len(celery_states)}, e.g. AsyncResult.info = {example}")  # fmt: skip

            stream = read_frames(app, result.id)
            kinds = {kind: sum(1 for f in stream.frames if f.frame_type == kind) for kind in ("log", "progress")}
            print(f"read_frames afterwards: {len(stream.frames)} frames ({kinds['log']} log, {kinds['progress']} "
                  f"progress), closed: {stream.closed_reason}")  # fmt: skip
            for frame in stream.frames[:3]:
                correlation = frame.fields.get("correlation_id") or "-"
                print(f"   {frame.id}  {frame.frame_type:<8} correlation {correlation:<20} {frame.payload}")
            print(f"   ... and {len(stream.frames) - 3} more")
    print("\ndone: worker and server stopped")


if __name__ == "__main__":
    main()
