"""An approval gate: a task that waits for a person, suspended, and resumes on a signed callback.

``showcase.tasks.request_approval`` creates a waitpoint, "emails" its approve/reject links
(HTTP callbacks with the waitpoint's HMAC token) and waits. This script starts an embedded
Valkey/Redis, a real ``celery -A showcase worker -c 1`` and a ``SignalServer`` (the callback
endpoint), then shows:

- the task is SUSPENDED and holds no worker slot: another task runs on the only slot meanwhile;
- a forged callback (a made-up token) is rejected with 403 and the task keeps waiting;
- clicking the real link (a POST with urllib) resumes it: the task runs again from the top and
  its wait returns the approval, which is in its result.

Stops everything it started.

    .venv/bin/python examples/approval_gate.py
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent


def post(url: str, payload: dict[str, str]) -> tuple[int, dict[str, object]]:
    """A click on a callback link: POST with a JSON body; answers (status, JSON reply)."""
    headers = {"Content-Type": "application/json", "X-Signal-Source": "approvals-ui"}
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for_state(result, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while result.state != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {result.id} is {result.state}, not {state}")
        time.sleep(0.05)


def main() -> None:
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://")
        os.environ["SHOWCASE_URL"] = url
        sys.path.insert(0, str(HERE))
        from showcase import launch
        from showcase.tasks import MAILBOX, add, request_approval, store

        from ff_celery.features.signals import suspended_waitpoint
        from ff_celery.web.signals import SignalServer

        print(f"embedded server {server.url} (pid {server.pid})")
        callbacks = SignalServer(url, host="127.0.0.1", port=0).start()
        try:
            print(f"signal server (HTTP callbacks) on {callbacks.base_url}")
            with launch.worker(url, concurrency=1, name="approvals"):
                result = request_approval.delay("invoice INV-1042", 1200, callbacks.base_url)
                print(f"\nrequest_approval('invoice INV-1042', 1200 EUR) submitted: task {result.id}")
                _, raw_mail = store().blpop(MAILBOX, timeout=30)
                mail = json.loads(raw_mail)
                print(f"   mail to {mail['to']}: {mail['subject']}")
                print(f"   approve link: {mail['approve'].split('?')[0]}?token=…")

                wait_for_state(result, "SUSPENDED")
                point = suspended_waitpoint(result)
                print(f"   state: {result.state}, waiting for {result.info['signal_names']} "
                      f"on waitpoint {point.name!r} ({point.waitpoint_id})")  # fmt: skip
                meanwhile = add.delay(20, 22).get(timeout=10)
                print(f"   the only worker slot is free: add(20, 22) ran meanwhile -> {meanwhile}")

                key_id = point.token.split(":")[0]  # a token is "<key id>:<HMAC>"; forge the HMAC
                forged_point = point.model_copy(update={"token": f"{key_id}:{'0' * 40}"})
                forged = forged_point.callback_url(callbacks.base_url, "approve")
                status, reply = post(forged, {"by": "mallory"})
                print(f"\nforged callback (made-up token) -> {status} {reply['error']}; task still {result.state}")

                sent = time.monotonic()
                status, reply = post(mail["approve"], {"by": "ada", "note": "within budget, ship it"})
                print(f"real approve link clicked         -> {status} {reply['effect']}")
                outcome = result.get(timeout=30)
                print(f"   the task resumed and finished in {1000 * (time.monotonic() - sent):.0f} ms -> {outcome}")
                print(f"   approved by {outcome['by']} via {outcome['via']}: {outcome['note']!r}")
                print(f"   mails in the mailbox now: {store().llen(MAILBOX)} (the run after the signal sent none)")
                status, reply = post(mail["reject"], {"by": "ada"})
                print(f"the reject link, clicked too late -> {status} {reply['error']}")
        finally:
            callbacks.stop()
    print("\ndone: signal server, worker and server stopped")


if __name__ == "__main__":
    main()
