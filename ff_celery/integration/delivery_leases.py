"""The leases behind a channel's deliveries, by delivery tag: the one record, in a worker, of
which lease each delivery holds.

A delivery's lease is *held* from its claim until the delivery is acknowledged or rejected.
A Celery task acknowledged while it runs (``acks_late=False``) keeps its lease, renewed,
among the *running* until the task is over; its recorded outcome ends the execution. Whether
a lease was lost is the :class:`~ff_celery.engine.ClaimedTask`'s own state.
"""

from __future__ import annotations

from collections.abc import Callable

from ff_celery.engine import ClaimedTask


class DeliveryLeases:
    """The leases of one channel's deliveries."""

    def __init__(self) -> None:
        self._held: dict[str, ClaimedTask] = {}
        self._running: dict[str, ClaimedTask] = {}

    def hold(self, delivery_tag: str, task: ClaimedTask) -> None:
        """``task``'s lease is behind the delivery ``delivery_tag`` until it is taken."""
        self._held[delivery_tag] = task

    def held(self, delivery_tag: str) -> ClaimedTask | None:
        """The lease of a delivery not yet acknowledged."""
        return self._held.get(delivery_tag)

    def take(self, delivery_tag: str) -> ClaimedTask | None:
        """The lease of a delivery being acknowledged or rejected, no longer held."""
        return self._held.pop(delivery_tag, None)

    def keep_running(self, delivery_tag: str, task: ClaimedTask) -> None:
        """A delivery acknowledged while its task runs: its lease stays renewed."""
        self._running[delivery_tag] = task

    def of(self, delivery_tag: str) -> ClaimedTask | None:
        """The lease renewed for a delivery: held, or acknowledged early and still running."""
        return self._held.get(delivery_tag) or self._running.get(delivery_tag)

    def release_finished(self, is_running: Callable[[str], bool]) -> None:
        """Stop renewing the leases of early-acknowledged tasks that are over."""
        for delivery_tag in [tag for tag in self._running if not is_running(tag)]:
            self._running.pop(delivery_tag).release()

    @property
    def any_running(self) -> bool:
        return bool(self._running)
