"""Retention from a Celery app: a terminal execution (and its task id) goes once its task's
``ff_retention``, its call's, its queue's (``flowfabric_queue_retention``) or else
``result_expires`` has passed, as the app publishing it says; ``ff_retention=None`` keeps it;
what a flow member still waiting needs stays."""

from celery import chain

from .conftest import wait_for


def test_results_go_after_their_tasks_calls_or_queues_retention_and_the_rest_stay(ffapp, start_worker, monkeypatch):
    start_worker(queues="celery,brief", env={"FFAPP_RETENTION_SCAN_S": "0.3"})
    monkeypatch.setitem(ffapp.app.conf, "flowfabric_queue_retention", {"brief": 1})
    engine = ffapp.app.backend.engine
    brief = [
        ffapp.briefly_kept.delay(1),  # the task's own option
        ffapp.add.apply_async((1, 1), ff_retention=1),  # the call's
        ffapp.add.apply_async((2, 2), queue="brief"),  # the queue's
    ]
    kept = [ffapp.kept_forever.apply_async((3,), queue="brief"), ffapp.add.delay(4, 4)]
    assert [result.get(timeout=30) for result in brief + kept] == [1, 2, 4, 3, 8]
    assert wait_for(lambda: all(engine.resolve(result.id) is None for result in brief), timeout=60)
    assert [ffapp.app.AsyncResult(r.id).state for r in brief] == ["PENDING"] * 3  # as after result_expires on Redis
    assert all(engine.resolve(result.id) is not None for result in kept)
    assert [ffapp.app.AsyncResult(result.id).get(timeout=10) for result in kept] == [3, 8]


def test_each_app_keeps_its_tasks_as_its_own_result_expires_says_not_as_the_scanners_leader(
    ffapp, start_worker, monkeypatch
):
    start_worker(env={"FFAPP_RETENTION_SCAN_S": "0.3"})  # the leader's app keeps results a day
    monkeypatch.setitem(ffapp.app.conf, "result_expires", 1)  # this (publishing) app: a second
    engine = ffapp.app.backend.engine
    result = ffapp.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert wait_for(lambda: engine.resolve(result.id) is None, timeout=60)
    assert ffapp.app.AsyncResult(result.id).state == "PENDING"


def test_a_chain_step_waiting_longer_than_the_retention_still_gets_its_upstream_result(ffapp, start_worker):
    start_worker(env={"FFAPP_RETENTION_SCAN_S": "0.3"})
    steps = chain(ffapp.add.s(1, 2).set(ff_retention=0), ffapp.add.s(10).set(countdown=5))
    assert steps.apply_async().get(timeout=60) == 13
