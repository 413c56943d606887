"""Celery's own API on an app migrated by its URLs alone (``plainapp``: no ``import ff_celery``,
no ``install()``), observed as a Celery user observes it on Redis: ``link``/``link_error``
callbacks, custom states from ``update_state``, the ``chunks``/``map``/``starmap`` canvases,
routing by queue, exchange and ``task_routes``, ``task_create_missing_queues=False``, the
worker options ``-O fair``, ``--autoscale`` and ``--max-tasks-per-child``, ``celery beat``,
``celery purge`` and ``celery inspect``. Publishers are fresh interpreters that import only the
app; workers and beat are real ``celery`` subprocesses.

``celery inspect scheduled`` lists the tasks the engine (not the worker) holds until their ETA."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis

from ff_celery.integration.context import engine_for_url

from .conftest import HERE, Worker, layout, publish, wait_for

#: The scripts' own poll (as conftest's ``wait_for``): True once ``predicate()`` holds.
SCRIPT_WAIT_FOR = """
import time
def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
"""

pytestmark = pytest.mark.standalone  # plain Celery apps keep results in databases > 0


def run(env: dict[str, str], code: str) -> object:
    """``publish`` with ``wait_for`` defined in the script."""
    return publish(env, SCRIPT_WAIT_FOR + textwrap.dedent(code))


def celery(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``celery -A plainapp ...`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "plainapp", *args],
        cwd=HERE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def inspect(env: dict[str, str], worker: Worker, *command: str) -> object:
    """``celery inspect <command> --json`` answered by ``worker``: its reply."""
    done = celery(env, "inspect", *command, "-d", worker.name, "-t", "10", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)[worker.name]


@pytest.fixture(scope="module")
def env(ff_server) -> dict[str, str]:
    """Broker and backend on databases of this module's own."""
    return layout(ff_server, 10, "flowfabric://{base}/11")


@pytest.fixture(scope="module")
def worker(app_url, env, tmp_path_factory) -> Iterator[Worker]:
    """A prefork worker (concurrency 2) on the default queue, shared by the module."""
    started = Worker(app_url, tmp_path_factory.mktemp("compat"), app="plainapp", env=env).wait_ready()
    yield started
    started.shut_down()


@pytest.fixture(scope="module")
def journal(ff_server) -> redis.Redis:
    """What plainapp's tasks noted (``plainapp.journal()``)."""
    return redis.Redis(port=ff_server.port, db=2, decode_responses=True)


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


def test_link_runs_with_the_result_and_link_error_runs_on_failure(env, worker, journal, key):
    code = f"""
    ok = add.apply_async((2, 3), link=noted.s("{key}:ok"))
    bad = fails.apply_async(("broken",), link_error=[failed_id_noted.s(), failure_noted.s("{key}:error")])
    value, error = ok.get(timeout=30), bad.get(timeout=30, propagate=False).args[0]
    print(json.dumps([value, error, bad.id, [child.get(timeout=30) for child in ok.children]]))
    """
    value, error, failed_id, children = run(env, code)
    assert (value, error) == (5, "broken")
    assert children == [5]  # the callback is the parent's child, as Celery records it
    noted = (f"{key}:ok", f"failed:{failed_id}", f"{key}:error")  # callbacks run after the outcome is stored
    assert wait_for(lambda: all(journal.llen(name) for name in noted), timeout=30)
    assert journal.lrange(f"{key}:ok", 0, -1) == ["5"]  # the callback got the parent's result
    assert journal.lrange(f"failed:{failed_id}", 0, -1) == ["1"]  # old-style errback: sent the task id
    # new-style errback (request, exc, traceback): run by the worker as the task fails
    assert json.loads(journal.lindex(f"{key}:error", 0)) == [failed_id, "ValueError('broken')"]


def test_a_custom_state_from_update_state_is_visible_while_the_task_runs(env, worker, key):
    code = f"""
    result = in_progress.delay("{key}")
    seen = wait_for(lambda: result.state == "PROGRESS")
    during = [result.state, result.info]
    journal().set("go:{key}", 1)
    print(json.dumps([seen, during, result.get(timeout=30), result.state]))
    """
    assert run(env, code) == [True, ["PROGRESS", {"done": 1, "total": 2}], "finished", "SUCCESS"]


