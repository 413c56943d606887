"""Prometheus counters of the engine (``pip install ff-celery[metrics]``: ``prometheus_client``).

Counters of this process, moved where the work happens: claims and claim times by the
  claimer, lease renewals and losses by the renewer, scanner passes, lease expiries and
  reclaims by the scanners, admissions refused (budget and quota hits), budget breaches
  reported, signals delivered or refused, late writes fenced out. Names follow FlowFabric's
  where they overlap (``ff_lease_renewal_total``, ``ff_scanner_cycle_duration_seconds``,
  ``ff_claim_from_grant_duration_seconds``, ``ff_budget_hit_total``, ``ff_quota_hit_total``);
- the engine state, read once per interval and served to every scrape, is :mod:`ff_celery.engine.duties.exporter`'s.

Without ``prometheus_client`` these counters do nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

try:
    import prometheus_client
except ImportError:  # the optional extra is not installed
    prometheus_client = None


class _Unmeasured:
    """Stands in for a metric when prometheus_client is not installed."""

    def labels(self, *_: Any, **__: Any) -> _Unmeasured:
        return self

    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass

    def time(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def metric(kind: str, name: str, documentation: str, labels: Iterable[str]) -> Any:
    """A ``Counter`` or ``Histogram`` of prometheus_client, or a stand-in that does nothing."""
    if prometheus_client is None:
        return _Unmeasured()
    return getattr(prometheus_client, kind)(name, documentation, list(labels))


CLAIMS = metric("Counter", "ff_claims_total", "Executions claimed by this process", ["lane"])
CLAIM_WAIT = metric(
    "Histogram", "ff_claim_wait_seconds", "How long an execution was runnable before this process claimed it", ["lane"]
)
CLAIM_DURATION = metric(
    "Histogram", "ff_claim_from_grant_duration_seconds", "Round trip granting and claiming executions", ["lane"]
)
LEASE_RENEWALS = metric("Counter", "ff_lease_renewal_total", "Lease renewal attempts by outcome (ok, err)", ["outcome"])
LEASES_LOST = metric("Counter", "ff_leases_lost_total", "Leases this process lost, by error code", ["code"])
LEASES_EXPIRED = metric("Counter", "ff_leases_expired_total", "Lapsed leases the scanners marked expired", ["lane"])
RECLAIMS = metric("Counter", "ff_reclaims_total", "Executions reclaimed after a lapsed lease and requeued", ["lane"])
FENCED_WRITES = metric("Counter", "ff_fenced_writes_total", "Attempt writes refused: lease gone", ["operation", "code"])
BUDGET_HITS = metric("Counter", "ff_budget_hit_total", "Budget hard breaches", ["dimension"])
BUDGET_SOFT_BREACHES = metric("Counter", "ff_budget_soft_breach_total", "Usage over a soft limit", ["dimension"])
QUOTA_HITS = metric("Counter", "ff_quota_hit_total", "Claims a quota refused", ["reason"])
SIGNALS = metric("Counter", "ff_signals_total", "Signals by outcome or refusal code", ["outcome"])
SCANNER_CYCLES = metric("Counter", "ff_scanner_cycle_total", "Scanner passes", ["scanner"])
SCANNER_CYCLE_DURATION = metric(
    "Histogram", "ff_scanner_cycle_duration_seconds", "Duration of one scanner pass", ["scanner"]
)
SCANNER_ITEMS = metric("Counter", "ff_scanner_items_total", "Executions a scanner handled", ["scanner"])
