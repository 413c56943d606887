"""The engine's core: the :class:`~ff_celery.engine.core.engine.Engine` handle, how it reaches the
server (connection, executor, library), the key and id schemes, the policy and snapshot models,
errors, notices and the counters every part bumps. It imports nothing else of the engine but
:mod:`ff_celery.engine.functions`.

Import the engine's names from :mod:`ff_celery.engine`; the modules here are its building blocks.
"""

__all__ = [
    "connection",
    "decoding",
    "engine",
    "errors",
    "executor",
    "flows",
    "ids",
    "keys",
    "library",
    "metrics",
    "notices",
    "partitions",
    "policy",
    "snapshot",
    "work_index",
]