def test_get_with_on_message_hears_each_state_the_task_reports(env, worker, key):
    code = f"""
    import threading
    result = progress_after_gate.delay("{key}")

    def open_gate_once_get_listens():  # get() listens on the task's Pub/Sub channel (Redis's or ours)
        channels = [f"celery-task-meta-{{result.id}}", f"ffc:done:celery:{{result.id}}"]
        wait_for(lambda: any(count for _, count in journal().pubsub_numsub(*channels)))
        journal().set("go:{key}", 1)

    threading.Thread(target=open_gate_once_get_listens, daemon=True).start()
    heard = []
    try:
        outcome = result.get(timeout=30, on_message=lambda meta: heard.append([meta["status"], meta["result"]]))
    except Exception as exc:
        outcome = repr(exc)
    finally:
        journal().set("go:{key}", 1)
    print(json.dumps([outcome, heard]))
    """
    assert run(env, code) == ["finished", [["PROGRESS", {"done": 1, "total": 2}], ["SUCCESS", "finished"]]]


def test_chunks_map_and_starmap_give_celerys_results(env, worker):
    code = """
    chunked = add.chunks(zip(range(6), range(6)), 2)().get(timeout=30)
    mapped = xsum.map([[1, 2], [3, 4, 5]]).delay().get(timeout=30)
    starmapped = add.starmap([(1, 2), (3, 4)]).delay().get(timeout=30)
    print(json.dumps([chunked, mapped, starmapped]))
    """
    assert run(env, code) == [[[0, 2], [4, 6], [8, 10]], [3, 12], [3, 7]]


def test_queue_exchange_and_task_routes_send_a_task_to_the_worker_of_that_queue(env, worker, start_worker):
    routed = start_worker(app="plainapp", env=env, queues="routed", concurrency=1)
    code = """
    by_queue = whoami.apply_async(queue="routed").get(timeout=30)
    by_exchange = whoami.apply_async(exchange="routed", routing_key="routed").get(timeout=30)
    by_task_routes = routed_by_configuration.delay().get(timeout=30)
    by_default = whoami.delay().get(timeout=30)
    print(json.dumps([by_queue, by_exchange, by_task_routes, by_default]))
    """
    by_queue, by_exchange, by_task_routes, by_default = run(env, code)
    assert by_queue == by_exchange == [routed.name, "routed"]
    assert by_task_routes == routed.name
    assert by_default == [worker.name, "celery"]  # the worker of the other queue got none of them


def test_add_consumer_and_cancel_consumer_change_the_queues_a_running_worker_serves(env, worker):
    code = f"""
    control, name = app.control, {worker.name!r}
    serves = lambda: sorted(q["name"] for q in control.inspect([name], timeout=10).active_queues()[name])
    added = control.add_consumer("added-at-runtime", destination=[name], reply=True)
    serving_both = wait_for(lambda: serves() == ["added-at-runtime", "celery"])  # the worker acts just after its reply
    ran_by = whoami.apply_async(queue="added-at-runtime").get(timeout=30)
    cancelled = control.cancel_consumer("added-at-runtime", destination=[name], reply=True)
    serving_one = wait_for(lambda: serves() == ["celery"])
    print(json.dumps([bool(added), serving_both, ran_by, bool(cancelled), serving_one]))
    """
    assert run(env, code) == [True, True, [worker.name, "added-at-runtime"], True, True]


def test_without_create_missing_queues_an_undeclared_queue_raises_queue_not_found(env, worker):
    code = """
    from celery.exceptions import QueueNotFound
    app.conf.task_create_missing_queues = False
    try:
        add.apply_async((1, 1), queue="undeclared")
        outcome = "published"
    except QueueNotFound as exc:
        outcome = f"QueueNotFound: {exc}"
    print(json.dumps([outcome, add.delay(1, 1).get(timeout=30)]))
    """
    outcome, value = run(env, code)
    assert outcome.startswith("QueueNotFound: ") and "'undeclared'" in outcome
    assert value == 2  # the declared default queue still works
    counts = engine_for_url(env["PLAINAPP_BROKER"]).lane_counts("undeclared")
    assert not any(counts.values())  # nothing was created


