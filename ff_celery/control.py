"""Remote control with durable revoke: cancelling the FlowFabric execution is the revoke;
the broadcast that follows stops the task on workers that run it right now."""

from __future__ import annotations

from typing import Any

from celery.app import control
from kombu.utils.functional import maybe_list

from ff_celery.backend import FlowFabricBackend


class Control(control.Control):
    def revoke(
        self,
        task_id: Any,
        destination: Any = None,
        terminate: bool = False,
        signal: str = control.TERM_SIGNAME,
        **kwargs: Any,
    ) -> Any:
        """Cancel the executions of ``task_id`` (one id or a list), then broadcast.

        A queued task never runs, even on workers that missed the broadcast; a running one
        loses its lease and its worker stops it.
        """
        backend = self.app.backend
        if isinstance(backend, FlowFabricBackend):
            for one in maybe_list(task_id):
                backend.revoke(one)
        return super().revoke(task_id, destination=destination, terminate=terminate, signal=signal, **kwargs)
