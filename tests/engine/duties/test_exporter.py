"""The metrics endpoint's series: the Grafana dashboard in examples/ queries only series that
ff_celery exports."""

import json
import re
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import each_node, wait_for
from prometheus_client import REGISTRY

import ff_celery.observability.task_metrics  # noqa: F401  (registers the per-task series)
from ff_celery.devtools.devserver import free_port
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.engine.duties.exporter import EngineStateCollector, serve_exporter
from ff_celery.engine.duties.inspection import lane_states

DASHBOARD = Path(__file__).resolve().parents[3] / "examples" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_series(engine) -> set[str]:
    families = [*REGISTRY.collect(), *EngineStateCollector(engine, lambda: []).collect()]
    return {
        family.name + suffix
        for family in families
        if family.name.startswith("ff_")
        for suffix in SUFFIXES.get(family.type, ("",))
    }


def test_the_grafana_dashboard_queries_only_series_ff_celery_exports(ff_engine):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    variables = dashboard["templating"]["list"]
    queries += [variable["query"]["query"] for variable in variables if variable["type"] == "query"]
    queried = {name for query in queries for name in re.findall(r"\bff_[a-z_]+", query)}
    assert len(queried) >= 15
    assert queried <= exported_series(ff_engine), queried - exported_series(ff_engine)


def engine_commands(client) -> int:
    """Commands the server ran (on a cluster: every node), leaving out INFO: this count's own."""
    return sum(
        entry["calls"]
        for node in each_node(client)
        for name, entry in node.info("commandstats").items()
        if name != "cmdstat_info"
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


#: Commands other clients of the shared server may run meanwhile; a reading of one lane is thousands.
OTHERS = 10


@pytest.mark.parametrize("lane_count", [1, 20])
def test_a_scrape_costs_the_server_no_command_whatever_the_number_of_lanes(ff_engine, ff_redis, lane_count):
    lanes = {f"scraped-{n}" for n in range(lane_count)}
    port = free_port()
    exporter = serve_exporter(
        port, EngineStateCollector(ff_engine.fork(), lambda: lanes, interval_s=3600)
    )  # one reading: at the start
    try:
        assert 'ff_lane_executions{lane="scraped-0",state="eligible"} 0.0' in scrape(port)
        before = engine_commands(ff_redis)
        assert 'ff_lane_executions{lane="scraped-0",state="eligible"} 0.0' in scrape(port)
        assert engine_commands(ff_redis) - before <= OTHERS
    finally:
        exporter.stop()


def test_concurrent_scrapes_cost_one_reading_of_the_engine_state(ff_engine, ff_redis):
    lanes, engine = {f"scraped-{n}" for n in range(20)}, ff_engine.fork()
    lane_states(engine, lanes)  # connected to every node before counting
    before = engine_commands(ff_redis)
    lane_states(engine, lanes)
    one_reading = engine_commands(ff_redis) - before
    assert one_reading > 1000  # every index of 20 lanes in 256 partitions

    port, scrapes = free_port(), 20
    barrier = threading.Barrier(scrapes)

    def scrape_with_the_others() -> str:
        barrier.wait(timeout=30)
        return scrape(port)

    before = engine_commands(ff_redis)
    exporter = serve_exporter(port, EngineStateCollector(engine, lambda: lanes, interval_s=3600))
    try:
        with ThreadPoolExecutor(scrapes) as pool:
            pages = list(pool.map(lambda _: scrape_with_the_others(), range(scrapes)))
        assert all('ff_lane_executions{lane="scraped-19",state="active"} 0.0' in page for page in pages)
        # one reading, give or take what else the shared server ran (on a cluster, the client's
        # own upkeep): twenty scrapes each reading the state would be twenty times as much
        assert abs(engine_commands(ff_redis) - before - one_reading) <= OTHERS
    finally:
        exporter.stop()


def test_the_engine_state_is_read_again_each_interval_and_its_age_exported(ff_engine, ff_redis):
    lane, port = "reread", free_port()
    exporter = serve_exporter(port, EngineStateCollector(ff_engine.fork(), lambda: {lane}, interval_s=0.2))
    try:
        assert f'ff_lane_executions{{lane="{lane}",state="delayed"}} 0.0' in scrape(port)
        ff_redis.zadd(PartitionKeys(0).delayed(lane), {"an-execution": 0})
        assert wait_for(lambda: f'ff_lane_executions{{lane="{lane}",state="delayed"}} 1.0' in scrape(port))
        assert re.search(r"^ff_lane_state_age_seconds \d", scrape(port), re.MULTILINE)
    finally:
        exporter.stop()
        ff_redis.delete(PartitionKeys(0).delayed(lane))


@pytest.mark.parametrize("interval_s", [0.0, -1.0, float("nan"), float("inf"), 1e300])
def test_a_metrics_interval_out_of_range_is_refused_naming_it(ff_engine, interval_s):
    with pytest.raises(ValueError, match="the metrics interval must be > 0 and <= 86400 seconds"):
        EngineStateCollector(ff_engine, lambda: [], interval_s)
