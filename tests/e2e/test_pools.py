"""The same guarantees with the prefork, threads and solo pools."""

import pytest

from .conftest import execution, runs


@pytest.fixture(scope="module", params=["prefork", "threads", "solo"])
def pool_worker(request, app_url, tmp_path_factory):
    from .conftest import Worker

    worker = Worker(app_url, tmp_path_factory.mktemp(request.param), pool=request.param, concurrency=2).wait_ready()
    yield worker
    worker.stop(timeout=20)


def test_results_retries_and_failures(ffapp, pool_worker):
    assert ffapp.add.delay(2, 2).get(timeout=15) == 4
    assert ffapp.flaky.delay(1).get(timeout=15) == 1
    failing = ffapp.boom.delay()
    with pytest.raises(KeyError):
        failing.get(timeout=15)
    assert execution(ffapp, failing.id).public_state == "failed"


def test_a_task_outliving_its_lease_ttl_runs_once(ffapp, pool_worker):
    # the renewal thread keeps the lease while the pool runs the task (even solo, in-process)
    result = ffapp.tracked_sleep.delay(3)
    assert result.get(timeout=20) == 3
    assert [entry.split(":")[0] for entry in runs(ffapp, result.id)] == ["start", "finish"]
    assert len(execution(ffapp, result.id).attempts) == 1
