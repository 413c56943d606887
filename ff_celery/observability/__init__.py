"""Watching tasks from outside: per-task Prometheus metrics and OpenTelemetry spans.

Imports nothing when imported; import the modules by their paths.
"""

__all__ = ["task_metrics", "tracing"]
