"""ff_celery: run Celery applications on FlowFabric.

Importing the package (``ff_celery.pth`` does it at interpreter start) registers the
``flowfabric://`` and ``flowfabrics://`` kombu transports and sets up every Celery app that
uses them (see :mod:`ff_celery.autoload`); ``ff_celery.install(app)`` does it explicitly.
"""

from __future__ import annotations

from typing import Any

from ff_celery import autoload

__version__ = "0.1.0"

autoload.install()

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