def test_a_fair_worker_runs_short_tasks_while_a_long_one_holds_a_process(env, start_worker, key):
    start_worker(app="plainapp", env=env, queues="fair", concurrency=2, extra_args=["-O", "fair"])
    code = f"""
    long = gated.apply_async(("{key}",), queue="fair")
    started = wait_for(lambda: journal().exists("started:{key}"))
    short = [add.apply_async((n, n), queue="fair") for n in range(4)]
    values = [result.get(timeout=30) for result in short]
    long_was_running = not long.ready()
    journal().set("go:{key}", 1)
    print(json.dumps([started, values, long_was_running, long.get(timeout=30)]))
    """
    assert run(env, code) == [True, [0, 2, 4, 6], True, key]


def test_an_autoscaling_worker_grows_its_pool_to_run_three_tasks_at_once(env, start_worker, journal, key):
    start_worker(app="plainapp", env=env, queues="autoscaled", concurrency=1, extra_args=["--autoscale=3,1"])
    keys = [f"{key}-{n}" for n in range(3)]
    code = f"""
    keys = {keys!r}
    results = [gated.apply_async((k,), queue="autoscaled") for k in keys]
    all_started = wait_for(lambda: all(journal().exists(f"started:{{k}}") for k in keys), timeout=60)
    pids = [journal().lindex(f"started:{{k}}", 0).decode() for k in keys if all_started]
    for k in keys:
        journal().set(f"go:{{k}}", 1)
    print(json.dumps([all_started, len(set(pids)), [result.get(timeout=30) for result in results]]))
    """
    assert run(env, code) == [True, 3, keys]  # three processes ran them side by side


def test_with_max_tasks_per_child_1_each_task_runs_in_a_new_process(env, start_worker):
    started = start_worker(
        app="plainapp", env=env, queues="one-task-children", concurrency=1, extra_args=["--max-tasks-per-child=1"]
    )
    code = 'print(json.dumps([pid.apply_async(queue="one-task-children").get(timeout=30) for _ in range(3)]))'
    pids = run(env, code)
    assert len(set(pids)) == 3
    assert started.pid not in pids


def test_celery_beat_sends_its_scheduled_task_to_the_workers(env, worker, journal, key, tmp_path):
    log = tmp_path / "beat.log"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "plainapp", "beat", "-s", str(tmp_path / "schedule"),
         "-l", "info", "--logfile", str(log)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), **env, "PLAINAPP_BEAT_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        ran = wait_for(lambda: journal.llen(f"tick:{key}") >= 2 or beat.poll() is not None, timeout=45)
        assert ran and beat.poll() is None, log.read_text() if log.exists() else "no beat log"
    finally:
        beat.send_signal(signal.SIGTERM)
        try:
            beat.wait(timeout=15)
        except subprocess.TimeoutExpired:
            beat.kill()
            beat.wait(timeout=10)
    assert "Sending due task tick-every-second (plainapp.tick)" in log.read_text()


def test_celery_purge_removes_queued_messages_that_a_later_worker_then_never_runs(env, start_worker, journal, key):
    run(env, f'print(json.dumps([noted.apply_async((n, "{key}"), queue="purged").id for n in range(3)]))')
    purged = celery(env, "purge", "-f", "-Q", "purged")
    assert purged.returncode == 0, purged.stderr
    assert "Purged 3 messages from 1 known task queue." in purged.stdout
    start_worker(app="plainapp", env=env, queues="purged", concurrency=1)
    # published after the purged ones: had they survived, the worker (one process) would run them first
    after = run(env, f'print(json.dumps(noted.apply_async(("after", "{key}"), queue="purged").get(timeout=30)))')
    assert after == "after"
    assert journal.lrange(key, 0, -1) == ['"after"']


def test_inspect_active_and_query_task_show_a_running_task(env, worker, journal, key):
    task_id = run(env, f'print(json.dumps(gated.delay("{key}").id))')
    try:
        assert wait_for(lambda: journal.exists(f"started:{key}"), timeout=30)
        active = inspect(env, worker, "active")
        queried = inspect(env, worker, "query_task", task_id)
        reserved = inspect(env, worker, "reserved")
    finally:
        journal.set(f"go:{key}", 1)
    assert [(task["name"], task["args"]) for task in active if task["id"] == task_id] == [("plainapp.gated", [key])]
    state, request = queried[task_id]
    assert (state, request["id"], request["name"]) == ("active", task_id, "plainapp.gated")
    assert task_id not in {task["id"] for task in reserved}  # running, so not merely reserved


