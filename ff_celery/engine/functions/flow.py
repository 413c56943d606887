"""Typed call of ``lua/flow.lua``: replay of an ended execution."""

from __future__ import annotations

from ff_celery.engine.functions.base import (
    ExecutionFcall,
    Reply,
)

__all__ = ["ReplayExecution"]


class ReplayExecution(ExecutionFcall[int]):
    """``ff_replay_execution``; answers the unsatisfied-edge count (0 on the normal path).
    ``edge_ids`` are the inbound edges, used only for a skipped flow member."""

    function = "ff_replay_execution"
    lane_id: str
    edge_ids: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        keys = [x.core, idx.terminal(self.lane_id), idx.eligible(self.lane_id), x.lease_history]
        if self.edge_ids:
            keys += [
                idx.blocked(self.lane_id, "dependencies"),
                x.deps_meta,
                x.deps_unresolved,
                *(x.dep(edge) for edge in self.edge_ids),
            ]
        return keys

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, "0", *self.edge_ids]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[0])
