"""Canvases on Celery's own mechanism (a ``flowfabric://`` broker with a ``redis://`` result
backend, URL-only: ``plainapp``) behave as on Redis: what Celery's own canvas suite checks."""

from __future__ import annotations

import pytest

from .conftest import publish

pytestmark = pytest.mark.standalone  # plain Celery apps keep results in databases > 0


@pytest.fixture
def redis_backend(plainapp_worker) -> dict[str, str]:
    """Celery's own ``redis://`` result backend beside the ``flowfabric://`` broker."""
    return plainapp_worker(5, "redis://{base}/6")


def test_a_chord_called_with_its_body_runs_it(redis_backend):
    code = "print(json.dumps(chord([add.s(1, 2), add.s(3, 4)])(xsum.s()).get(timeout=30)))"
    assert publish(redis_backend, "from celery import chord\n" + code) == 10


def test_a_chord_whose_header_task_catches_its_soft_time_limit_gets_every_result(redis_backend):
    code = """
    from celery import chord
    import uuid
    header = [add.s(1, 2), survives_soft_limit.s(0, uuid.uuid4().hex)]
    print(json.dumps(chord(header)(xsum.s()).get(timeout=30)))
    """
    assert publish(redis_backend, code) == 3


def test_a_countdown_on_a_group_before_a_task_delays_the_header_tasks_and_they_see_their_eta(redis_backend):
    code = """
    import time
    from celery import group
    started = time.monotonic()
    etas = (group(published_eta.s(), published_eta.s()) | identity.s()).apply_async(countdown=2).get(timeout=30)
    print(json.dumps([time.monotonic() - started >= 1.8, [eta is not None for eta in etas]]))
    """
    assert publish(redis_backend, code) == [True, [True, True]]


def test_a_frozen_chord_applied_again_runs_again(redis_backend):
    code = """
    import time
    import uuid
    from celery import chord, group
    key = f"frozen:{uuid.uuid4().hex}"
    canvas = chord(group(add.s(1, 2), add.s(3, 4)), counted.si(key))
    canvas.freeze()
    first = canvas.apply_async().get(timeout=30)
    canvas.apply_async()  # its result is the first run's until the body runs again
    journal, deadline = globals()["journal"](), time.monotonic() + 30
    while journal.get(key) != b"2" and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps([first, int(journal.get(key))]))
    """
    assert publish(redis_backend, code) == [1, 2]


def test_the_errback_of_a_chord_is_called_when_the_same_chain_fails_in_its_header_then_in_its_body(redis_backend):
    # as Celery's test_mutable_errback_called_by_chord_from_chain: one chain signature, used twice
    code = """
    from celery import chain, chord
    failing = fails.s()
    failing_id = failing.freeze().id
    child = chain(identity.si("boom"), failing, identity.si(2))
    noticed = []
    for canvas, failed_id in (
        (chord([child], identity.s()), None),
        (chord([identity.si(42)], child), failing_id),
    ):
        canvas.link_error(failed_id_noted.s())
        failed_id = failed_id or canvas.body.freeze().id
        try:
            canvas.delay().get(timeout=30)
            noticed.append("no error")
        except ValueError as exc:
            noticed.append(str(exc))
        noticed.append(globals()["journal"]().blpop(f"failed:{failed_id}", 30) is not None)
    print(json.dumps(noticed))
    """
    assert publish(redis_backend, code, timeout=120) == ["boom", True, "boom", True]
