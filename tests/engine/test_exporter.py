"""The metrics endpoint's series: the Grafana dashboard in examples/ queries only series that
ff_celery exports."""

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import ff_celery.task_metrics  # noqa: F401  (registers the per-task series)
from ff_celery.engine.exporter import EngineStateCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
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
