"""Loading the function library: load when absent or older, never replace FlowFabric's own,
recover when the server loses it, and the operator CLI."""

import pytest
import redis
from click.testing import CliRunner

from ff_celery.cli import main
from ff_celery.devtools.devserver import DevServer
from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import UnavailableError
from ff_celery.engine.core.library import (
    FLOWFABRIC_VERSION,
    HOT_PATH_LIBRARY,
    ensure_library,
    hot_path_source,
    hot_path_version,
    library_source,
    library_version,
    loaded_version,
    relabelled_library,
)
from ff_celery.engine.work.claimer import Claimer

CORE_FUNCTIONS = {
    "ff_version", "ff_create_execution", "ff_issue_claim_grant", "ff_claim_execution",
    "ff_claim_resumed_execution", "ff_issue_grant_and_claim", "ff_renew_lease", "ff_complete_execution",
    "ff_fail_execution", "ff_cancel_execution", "ff_delay_execution", "ff_promote_delayed",
    "ff_mark_lease_expired_if_due", "ff_revoke_lease", "ff_issue_reclaim_grant", "ff_reclaim_execution",
    "ff_expire_execution", "ff_change_priority", "ff_set_execution_tags", "ff_update_progress",
    "ff_replay_execution",
}  # fmt: skip


def library_with_version(version: str, marker: str = "") -> str:
    """Our library text answering ``version`` from ff_version (a stand-in for other builds)."""
    return relabelled_library(version) + marker


