"""What the commands share: the server URL option, an engine, tables and JSON output, and
turning engine errors into a readable message and exit code 1."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import click
from pydantic import BaseModel

from ff_celery.engine import Engine, EngineError, redis_url
from ff_celery.integration.context import engine_for_url
from ff_celery.mapping.numbers import COUNT_OPTION, Bound, OutOfRange


class Number(click.ParamType):
    """A command-line number within its range (:mod:`ff_celery.mapping.numbers`): NaN, infinities and
    values out of range are usage errors naming the option."""

    name = "number"

    def __init__(self, bound: Bound) -> None:
        self.bound = bound

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        given = value if isinstance(value, int | float) else str(value).strip()  # a default, or text
        try:
            number = self.bound.check(given, param.opts[0] if param and param.opts else "value")
        except OutOfRange as exc:
            self.fail(str(exc), param, ctx)
        return int(number) if self.bound.integral else number


def _checked_url(ctx: click.Context, param: click.Parameter, url: str) -> str:
    """A URL with a supported scheme; the usage error shows it without its credentials."""
    try:
        redis_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return url


url_option = click.option(
    "--url", envvar="FF_CELERY_URL", default="redis://127.0.0.1:6379/0", show_default=True, callback=_checked_url,
    help="Valkey/Redis URL (redis://, rediss://, unix://, flowfabric://); env FF_CELERY_URL.",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def engine_for(url: str) -> Engine:
    """An engine on ``url`` that resolves Celery task ids."""
    return engine_for_url(url)


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print engine errors (``Error: <code>: <meaning> (<detail>)``) and exit 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EngineError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def emit_json(document: Any) -> None:
    if isinstance(document, BaseModel):
        document = document.model_dump(mode="json")
    click.echo(json.dumps(document, indent=2, default=str))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """Print aligned columns."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(value.ljust(w) for value, w in zip(row, widths)).rstrip())


def when(ms: int | str | None) -> str:
    """An epoch-ms timestamp as UTC ISO time (empty for none)."""
    try:
        value = int(ms or 0)
    except ValueError:
        return str(ms)
    if not value:
        return ""
    return datetime.fromtimestamp(value / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def dimensions(pairs: Sequence[str]) -> dict[str, int]:
    """``dim=N`` options as a dict."""
    parsed = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not name:
            raise click.BadParameter(f"expected dimension=integer, got {pair!r}")
        try:
            parsed[name] = int(COUNT_OPTION.check(value, name))
        except OutOfRange as exc:
            raise click.BadParameter(str(exc)) from None
    return parsed
