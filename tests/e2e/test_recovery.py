"""Crashes, stalls and shutdowns: leases make every task run to completion exactly once.

Workers here use a 2 s lease TTL (renewed every ~0.7 s) and 0.2 s scanner intervals.
"""

import os
import signal
import time

from .conftest import execution, runs, wait_for


def events(ffapp, task_id):
    return [entry.split(":")[0] for entry in runs(ffapp, task_id)]


def hosts(ffapp, task_id, event):
    return [entry.split(":")[2] for entry in runs(ffapp, task_id) if entry.startswith(event)]


def test_kill_9_of_a_worker_holding_tasks_loses_none(ffapp, start_worker):
    doomed = start_worker(concurrency=2)
    results = [ffapp.tracked_sleep.delay(1.5) for _ in range(6)]
    # killed mid-task, not in the moment between a task's "finish" and its completion
    assert wait_for(lambda: sum(events(ffapp, r.id) == ["start"] for r in results) >= 2)
    doomed.kill()  # its pool children die with it, mid-task
    survivor = start_worker(concurrency=2)
    assert [r.get(timeout=60) for r in results] == [1.5] * 6
    for r in results:
        finished = hosts(ffapp, r.id, "finish")
        assert len(finished) == 1  # completed exactly once
    interrupted = [r for r in results if events(ffapp, r.id).count("start") == 2]
    assert interrupted  # the ones the dead worker held ran again elsewhere
    for r in interrupted:
        snapshot = execution(ffapp, r.id)
        assert [a.attempt_type for a in snapshot.attempts] == ["initial", "reclaim"]
        assert snapshot.attempts[0].attempt_state == "interrupted_reclaimed"
    assert "ready" in survivor.text()


def test_a_task_longer_than_several_lease_ttls_runs_exactly_once(ffapp, start_worker):
    start_worker(concurrency=2)
    result = ffapp.tracked_sleep.delay(5)  # 2.5 lease TTLs, renewed in the background
    assert result.get(timeout=30) == 5
    assert events(ffapp, result.id) == ["start", "finish"]
    assert [a.attempt_type for a in execution(ffapp, result.id).attempts] == ["initial"]


def test_an_eta_task_beyond_every_timeout_runs_once_at_its_time(ffapp, start_worker):
    start_worker(concurrency=2)
    started = time.time()
    result = ffapp.record_run.apply_async(("on time",), countdown=6)  # 3 lease TTLs away
    assert result.get(timeout=30) == "on time"
    (entry,) = runs(ffapp, result.id)
    assert float(entry.rsplit(":", 1)[1]) - started >= 5.9


def test_a_stalled_worker_that_lost_its_lease_stops_the_task(ffapp, start_worker):
    # Both workers are up before the task runs: the 10 s run has to outlast only the lease
    # expiry and the reclaim, not a worker start on a loaded machine.
    workers = [start_worker(concurrency=1), start_worker(concurrency=1)]
    result = ffapp.tracked_sleep.delay(10)
    assert wait_for(lambda: events(ffapp, result.id) == ["start"])
    holder = execution(ffapp, result.id).core["current_worker_instance_id"]  # host:pid:...
    (stalled,) = [worker for worker in workers if str(worker.pid) == holder.split(":")[1]]
    os.kill(stalled.pid, signal.SIGSTOP)  # the main process stalls: no renewals, its child keeps running
    try:
        assert wait_for(lambda: events(ffapp, result.id).count("start") == 2, timeout=30)
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    # The stalled worker learned of the loss and killed its run instead of finishing it: that
    # run would have finished before the one that started after the lease expired.
    assert wait_for(lambda: "lease of ffapp.tracked_sleep" in stalled.text())
    assert result.get(timeout=40) == 10
    assert events(ffapp, result.id) == ["start", "start", "finish"]


def test_a_warm_shutdown_hands_back_reserved_tasks_at_once(ffapp, start_worker):
    stopping = start_worker(concurrency=1, env={"FFAPP_PREFETCH": "3", "FFAPP_LEASE_TTL_MS": "30000"})
    running = ffapp.tracked_sleep.delay(4)  # still running when the shutdown starts, on a loaded machine too
    reserved = [ffapp.record_run.delay(n) for n in range(2)]
    assert wait_for(lambda: events(ffapp, running.id) == ["start"])
    assert wait_for(lambda: all(execution(ffapp, r.id).public_state == "active" for r in reserved))
    stopping.stop()  # finishes the running task, hands back the two it never started
    assert running.get(timeout=10) == 4
    for r in reserved:
        assert execution(ffapp, r.id).public_state == "waiting"
    start_worker(concurrency=1)
    # with a 30 s lease, only an explicit hand-back lets them run this soon
    assert [r.get(timeout=20) for r in reserved] == [0, 1]


def test_a_broker_reconnect_does_not_duplicate_executions(ffapp, start_worker):
    start_worker(concurrency=2, env={"FFAPP_PREFETCH": "2"})
    results = [ffapp.tracked_sleep.delay(1) for _ in range(6)]
    assert wait_for(lambda: sum(bool(runs(ffapp, r.id)) for r in results) >= 2)
    killed = ffapp.runs().client_kill_filter(_type="normal", skipme=True)  # drop every client connection
    assert killed > 0
    assert [r.get(timeout=60) for r in results] == [1] * 6
    for r in results:
        assert events(ffapp, r.id).count("finish") == 1
        assert len(execution(ffapp, r.id).attempts) == 1  # handed back or kept, never re-put


def test_a_step_sent_again_by_a_task_rerun_after_a_crash_runs_once(ffapp, start_worker):
    doomed = start_worker(concurrency=2)
    step_id = f"step-{time.time_ns()}"
    parent = ffapp.sends_a_step_then_waits.delay(step_id)
    assert wait_for(lambda: events(ffapp, step_id) == ["run"] and events(ffapp, parent.id) == ["start"], 30)
    step_execution = execution(ffapp, step_id).execution_id
    doomed.kill()  # the parent is rerun from the top elsewhere and sends the step again
    start_worker(concurrency=2)
    assert wait_for(lambda: events(ffapp, parent.id) == ["start", "start"], 60)
    ffapp.runs().set(f"ffapp:go:{parent.id}", 1)
    assert parent.get(timeout=60) == "sent"  # it sent the step again before it ended
    assert [a.attempt_type for a in execution(ffapp, parent.id).attempts] == ["initial", "reclaim"]
    assert execution(ffapp, step_id).execution_id == step_execution
    assert events(ffapp, step_id) == ["run"]
