"""The engine's duties: the background work a deployment runs beside its workers (scanners for
leases, delays, suspensions, admission and flows; retention), and what operators read (inspection,
the Prometheus exporter). Built on :mod:`ff_celery.engine.core` and :mod:`ff_celery.engine.work`.

Import the engine's names from :mod:`ff_celery.engine`; the modules here are its building blocks.
"""

__all__ = ["exporter", "flows", "inspection", "retention", "scanners"]
