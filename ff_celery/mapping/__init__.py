"""Celery's concepts written as FlowFabric's: a kombu message as an execution and back, an
execution's state as a Celery state, a task's outcome on its attempt, canvases as flows, the
retention and number ranges a message may ask for.

Imports nothing when imported; import the modules by their paths.
"""

__all__ = ["canvas", "flow_publication", "messages", "numbers", "outcomes", "retention", "states"]
