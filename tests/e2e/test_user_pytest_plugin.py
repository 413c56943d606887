"""A user's Celery test suite runs on ff_celery by adding the plugin: Celery's in-process test
worker fixtures (celery.contrib.pytest, re-exported by pytest-celery) use the embedded server."""

pytest_plugins = ["pytester"]

USER_TESTS = """
pytest_plugins = ["ff_celery.devtools.pytest_plugin"]


def test_tasks_run_as_flowfabric_executions(celery_session_app, celery_session_worker):
    @celery_session_app.task
    def mul(x, y):
        return x * y

    celery_session_worker.reload()
    result = mul.delay(6, 7)
    assert result.get(timeout=30) == 42
    engine = celery_session_app.backend.engine
    assert engine.snapshot(engine.resolve(result.id)).public_state == "completed"


def test_results_and_failures_behave_as_on_any_backend(celery_session_app, celery_session_worker):
    @celery_session_app.task
    def fail():
        raise ValueError("bad input")

    celery_session_worker.reload()
    result = fail.delay()
    try:
        result.get(timeout=30)
    except ValueError as exc:
        assert str(exc) == "bad input"
    assert result.state == "FAILURE"
"""


def test_celerys_own_fixtures_run_on_the_embedded_server(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=2)


FOREIGN_SERVER_TESTS = """
import os

import pytest

pytest_plugins = ["ff_celery.devtools.pytest_plugin"]


@pytest.fixture(scope="session")
def ff_url():
    return os.environ["FOREIGN_URL"]


def test_a_server_the_plugin_did_not_start_is_not_emptied(ff_redis):
    assert ff_redis.get("keep-me") == b"precious"
"""


def test_the_plugin_never_flushes_a_server_it_did_not_start(pytester, ff_redis, ff_url, monkeypatch):
    ff_redis.set("keep-me", "precious")
    monkeypatch.setenv("FOREIGN_URL", ff_url)
    pytester.makepyfile(test_user=FOREIGN_SERVER_TESTS)
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1)
    assert ff_redis.get("keep-me") == b"precious"
