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

from ff_celery.context import engine_for_url
from ff_celery.engine.client import Engine
from ff_celery.engine.errors import EngineError

url_option = click.option(
    "--url", envvar="FF_CELERY_URL", default="redis://127.0.0.1:6379/0", show_default=True,
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
        if not name or not value.isdigit():
            raise click.BadParameter(f"expected dimension=integer, got {pair!r}")
        parsed[name] = int(value)
    return parsed
