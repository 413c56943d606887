"""Fixtures the engine tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from ff_celery.engine.core.engine import Engine
from ff_celery.engine.work.claimer import Claimer


@pytest.fixture
def make_claimer(ff_engine: Engine) -> Iterator[Callable[..., Claimer]]:
    """Makes claimers on ``ff_engine`` for ``lanes`` (``default`` unless told; worker id
    ``worker`` unless told, other options as :class:`Claimer` takes them); every one is closed
    after the test."""
    made: list[Claimer] = []

    def make(lanes: Sequence[str] = ("default",), **options: Any) -> Claimer:
        options.setdefault("worker_id", "worker")
        made.append(Claimer(ff_engine, list(lanes), **options))
        return made[-1]

    yield make
    for claimer in made:
        claimer.close()
