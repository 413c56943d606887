"""What task code and its callers use beyond Celery's API: waits and signals
(:mod:`~ff_celery.features.signals`), budgets and quotas (:mod:`~ff_celery.features.budgets`),
output streams and progress (:mod:`~ff_celery.features.streams`). The common names are also
``ff_celery``'s own (``ff_celery.wait_for_signal``, ``ff_celery.report_usage``, ...).

Imports nothing when imported; import the modules by their paths.
"""

__all__ = ["budgets", "signals", "streams"]
