"""The ``ff-celery`` command line (also ``celery flowfabric ...``).

Setup: the function library, the embedded server, the scanners, the waitpoint secret.
Operators: show and list executions, cancel / replay / resume them, tail their output,
draw and cancel flows (canvases), deliver signals (or serve HTTP callbacks), and manage
budgets and quotas. Tables by default, ``--json`` for scripts.

``celery`` imports this module for every app, on flowfabric:// or not (the ``celery.commands``
plugin): the commands are imported only when one is looked up.
"""

from __future__ import annotations

import importlib
import logging

import click

__all__ = ["COMMAND_MODULES", "LazyGroup", "main"]

#: Modules of ff_celery.cli whose COMMANDS make up the command line.
COMMAND_MODULES = ("setup", "executions", "flows", "signals", "budgets", "serve")


class LazyGroup(click.Group):
    """A group that imports its commands on first look-up."""

    def _load(self) -> None:
        if not self.commands:
            for name in COMMAND_MODULES:
                for command in importlib.import_module(f"ff_celery.cli.{name}").COMMANDS:
                    self.add_command(command)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@click.group(name="flowfabric", cls=LazyGroup)
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """ff_celery: Celery on FlowFabric."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
