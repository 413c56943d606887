"""Where Celery and kombu meet FlowFabric: the ``flowfabric://`` kombu transport, the result
backend, the worker's bootsteps, the task base class, durable revoke, the interpreter-start hook
that makes a URL enough, ``integrate(app)``, and the running task's claimed execution.

Imports nothing when imported: ``ff_celery.pth`` loads :mod:`ff_celery.integration.autoload`
in every interpreter of the environment. Import the modules by their paths.
"""

__all__ = ["app", "autoload", "backend", "context", "control", "delivery_leases", "task", "transport", "worker"]
