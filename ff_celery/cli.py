"""The ``ff-celery`` command line: the function library, the embedded server, the scanners."""

from __future__ import annotations

import logging
import signal
import threading

import click

from ff_celery.devserver import DevServer
from ff_celery.engine.client import Engine
from ff_celery.engine.library import ensure_library, library_source, library_version, loaded_version
from ff_celery.engine.scanners import EngineScanners, ScannerSettings

URL_OPTION = click.option(
    "--url", envvar="FF_CELERY_URL", default="redis://127.0.0.1:6379/0", show_default=True,
    help="Valkey/Redis URL (redis://, rediss://, unix://, flowfabric://).",
)  # fmt: skip


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


@click.group(name="flowfabric")
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """ff_celery: Celery on FlowFabric."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group()
def library() -> None:
    """The FlowFabric-compatible Valkey function library."""


@library.command("source")
def library_source_command() -> None:
    """Print the exact library text (for FUNCTION LOAD out of band)."""
    click.echo(library_source(), nl=False)


@library.command("load")
@URL_OPTION
@click.option("--force", is_flag=True, help="Replace whatever library is loaded, even FlowFabric's own.")
def library_load(url: str, force: bool) -> None:
    """Load the library unless a compatible one is already loaded."""
    engine = Engine.from_url(url)
    state = ensure_library(engine.redis, force=force)
    click.echo(f"{state.action}: flowfabric library version {state.version}")


@library.command("status")
@URL_OPTION
def library_status(url: str) -> None:
    """Show which library version the server has loaded."""
    loaded = loaded_version(Engine.from_url(url).redis)
    click.echo(f"loaded: {loaded or 'none'}; this ff_celery ships: {library_version()}")


@main.command("dev-server")
@click.option("--port", type=int, default=None, help="Port to listen on (default: a free one).")
def dev_server(port: int | None) -> None:
    """Run a local Valkey/Redis with the library loaded until interrupted."""
    with DevServer(port) as server:
        Engine.from_url(server.url).bootstrap()
        click.echo(f"{server.url}  (pid {server.pid}; Ctrl-C to stop)")
        _wait_for_interrupt()


@main.command("scanners")
@URL_OPTION
@click.option("--lane", "lanes", multiple=True, help="Lanes to promote (in addition to ff:idx:lanes).")
@click.option("--promote-interval", type=float, default=0.75, show_default=True)
@click.option("--lease-expiry-interval", type=float, default=1.5, show_default=True)
@click.option("--attempt-timeout-interval", type=float, default=2.0, show_default=True)
@click.option("--deadline-interval", type=float, default=5.0, show_default=True)
def scanners(
    url: str,
    lanes: tuple[str, ...],
    promote_interval: float,
    lease_expiry_interval: float,
    attempt_timeout_interval: float,
    deadline_interval: float,
) -> None:
    """Run the engine scanners (leader-elected) until interrupted."""
    engine = Engine.from_url(url)
    engine.bootstrap()
    settings = ScannerSettings(
        promote_interval_s=promote_interval,
        lease_expiry_interval_s=lease_expiry_interval,
        attempt_timeout_interval_s=attempt_timeout_interval,
        deadline_interval_s=deadline_interval,
    )
    runner = EngineScanners(engine, settings=settings, lanes=lanes).start()
    click.echo(f"scanners running as {runner.instance_id}; Ctrl-C to stop")
    _wait_for_interrupt()
    runner.stop()


if __name__ == "__main__":
    main()
