"""ff_celery: run Celery applications on FlowFabric.

Importing the package (``ff_celery.pth`` does it at interpreter start) installs the import
hook of :mod:`ff_celery.integration.autoload` and imports nothing else: every Celery app that uses
``flowfabric://`` is then set up when it is finalized; ``ff_celery.install(app)`` does it
explicitly. The names below are loaded on first use.
"""

from ff_celery.integration import autoload

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at interpreter start
    from typing import Any

__version__ = "0.1.0"

autoload.install()

#: Celery-facing names, loaded on first use so the engine stays importable on its own.
_LAZY = {
    "install": "ff_celery.integration.app",
    "Task": "ff_celery.integration.task",
    "wait_for_signal": "ff_celery.features.signals",
    "waitpoint": "ff_celery.features.signals",
    "send_signal": "ff_celery.features.signals",
    "Suspended": "ff_celery.features.signals",
    "report_usage": "ff_celery.features.budgets",
    "budget_scope": "ff_celery.features.budgets",
    "BudgetExceeded": "ff_celery.features.budgets",
    "NoBudgetAttached": "ff_celery.features.budgets",
    "append_frame": "ff_celery.features.streams",
    "progress": "ff_celery.features.streams",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> "Any":
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
