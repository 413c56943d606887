"""Watching tasks from outside: per-task Prometheus metrics, OpenTelemetry spans, and the HTTP
endpoint that turns signed callbacks into signals.

Imports nothing when imported; import the modules by their paths.
"""

__all__ = ["signal_server", "task_metrics", "tracing"]
