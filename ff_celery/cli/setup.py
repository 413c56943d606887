"""Setup commands: the function library, the embedded server, forming a cluster, the
scanners, the waitpoint HMAC secret."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TextIO

import click
import redis

from ff_celery.cli.common import Number, emit_json, engine_for, json_option, reports_errors, table, url_option, when
from ff_celery.devtools.devserver import DevCluster, DevServer, form_cluster
from ff_celery.engine import (
    DEFAULT_GRACE_MS,
    DEFAULT_STATE_INTERVAL_S,
    SECRET_ENV,
    Engine,
    EngineScanners,
    EngineStateCollector,
    ScannerSettings,
    ensure_library,
    library_source,
    library_version,
    loaded_version,
    rotate_waitpoint_secret,
    seed_waitpoint_secret,
    serve_exporter,
    waitpoint_kids,
)
from ff_celery.mapping.numbers import COUNT_OPTION, MILLIS_OPTION, PORT_OPTION, WAIT_OPTION, OutOfRange


def wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@click.group()
def library() -> None:
    """The FlowFabric-compatible Valkey function library."""


@library.command("source")
def library_source_command() -> None:
    """Print the exact library text (for FUNCTION LOAD out of band)."""
    click.echo(library_source(), nl=False)


@library.command("load")
@url_option
@click.option("--force", is_flag=True, help="Replace whatever library is loaded, even FlowFabric's own.")
def library_load(url: str, force: bool) -> None:
    """Load the library unless a compatible one is already loaded."""
    state = ensure_library(Engine.from_url(url).redis, force=force)
    click.echo(f"{state.action}: flowfabric library version {state.version}")


@library.command("status")
@url_option
def library_status(url: str) -> None:
    """Show which library version the server has loaded."""
    loaded = loaded_version(Engine.from_url(url).redis)
    click.echo(f"loaded: {loaded or 'none'}; this ff_celery ships: {library_version()}")


@click.command("dev-server")
@click.option("--port", type=Number(PORT_OPTION), default=None, help="Port to listen on (default: a free one).")
@click.option("--cluster", is_flag=True, help="A local cluster instead: 3 primaries with a replica each.")
def dev_server(port: int | None, cluster: bool) -> None:
    """Run a local Valkey/Redis (or a cluster) with the library loaded until interrupted."""
    if cluster and port is not None:
        raise click.BadParameter("a dev cluster picks free ports itself", param_hint="--port")
    with DevCluster() if cluster else DevServer(port) as server:
        Engine.from_url(server.url).bootstrap()
        if isinstance(server, DevCluster):
            pids = ", ".join(str(node.pid) for node in server.nodes)
            click.echo(f"{server.url}  ({server.version}, 3 primaries + 3 replicas, pids {pids}; Ctrl-C to stop)")
        else:
            click.echo(f"{server.url}  ({server.version}, pid {server.pid}; Ctrl-C to stop)")
        wait_for_interrupt()


def node_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        if not host:
            raise OutOfRange("no host")
        return host, int(PORT_OPTION.check(port, "port"))
    except OutOfRange as exc:
        raise click.BadParameter(f"{text!r} is not HOST:PORT ({exc})", param_hint="NODES") from None


@click.command("form-cluster")
@click.argument("nodes", nargs=-1, required=True, metavar="HOST:PORT...")
@click.option("--replicas", type=Number(COUNT_OPTION), default=0, show_default=True, help="Replicas per primary.")
@click.option(
    "--timeout", "timeout_s", type=Number(WAIT_OPTION), default=120.0, show_default=True, help="Seconds to wait."
)
def form_cluster_command(nodes: tuple[str, ...], replicas: int, timeout_s: float) -> None:
    """Make one cluster of running cluster-enabled nodes, as ``valkey-cli --cluster create``
    does (the first become primaries, the rest their replicas; host names are resolved);
    nothing changes if they already form it."""
    try:
        created = form_cluster([node_address(node) for node in nodes], replicas, timeout_s)
    except (ValueError, RuntimeError, OSError, redis.RedisError) as exc:  # OSError: a host name unknown
        raise click.ClickException(str(exc)) from exc
    primaries = len(nodes) // (1 + replicas)
    done = "formed" if created else "already formed"
    click.echo(f"cluster {done}: {primaries} primaries, {len(nodes) - primaries} replicas")


@click.command("scanners")
@url_option
@click.option("--lane", "lanes", multiple=True, help="Lanes to scan besides those in ff:idx:lanes.")
@click.option(
    "--set", "overrides", multiple=True, metavar="NAME=VALUE",
    help=f"A scanner setting, e.g. promote_interval_s=0.5 or retention_s=forever "
         f"(of: {', '.join(ScannerSettings.model_fields)}).",
)  # fmt: skip
def scanners(url: str, lanes: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Run the engine scanners (leader-elected) until interrupted."""
    try:
        settings = ScannerSettings(**dict(scanner_setting(item) for item in overrides))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc
    engine = Engine.from_url(url)
    engine.bootstrap()
    runner = EngineScanners(engine, settings=settings, lanes=lanes).start()
    click.echo(f"scanners running as {runner.instance_id}; Ctrl-C to stop")
    wait_for_interrupt()
    runner.stop()


