"""ff_celery: run Celery applications on FlowFabric.

Importing the package registers the ``flowfabric://`` and ``flowfabrics://`` kombu transports.
``ff_celery.install(app)`` is the one-line app setup (task base class, worker bootstep,
durable revoke, safe defaults).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES

__version__ = "0.1.0"

for _scheme in ("flowfabric", "flowfabrics"):
    TRANSPORT_ALIASES.setdefault(_scheme, "ff_celery.transport:Transport")

#: Celery-facing names, loaded on first use so the engine stays importable on its own.
_LAZY = {
    "install": "ff_celery.app",
    "Task": "ff_celery.task",
    "wait_for_signal": "ff_celery.waitpoints",
    "waitpoint": "ff_celery.waitpoints",
    "send_signal": "ff_celery.waitpoints",
    "Suspended": "ff_celery.waitpoints",
    "report_usage": "ff_celery.budgets",
    "budget_scope": "ff_celery.budgets",
    "BudgetExceeded": "ff_celery.budgets",
    "append_frame": "ff_celery.streams",
    "progress": "ff_celery.streams",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
