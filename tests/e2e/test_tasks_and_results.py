"""Publishing and results through a real prefork worker (concurrency 2)."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from celery import chain, chord, group
from celery.exceptions import TaskRevokedError

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.engine.duties.inspection import STATE_INDEXES, list_executions

from .conftest import HERE, execution, runs, wait_for


@pytest.fixture(autouse=True)
def worker(module_worker):
    return module_worker


def test_delay_returns_the_result_through_the_flowfabric_backend(ffapp):
    result = ffapp.add.delay(2, 3)
    assert result.get(timeout=10) == 5
    assert result.state == "SUCCESS"
    assert result.date_done is not None


def test_each_task_is_one_completed_execution_tagged_with_the_task(ffapp):
    result = ffapp.add.delay(1, 1)
    result.get(timeout=10)
    snapshot = execution(ffapp, result.id)
    assert snapshot.public_state == "completed"
    assert snapshot.tags["celery.task"] == "ffapp.add"
    assert snapshot.tags["celery.id"] == result.id
    assert snapshot.core["lane_id"] == "celery"
    assert [a.attempt_type for a in snapshot.attempts] == ["initial"]
    assert snapshot.policy.retry_policy is not None  # the task's retry options, published with it


def test_results_are_read_from_another_process_without_knowing_the_queue(ffapp, app_url):
    result = ffapp.add.delay(20, 22)
    result.get(timeout=10)
    reader = (
        "import ffapp, json; from celery.result import AsyncResult; "
        f"r = AsyncResult({result.id!r}, app=ffapp.app); print(json.dumps([r.state, r.result]))"
    )
    env = {"FFAPP_URL": app_url, "PYTHONPATH": str(HERE)}
    output = subprocess.run([sys.executable, "-c", reader], env=env, capture_output=True, text=True, timeout=30)
    assert json.loads(output.stdout.strip().splitlines()[-1]) == ["SUCCESS", 42]


def test_result_extended_fields_are_kept(ffapp, worker):
    result = ffapp.add.apply_async((3, 4), queue="celery")
    result.get(timeout=10)
    assert (result.name, result.args, result.kwargs, result.queue) == ("ffapp.add", [3, 4], {}, "celery")
    assert result.worker == worker.name


def test_an_unknown_task_id_is_pending(ffapp):
    assert ffapp.app.AsyncResult("no-such-task").state == "PENDING"


def test_a_failure_is_recorded_with_its_exception_and_traceback(ffapp):
    result = ffapp.boom.delay()
    with pytest.raises(KeyError):
        result.get(timeout=10)
    assert result.state == "FAILURE"
    assert "KeyError" in result.traceback
    snapshot = execution(ffapp, result.id)
    assert snapshot.public_state == "failed"
    assert snapshot.core["failure_reason"] == "KeyError: nope"


def test_an_ignore_result_task_still_completes_its_execution(ffapp):
    result = ffapp.fire_and_forget.delay()
    assert wait_for(lambda: execution(ffapp, result.id).public_state == "completed")
    assert ffapp.app.backend.engine.result(ffapp.app.backend.engine.resolve(result.id)) is None
    assert result.state == "PENDING"  # no result is kept, as Celery answers
    assert len(runs(ffapp, result.id)) == 1


def test_a_countdown_is_held_by_the_engine_not_by_the_worker(ffapp, worker):
    started = time.time()
    # submit treats an eta under 1 s away as "now": 3 s leaves a loaded machine 2 s to publish
    result = ffapp.record_run.apply_async(("late",), countdown=3)
    assert execution(ffapp, result.id).public_state == "delayed"  # unclaimed: in no worker's memory
    assert result.get(timeout=15) == "late"
    ran_at = float(runs(ffapp, result.id)[0].rsplit(":", 1)[1])
    assert ran_at - started >= 2.9


def test_expires_is_the_execution_deadline_and_an_expired_task_is_revoked(ffapp):
    result = ffapp.record_run.apply_async(("never",), countdown=3, expires=1)
    eid = ffapp.app.backend.engine.resolve(result.id)
    assert ffapp.app.backend.engine.redis.zscore(PartitionKeys(eid.partition).execution_deadline, eid) is not None
    with pytest.raises(TaskRevokedError):
        result.get(timeout=15)
    assert result.state == "REVOKED"
    assert execution(ffapp, result.id).public_state == "expired"
    assert runs(ffapp, result.id) == []


def test_a_task_id_published_again_is_one_execution_while_it_lives_and_runs_again_once_it_ended(ffapp):
    task_id = f"fixed-{time.time_ns()}"
    first = ffapp.gated.apply_async(task_id=task_id)
    assert wait_for(lambda: len(runs(ffapp, task_id)) == 1)  # running
    ffapp.gated.apply_async(task_id=task_id)  # e.g. a message duplicated in flight
    running = execution(ffapp, task_id)
    # the publish has returned, so its create has been answered: the lane holds no other execution of the id
    engine, states = ffapp.app.backend.engine, [state for state in STATE_INDEXES if state != "completed"]
    of_the_id = [
        run.execution_id for run in list_executions(engine, "celery", states, limit=1000) if run.task_id == task_id
    ]
    assert of_the_id == [running.execution_id]
    ffapp.runs().set(f"ffapp:go:{task_id}", 1)
    assert first.get(timeout=15) == "opened"
    assert runs(ffapp, task_id)[0].startswith("start") and len(runs(ffapp, task_id)) == 2  # start, finish
    # published after it ended: a new run, as Celery's brokers run every message
    assert ffapp.gated.apply_async(task_id=task_id).get(timeout=15) == "opened"
    assert [entry.split(":")[0] for entry in runs(ffapp, task_id)] == ["start", "finish", "start", "finish"]
    assert execution(ffapp, task_id).execution_id != running.execution_id


def test_a_revoked_task_id_published_again_stays_revoked(ffapp):
    task_id = f"revoked-{time.time_ns()}"
    first = ffapp.record_run.apply_async((7,), task_id=task_id, countdown=60)
    first.revoke()
    assert wait_for(lambda: first.state == "REVOKED")
    with pytest.raises(TaskRevokedError):  # as Celery's workers keep a revoked id revoked
        ffapp.record_run.apply_async((7,), task_id=task_id).get(timeout=15)
    assert runs(ffapp, task_id) == []


def test_chain_group_and_chord_work(ffapp):
    assert chain(ffapp.add.s(1, 1), ffapp.add.s(10), ffapp.add.s(100))().get(timeout=15) == 112
    assert group(ffapp.add.s(i, i) for i in range(5))().get(timeout=15) == [0, 2, 4, 6, 8]
    assert chord(ffapp.add.s(i, 1) for i in range(4))(ffapp.xsum.s()).get(timeout=15) == 10


def test_a_groups_get_raises_at_its_first_failure_while_earlier_members_still_run(ffapp):
    # Celery's native join, as on Redis: results in the order they become ready
    outcome = group([ffapp.tracked_sleep.s(30), ffapp.boom.s()])()
    with pytest.raises(KeyError):
        outcome.get(timeout=20)
    sleeper = outcome.results[0]
    assert not sleeper.ready()
    sleeper.revoke(terminate=True)
    with pytest.raises(TaskRevokedError):
        sleeper.get(timeout=15)


def test_a_task_replaced_by_a_signature_returns_the_replacements_result_and_runs_once(ffapp):
    assert ffapp.replaced_by_add.delay(2, 5).get(timeout=15) == 7
    chained = ffapp.replaced_by_chain.delay(1)
    assert chained.get(timeout=15) == 12
    engine = ffapp.app.backend.engine
    replaced = ExecutionId(ffapp.runs().get(f"ffapp:replaced-execution:{chained.id}").decode())
    # not left to be re-run; the replacement may finish before the replaced task's Ignore is recorded
    assert wait_for(lambda: engine.snapshot(replaced).public_state == "completed")
    assert engine.resolve(chained.id) != replaced  # the task id now names the replacement
    assert len(runs(ffapp, chained.id)) == 1


def test_a_task_raising_ignore_ends_its_execution_and_records_no_state(ffapp):
    result = ffapp.ignored.delay()
    assert wait_for(lambda: execution(ffapp, result.id).public_state == "completed")
    assert len(runs(ffapp, result.id)) == 1
    assert result.state == "PENDING"  # as in Celery: Ignore records nothing


def test_revoking_a_running_task_terminates_it_and_cancels_its_execution(ffapp):
    result = ffapp.tracked_sleep.delay(10)
    assert wait_for(lambda: runs(ffapp, result.id))
    result.revoke()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=15)
    assert execution(ffapp, result.id).public_state == "cancelled"  # terminal: never run again
    (started,) = runs(ffapp, result.id)
    pool_process = int(started.split(":")[2])
    # the process that ran it is gone, so nothing can record its finish any more
    assert wait_for(lambda: process_gone(pool_process), timeout=30)
    assert [entry.split(":")[0] for entry in runs(ffapp, result.id)] == ["start"]


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_celery_inspect_ping_answers_through_the_transport(ffapp, worker, app_url):
    env = {"FFAPP_URL": app_url, "PYTHONPATH": str(HERE)}
    output = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "ffapp", "inspect", "ping", "-d", worker.name, "-t", "5"],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert output.returncode == 0, output.stdout + output.stderr
    assert "pong" in output.stdout


def test_the_bare_celery_cli_knows_the_flowfabric_scheme(app_url):
    output = subprocess.run(
        [sys.executable, "-m", "celery", "-b", app_url, "--result-backend", app_url, "report"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert output.returncode == 0, output.stderr
    assert "transport:flowfabric" in output.stdout


def test_the_celery_command_runs_ff_celery_commands(app_url):
    redis_url = app_url.replace("flowfabric://", "redis://", 1)
    output = subprocess.run(
        [sys.executable, "-m", "celery", "flowfabric", "library", "status", "--url", redis_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert output.returncode == 0, output.stderr
    assert "loaded: ff_celery-" in output.stdout


def test_worker_events_reach_an_event_receiver(ffapp):
    """What Flower consumes: task events from the workers' event fanout."""
    seen: list[str] = []
    receivers = []

    def listen() -> None:
        with ffapp.app.connection_for_read() as connection:
            receiver = ffapp.app.events.Receiver(
                connection, handlers={"task-succeeded": lambda e: seen.append(e["uuid"])}
            )
            receivers.append(receiver)
            with contextlib.suppress(socket.timeout):
                receiver.capture(limit=None, timeout=20, wakeup=True)

    def an_event_arrives() -> bool:
        """A task's success event reaches the receiver (false until it has subscribed: the
        events of tasks that ran before are gone, as on any fanout)."""
        result = ffapp.add.delay(5, 5)
        result.get(timeout=10)
        return wait_for(lambda: result.id in seen, timeout=2)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        assert wait_for(lambda: receivers)
        assert wait_for(an_event_arrives, timeout=60, interval=0)
    finally:
        if receivers:
            receivers[0].should_stop = True
        listener.join(timeout=30)
