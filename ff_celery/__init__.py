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

__all__ = ["Task", "__version__", "install"]


def __getattr__(name: str) -> Any:
    # Celery-facing names load on first use so the engine stays importable on its own.
    if name == "install":
        from ff_celery.app import install

        return install
    if name == "Task":
        from ff_celery.task import Task

        return Task
    raise AttributeError(name)
