"""Delivering signals: ``signal`` (by task id, as an operator or with a token) and
``signal-server``, the HTTP endpoint for callbacks."""

from __future__ import annotations

import uuid

import click

from ff_celery.cli.common import Number, emit_json, engine_for, json_option, reports_errors, url_option
from ff_celery.cli.setup import metrics_interval_option, serve_metrics, wait_for_interrupt
from ff_celery.engine import CoreField, deliver_signal, error_for_code, read_waitpoint, resolve_target, text_encoding
from ff_celery.features.signals import waitpoint_id_for
from ff_celery.mapping.numbers import PORT_OPTION
from ff_celery.web.signals import DEFAULT_MAX_PER_CLIENT, DEFAULT_PORT, SignalServer


@click.command("signal")
@click.argument("target", metavar="TASK_ID|EXECUTION_ID")
@click.argument("name")
@click.option("--payload", default=None, help="JSON payload (a plain string if it is not JSON).")
@click.option("--waitpoint", default=None, help="Waitpoint id or wait name (default: the one it is suspended on).")
@click.option("--token", default=None, help="The waitpoint's token (default: read it, as an operator).")
@click.option("--idempotency-key", default="", help="Deliveries with the same key count once.")
@click.option("--source", default="", help="Who sends it (recorded with the signal).")
@url_option
@json_option
@reports_errors
def signal(
    target: str,
    name: str,
    payload: str | None,
    waitpoint: str | None,
    token: str | None,
    idempotency_key: str,
    source: str,
    url: str,
    as_json: bool,
) -> None:
    """Deliver signal NAME to a waiting task."""
    engine = engine_for(url)
    execution_id = resolve_target(engine, target)
    waitpoint_id = waitpoint or engine.read_field(execution_id, CoreField.CURRENT_WAITPOINT_ID)
    if not waitpoint_id:
        raise error_for_code("execution_not_suspended", [f"{target} waits on no waitpoint; pass --waitpoint"])
    try:
        uuid.UUID(waitpoint_id)
    except ValueError:
        waitpoint_id = waitpoint_id_for(execution_id, waitpoint_id)  # a wait name
    operator = token is None
    if operator:
        record = read_waitpoint(engine, execution_id, waitpoint_id)
        if record is None:
            raise error_for_code("waitpoint_not_found", [waitpoint_id])
        token = record.token
    body = b"" if payload is None else payload.encode()
    encoding = text_encoding(body)
    outcome = deliver_signal(
        engine,
        execution_id,
        waitpoint_id,
        token,
        name,
        body,
        source_type="operator" if operator else "cli",
        source_identity=source,
        idempotency_key=idempotency_key,
        payload_encoding=encoding,
    )
    if as_json:
        emit_json(outcome)
    elif outcome.duplicate:
        click.echo(f"duplicate of signal {outcome.signal_id}: not delivered again")
    else:
        click.echo(f"signal {outcome.signal_id}: {outcome.effect}")


@click.command("signal-server")
@url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=Number(PORT_OPTION), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--max-per-client", type=click.IntRange(min=1), default=DEFAULT_MAX_PER_CLIENT, show_default=True,
    help="Connections handled at once from one client address (behind a proxy: all of them).",
)  # fmt: skip
@click.option(
    "--metrics-port",
    type=Number(PORT_OPTION),
    help="Also export ff_signals_total and the engine state on /metrics here.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address of the /metrics endpoint.")
@metrics_interval_option("--metrics-interval")
@reports_errors
def signal_server(
    url: str,
    host: str,
    port: int,
    max_per_client: int,
    metrics_port: int | None,
    metrics_host: str,
    metrics_interval_s: float,
) -> None:
    """Serve POST /v1/signals/<execution id>/<waitpoint id>/<name> (token-authenticated)."""
    if metrics_port:
        serve_metrics(url, metrics_port, metrics_host, metrics_interval_s)
    server = SignalServer(url, host=host, port=port, max_per_client=max_per_client).start()
    click.echo(f"signal endpoint on {server.base_url}; Ctrl-C to stop")
    wait_for_interrupt()
    server.stop()


COMMANDS = [signal, signal_server]
