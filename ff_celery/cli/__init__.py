"""The ``ff-celery`` command line (also ``celery flowfabric ...``).

Setup: the function library, the embedded server, the scanners, the waitpoint secret.
Operators: show and list executions, cancel / replay / resume them, tail their output,
draw and cancel flows (canvases), deliver signals (or serve HTTP callbacks), and manage
budgets and quotas. Tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import logging

import click

from ff_celery.cli import budgets, executions, flows, setup, signals


@click.group(name="flowfabric")
@click.option("--log-level", default="WARNING", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """ff_celery: Celery on FlowFabric."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for module in (setup, executions, flows, signals, budgets):
    for command in module.COMMANDS:
        main.add_command(command)
