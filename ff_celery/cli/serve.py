"""``ff-celery serve``: the web console, the signal endpoint and ``/metrics`` on one ASGI server
(the ``web`` extra); ``ff-celery signal-server`` is the signal endpoint alone."""

from __future__ import annotations

from pathlib import Path

import click

from ff_celery.cli.common import Number, reports_errors, url_option
from ff_celery.cli.setup import metrics_interval_option
from ff_celery.mapping.numbers import PORT_OPTION


@click.command("serve")
@url_option
@click.option("--console", "with_console", is_flag=True, help="Serve the web console.")
@click.option("--signals", "with_signals", is_flag=True, help="Serve POST /v1/signals/... (as signal-server).")
@click.option("--metrics", "with_metrics", is_flag=True, help="Serve /metrics (Prometheus).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=Number(PORT_OPTION), default=8800, show_default=True)
@click.option("--root-path", default="", help="The path prefix a reverse proxy serves the app under (e.g. /ff).")
@click.option(
    "--forwarded-allow-ips", default="127.0.0.1", show_default=True,
    help="Proxies whose X-Forwarded-For/-Proto headers are trusted (comma-separated, or *).",
)  # fmt: skip
@click.option("--operator-token", envvar="FF_CONSOLE_TOKEN", help="Operator sign-in token; env FF_CONSOLE_TOKEN.")
@click.option("--operator-user", envvar="FF_CONSOLE_USER", help="Operator user name; env FF_CONSOLE_USER.")
@click.option(
    "--operator-password", envvar="FF_CONSOLE_PASSWORD", help="The operator user's password; env FF_CONSOLE_PASSWORD."
)
@click.option(
    "--max-per-client", type=click.IntRange(min=1), default=16, show_default=True,
    help="Connections open at once from one client address (behind a proxy: all of them).",
)  # fmt: skip
@click.option("--login-to-read", is_flag=True, help="Show the pages only to a signed-in operator.")
@click.option("--metrics-login", is_flag=True, help="Answer /metrics only with the operator's credentials.")
@click.option(
    "--audit-log", type=click.Path(dir_okay=False, path_type=Path), default=Path("ff-console-audit.jsonl"),
    show_default=True, help="File the console appends each action to (JSON lines).",
)  # fmt: skip
@click.option("--lane", "lanes", multiple=True, help="Lanes /metrics reports besides those in ff:idx:lanes.")
@metrics_interval_option("--metrics-interval")
@reports_errors
def serve(
    url: str,
    with_console: bool,
    with_signals: bool,
    with_metrics: bool,
    host: str,
    port: int,
    root_path: str,
    forwarded_allow_ips: str,
    max_per_client: int,
    operator_token: str | None,
    operator_user: str | None,
    operator_password: str | None,
    login_to_read: bool,
    metrics_login: bool,
    audit_log: Path,
    lanes: tuple[str, ...],
    metrics_interval_s: float,
) -> None:
    """Serve the web console, the signal endpoint and/or /metrics until interrupted."""
    from ff_celery import web
    from ff_celery.web import signals as signal_endpoint

    if not (with_console or with_signals or with_metrics):
        raise click.UsageError("choose what to serve: --console, --signals and/or --metrics")
    try:
        operators = web.Operators(token=operator_token, user=operator_user, password=operator_password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if (login_to_read or metrics_login) and not operators.configured:
        raise click.UsageError("--login-to-read and --metrics-login need --operator-token or --operator-user")
    settings = web.WebSettings(
        url=url,
        console=with_console,
        metrics=with_metrics,
        operators=operators,
        audit_log=audit_log,
        login_to_read=login_to_read,
        metrics_need_login=metrics_login,
        metrics_interval_s=metrics_interval_s,
        lanes=lanes,
    )
    try:
        app = web.create_app(settings, signal_endpoint.ROUTES if with_signals else ())
    except RuntimeError as exc:  # the console without the web extra, or metrics without prometheus_client
        raise click.ClickException(str(exc)) from None
    server = web.WebServer(
        app, host, port, limits=web.ConnectionLimits(max_per_client=max_per_client),
        root_path=root_path, forwarded_allow_ips=forwarded_allow_ips,
        bad_request_body=signal_endpoint.UNREADABLE if with_signals else None,
    )  # fmt: skip
    click.echo(f"serving on {server.base_url}{root_path.rstrip('/')}; Ctrl-C to stop")
    server.run()


COMMANDS = [serve]