def pairs(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def loaded_library(client: redis.Redis, name: str = "flowfabric") -> dict:
    """The library ``name`` (on a cluster: the same one on every primary)."""
    listed = client.function_list(library=name, withcode=True)
    per_primary = [pairs(library) for (library,) in (listed.values() if isinstance(listed, dict) else [listed])]
    assert all(lib[b"library_code"] == per_primary[0][b"library_code"] for lib in per_primary)
    return per_primary[0]


def loaded_code(client: redis.Redis) -> str:
    return loaded_library(client)[b"library_code"].decode()


@pytest.fixture
def empty_server(ff_redis):
    ff_redis.function_flush()
    return ff_redis


def test_library_is_named_flowfabric_and_registers_the_core_functions(empty_server):
    ensure_library(empty_server)
    library = loaded_library(empty_server)
    assert library[b"library_name"] == b"flowfabric"
    functions = [pairs(f) for f in library[b"functions"]]
    assert {f[b"name"].decode() for f in functions} >= CORE_FUNCTIONS
    assert all(not f[b"flags"] for f in functions)  # plain two-argument registrations


def test_the_hot_path_library_is_loaded_beside_ours_and_registers_only_its_own_functions(empty_server):
    assert ensure_library(empty_server).hot_path
    library = loaded_library(empty_server, HOT_PATH_LIBRARY)
    names = {pairs(f)[b"name"].decode() for f in library[b"functions"]}
    assert names == {"ffc_claim", "ffc_complete", "ffc_version"}
    assert empty_server.fcall("ffc_version", 0).decode() == hot_path_version()
    assert loaded_version(empty_server) == library_version()  # ours untouched


def test_the_hot_path_library_is_not_loaded_beside_flowfabrics_own_and_the_engine_uses_the_contract(
    ff_engine, empty_server
):
    empty_server.function_load(library_with_version("34"))
    state = ff_engine.bootstrap()
    assert (state.action, state.hot_path, ff_engine.hot_path) == ("attached_flowfabric", False, False)
    assert loaded_version(empty_server, "ffc_version") is None


def test_an_older_hot_path_revision_is_replaced_and_a_newer_one_left_alone_and_unused(empty_server):
    ensure_library(empty_server)
    older = hot_path_source().replace(f"return '{hot_path_version()}'", "return 'ffcelery-0'")
    empty_server.function_load(older, replace=True)
    assert ensure_library(empty_server).hot_path
    assert empty_server.fcall("ffc_version", 0).decode() == hot_path_version()
    newer = hot_path_source().replace(f"return '{hot_path_version()}'", "return 'ffcelery-999'")
    empty_server.function_load(newer, replace=True)
    assert not ensure_library(empty_server).hot_path
    assert empty_server.fcall("ffc_version", 0) == b"ffcelery-999"


def test_ff_version_identifies_ff_celery_not_flowfabric(empty_server):
    ensure_library(empty_server)
    assert loaded_version(empty_server) == library_version()
    assert library_version().startswith("ff_celery-")
    assert library_version() != FLOWFABRIC_VERSION


def test_loads_when_no_library_is_present(empty_server):
    state = ensure_library(empty_server)
    assert (state.action, state.version) == ("loaded", library_version())
    assert ensure_library(empty_server).action == "current"


def test_attaches_to_flowfabrics_own_library_without_replacing_it(empty_server):
    empty_server.function_load(library_with_version("34", "\n-- flowfabric server build\n"))
    state = ensure_library(empty_server)
    assert (state.action, state.version, state.is_flowfabric) == ("attached_flowfabric", "34", True)
    assert loaded_code(empty_server).endswith("-- flowfabric server build\n")


def test_replaces_an_older_ff_celery_revision(empty_server):
    empty_server.function_load(library_with_version("ff_celery-0"))
    assert ensure_library(empty_server).action == "upgraded"
    assert loaded_version(empty_server) == library_version()


def test_does_not_downgrade_a_newer_ff_celery_revision(empty_server):
    empty_server.function_load(library_with_version("ff_celery-999"))
    assert ensure_library(empty_server).action == "attached_newer"
    assert loaded_version(empty_server) == "ff_celery-999"


def test_refuses_to_replace_an_unknown_library_unless_forced(empty_server):
    empty_server.function_load(library_with_version("someone-else"))
    with pytest.raises(UnavailableError, match="someone-else"):
        ensure_library(empty_server)
    assert ensure_library(empty_server, force=True).action == "loaded"
    assert loaded_version(empty_server) == library_version()


def test_a_call_reloads_the_library_once_after_it_disappeared(ff_engine, ff_redis):
    ff_redis.function_flush()
    assert loaded_version(ff_redis) is None
    created = ff_engine.submit("default", b"x")
    assert not created.duplicate
    assert loaded_version(ff_redis) == library_version()


def test_a_pipelined_batch_reloads_the_library_once_after_it_disappeared(ff_engine, ff_redis):
    eid = ff_engine.submit("default", b"x").execution_id
    ff_redis.function_flush()
    (outcome,) = ff_engine.call_many([fn.ChangePriority(execution_id=eid, lane_id="default", new_priority=5)])
    assert outcome == (0.0, 5.0)


def test_engine_recovers_after_a_server_restart():
    with DevServer() as server:
        engine = Engine.from_url(server.url)
        engine.bootstrap()
        engine.submit("default", b"before")
        server.restart()  # no persistence: data and functions are gone
        created = engine.submit("default", b"after")
        assert created.public_state == "waiting"
        engine.close()


def test_claims_work_against_a_library_that_answers_flowfabrics_version(ff_engine, empty_server):
    # Only FlowFabric's function names and contract are used: nothing ff_celery-specific.
    empty_server.function_load(library_with_version("34"))
    assert ff_engine.bootstrap().action == "attached_flowfabric"
    eid = ff_engine.submit("default", b"payload").execution_id
    claimer = Claimer(ff_engine, ["default"], worker_id="w")
    try:
        task = claimer.claim_one(timeout_s=2)
        assert task is not None and task.execution_id == eid and task.payload == b"payload"
        task.complete(b"done")
    finally:
        claimer.close()
    assert ff_engine.result(eid) == b"done"


def test_cli_prints_the_exact_library_text():
    result = CliRunner().invoke(main, ["library", "source"])
    assert result.exit_code == 0
    assert result.output == library_source()
    assert result.output.startswith("#!lua name=flowfabric\n")


def test_cli_loads_the_library_into_a_server(ff_url, empty_server):
    result = CliRunner().invoke(main, ["library", "load", "--url", ff_url])
    assert result.exit_code == 0, result.output
    assert "loaded" in result.output
    assert loaded_version(empty_server) == library_version()
    status = CliRunner().invoke(main, ["library", "status", "--url", ff_url])
    assert library_version() in status.output
