"""The range of every number ff_celery reads from a message, a header or a command-line
option, and the one check that enforces it.

A value outside its range raises :class:`OutOfRange` naming the field; publishing turns that
into ``PublishError``, delivering fails the execution once, the CLI answers a usage error.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any

from ff_celery.engine import UNLIMITED_RETRIES

#: The longest delay or duration, in seconds: a thousand years, beyond any real one and short
#: of ``datetime``'s limit when added to now (Celery makes an ``eta`` of a ``countdown``).
MAX_SECONDS = 1000 * 365 * 86_400


class OutOfRange(ValueError):
    """A number that is missing its type or its range; the message names the field."""


@dataclass(frozen=True)
class Bound:
    """A finite number in ``[low, high]`` (whole if ``integral``); numeric text is accepted
    where the source carries text (AMQP properties, command lines); ``clamp`` brings a finite
    number outside the range to its nearest end instead of refusing it."""

    low: float
    high: float
    integral: bool = False
    text: bool = False
    clamp: bool = False

    def check(self, value: Any, field: str) -> float:
        """``value`` as a number in range; :class:`OutOfRange` naming ``field`` otherwise."""
        kinds = (int, float, str) if self.text else (int, float)
        number = math.nan
        if isinstance(value, kinds) and not isinstance(value, bool):
            with contextlib.suppress(ValueError, OverflowError):  # not numeric text, or a huge int
                number = float(value)
        if self.clamp and math.isfinite(number):
            number = min(max(number, self.low), self.high)
        if not (math.isfinite(number) and self.low <= number <= self.high) or (
            self.integral and not number.is_integer()
        ):
            raise OutOfRange(f"{field} must be {self.describe()}, got {value!r}")
        return number

    def describe(self) -> str:
        kind = "a whole number" if self.integral else "a finite number"
        if self.clamp:
            return kind
        return f"{kind} from {_shown(self.low)} to {_shown(self.high)}"


def _shown(end: float) -> str:
    return str(int(end)) if float(end).is_integer() else f"{end:g}"


#: Message properties: Celery's ``priority`` (clamped to FlowFabric's 0..9000, as documented),
#: AMQP's ``expiration`` (milliseconds, as text or a number).
PRIORITY = Bound(0, 9000, text=True, clamp=True)
EXPIRATION_MS = Bound(0, MAX_SECONDS * 1000, text=True)
#: ``apply_async`` options that Celery or kombu convert before the transport sees them:
#: ``expiration`` (seconds), ``countdown`` and ``expires`` (seconds; negative: already due).
EXPIRATION_S = Bound(0, MAX_SECONDS)
DELAY_S = Bound(-MAX_SECONDS, MAX_SECONDS)
#: Task message headers: ``timelimit`` items (seconds), ``retries``, ``replaced_task_nesting``.
TIME_LIMIT_S = Bound(0, MAX_SECONDS)
RETRIES = Bound(0, UNLIMITED_RETRIES, integral=True)
NESTING = Bound(0, 2**31 - 1, integral=True)


#: Command-line options (text): durations in seconds (a wait: more than nothing, a ``tail``
#: block: at most 30 s), counts, milliseconds, ports.
SECONDS_OPTION = Bound(0, MAX_SECONDS, text=True)
WAIT_OPTION = Bound(0.001, MAX_SECONDS, text=True)
BLOCK_OPTION = Bound(0.001, 30, text=True)
COUNT_OPTION = Bound(0, 2**53 - 1, integral=True, text=True)
POSITIVE_COUNT_OPTION = Bound(1, 2**53 - 1, integral=True, text=True)
MILLIS_OPTION = Bound(0, MAX_SECONDS * 1000, integral=True, text=True)
PORT_OPTION = Bound(0, 65535, integral=True, text=True)


def optional_time_limits(value: Any, field: str) -> None:
    """Celery's ``timelimit`` header: absent, or ``[hard, soft]`` each None or seconds."""
    if value is None:
        return
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise OutOfRange(f"{field} must be [hard, soft] seconds, got {value!r}")
    for limit in value:
        if limit is not None:
            TIME_LIMIT_S.check(limit, field)