def test_inspect_registered_lists_the_apps_tasks(env, worker):
    registered = inspect(env, worker, "registered")
    assert {"plainapp.add", "plainapp.doubler", "plainapp.gated", "plainapp.tick"} <= set(registered)


def test_inspect_revoked_lists_a_revoked_task_id(env, worker):
    task_id = run(env, "result = add.apply_async((1, 1), countdown=60); result.revoke(); print(json.dumps(result.id))")
    assert task_id in inspect(env, worker, "revoked")


def scheduled_entry(env: dict[str, str], worker: Worker, task_id: str) -> dict:
    """The task's entry in ``worker``'s ``inspect scheduled`` reply, once it has one (ours is
    listed by the worker whose scanners lead: this module's only worker, once it leads)."""

    def listed() -> list[dict]:
        return [entry for entry in inspect(env, worker, "scheduled") if entry["request"]["id"] == task_id]

    assert wait_for(listed, timeout=30)
    (entry,) = listed()
    return entry


def revoke(env: dict[str, str], task_id: str) -> None:
    run(env, f"app.AsyncResult({task_id!r}).revoke(); print(1)")


def test_inspect_scheduled_shows_a_task_the_engine_holds_for_its_eta(env, worker):
    task_id = run(env, "print(json.dumps(add.apply_async((1, 2), countdown=60, priority=3).id))")
    try:
        entry = scheduled_entry(env, worker, task_id)
    finally:
        revoke(env, task_id)
    assert entry["request"]["name"] == "plainapp.add"
    assert (entry["request"]["args"], entry["request"]["kwargs"]) == ([1, 2], {})
    assert (entry["priority"], entry["request"]["delivery_info"]["priority"]) == (6, 3)
    assert entry["eta"] > datetime.now(timezone.utc).isoformat()
    assert [e for e in inspect(env, worker, "scheduled") if e["request"]["id"] == task_id] == []  # revoked


def test_inspect_scheduled_answers_field_by_field_what_celery_answers_on_redis(
    ff_server, app_url, env, worker, tmp_path
):
    on_redis = layout(ff_server, 12, "redis://{base}/13")
    on_redis["PLAINAPP_BROKER"] = on_redis["PLAINAPP_BROKER"].replace("flowfabric://", "redis://", 1)
    celery_worker = Worker(app_url, tmp_path, app="plainapp", env=on_redis)
    task_id = f"same-{uuid.uuid4().hex[:8]}"
    eta = (datetime.now(timezone.utc) + timedelta(minutes=10)).replace(microsecond=123456)
    publish = f"""
    from datetime import datetime
    add.apply_async((1,), {{"y": 2}}, eta=datetime.fromisoformat("{eta.isoformat()}"), priority=3, task_id="{task_id}")
    print(1)
    """
    try:
        celery_worker.wait_ready()
        run(env, publish)
        run(on_redis, publish)
        ours, celerys = scheduled_entry(env, worker, task_id), scheduled_entry(on_redis, celery_worker, task_id)
    finally:
        revoke(env, task_id)
        celery_worker.shut_down()
    assert (ours["request"].pop("hostname"), celerys["request"].pop("hostname")) == (worker.name, celery_worker.name)
    assert ours["eta"] == celerys["eta"] == eta.isoformat()  # to the microsecond
    assert ours["priority"] == celerys["priority"] == 6  # Celery's timer priority of ETA tasks
    for field in celerys["request"]:
        assert ours["request"][field] == celerys["request"][field], field
    assert ours == celerys


def test_inspect_scheduled_does_not_decode_a_body_the_app_does_not_accept(ff_server, app_url, tmp_path):
    env = layout(ff_server, 14, "flowfabric://{base}/15")  # this worker alone: its scanners lead
    pickling = Worker(app_url, tmp_path, app="plainapp", env={**env, "PLAINAPP_ENABLE_PICKLE": "1"})
    try:
        pickling.wait_ready()
        task_id = run(env, "print(json.dumps(add.apply_async((1, 2), countdown=600, serializer='pickle').id))")
        try:
            entry = scheduled_entry(env, pickling, task_id)
        finally:
            revoke(env, task_id)
    finally:
        pickling.shut_down()
    assert (entry["request"]["args"], entry["request"]["kwargs"]) == ("(1, 2)", "{}")  # what the publisher showed