def scanner_setting(item: str) -> tuple[str, str | None]:
    """``NAME=VALUE`` of ``--set``; ``forever`` (or ``none``) is None, e.g. a retention kept forever."""
    name, _, value = item.partition("=")
    return name, None if value.lower() in ("forever", "none") else value


def serve_metrics(url: str, port: int, address: str, interval_s: float, lanes: tuple[str, ...] = ()) -> None:
    """This process's counters and the engine state (read every ``interval_s``) on
    ``http://address:port/metrics``."""
    engine = engine_for(url)
    try:
        serve_exporter(port, EngineStateCollector(engine, lambda: set(lanes) | engine.lanes(), interval_s), address)
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


def metrics_interval_option(flag: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The option ``flag``: seconds between two readings of the engine state."""
    return click.option(
        flag, "metrics_interval_s", type=float, default=DEFAULT_STATE_INTERVAL_S, show_default=True,
        help="Seconds between two readings of the engine state (scrapes serve the last one).",
    )  # fmt: skip


@click.command("metrics")
@url_option
@click.option(
    "--port", type=Number(PORT_OPTION), default=9808, show_default=True, help="Port of the /metrics endpoint."
)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--lane", "lanes", multiple=True, help="Lanes to report besides those in ff:idx:lanes.")
@metrics_interval_option("--interval")
@reports_errors
def metrics_endpoint(url: str, port: int, address: str, lanes: tuple[str, ...], metrics_interval_s: float) -> None:
    """Export executions per lane and state to Prometheus until interrupted."""
    serve_metrics(url, port, address, metrics_interval_s, lanes)
    click.echo(f"metrics on http://{address}:{port}/metrics; Ctrl-C to stop")
    wait_for_interrupt()


@click.group()
def secret() -> None:
    """The waitpoint HMAC secret (one keystore per flow partition)."""


@secret.command("seed")
@url_option
@click.option(
    "--secret-file", type=click.File("r"), metavar="PATH",
    help="Read the hex secret from the first line of PATH ('-': standard input).",
)  # fmt: skip
@click.option("--secret", "secret_on_argv", hidden=True, help="Refused: the command line is readable by others.")
@reports_errors
def secret_seed(url: str, secret_file: TextIO | None, secret_on_argv: str | None) -> None:
    """Give partitions without a signing key one. The hex secret comes from --secret-file,
    else FF_WAITPOINT_HMAC_SECRET, else one is generated; never from the command line."""
    if secret_on_argv is not None:
        raise click.UsageError(
            f"--secret is refused (other users can read a command line): set {SECRET_ENV} "
            "or pass --secret-file PATH ('-' for standard input)"
        )
    secret_hex = secret_file.readline().strip() if secret_file is not None else None
    if secret_file is not None and not secret_hex:
        raise click.UsageError("--secret-file gave no secret")
    seed_waitpoint_secret(engine_for(url), secret_hex)
    click.echo("seeded (partitions that had a key keep it)")


#: Where ``secret rotate`` reads the new secret from (else standard input): never the command
#: line, which other users of the machine can read.
NEW_SECRET_ENV = "FF_WAITPOINT_HMAC_NEW_SECRET"


@secret.command("rotate")
@url_option
@click.option("--kid", required=True, help="The new key id (no ':').")
@click.option("--grace-ms", type=Number(MILLIS_OPTION), default=DEFAULT_GRACE_MS, show_default=True,
              help="How long tokens of the previous key stay valid.")  # fmt: skip
@reports_errors
def secret_rotate(url: str, kid: str, grace_ms: int) -> None:
    """Install a new signing key on every partition. The new hex secret is read from
    FF_WAITPOINT_HMAC_NEW_SECRET, else from the first line of standard input."""
    secret_hex = os.environ.get(NEW_SECRET_ENV) or sys.stdin.readline().strip()
    if not secret_hex:
        raise click.UsageError(f"no secret: set {NEW_SECRET_ENV} or write it to standard input")
    outcomes = rotate_waitpoint_secret(engine_for(url), kid, secret_hex, grace_ms)
    rotated = sum(1 for outcome in outcomes if outcome.outcome == "rotated")
    click.echo(f"{kid}: rotated on {rotated} partitions, already current on {len(outcomes) - rotated}")


@secret.command("kids")
@url_option
@json_option
@reports_errors
def secret_kids(url: str, as_json: bool) -> None:
    """The current signing key and the previous keys still in their grace period."""
    keystore = waitpoint_kids(engine_for(url))
    if as_json:
        emit_json(keystore)
        return
    rows = [[keystore.current_kid, "current", ""]] + [
        [kid, "verifying", when(at)] for kid, at in keystore.verifying.items()
    ]
    table(rows, ["kid", "role", "valid until (UTC)"])


COMMANDS = [library, dev_server, form_cluster_command, scanners, metrics_endpoint, secret]
