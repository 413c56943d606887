"""Remote control with durable revoke: cancelling the FlowFabric execution is the revoke;
the broadcast that follows stops the task on workers that run it right now."""

from __future__ import annotations

from typing import Any

from celery.app import control
from kombu.utils.functional import maybe_list

from ff_celery.integration.backend import FlowFabricBackend


class Control(control.Control):
    def broadcast(self, command: str, arguments: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """``revoke`` (from ``AsyncResult.revoke``, ``app.control.revoke`` or ``celery control
        revoke``) first cancels the executions: a queued task never runs, even on workers that
        miss the broadcast; a running one loses its lease and its worker stops it."""
        backend = self.app.backend
        if command == "revoke" and arguments and isinstance(backend, FlowFabricBackend):
            for task_id in maybe_list(arguments.get("task_id")) or ():
                backend.revoke(task_id)
        return super().broadcast(command, arguments, *args, **kwargs)
