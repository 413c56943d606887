"""Budgets and quotas: create, inspect, reset or raise (names or ids)."""

from __future__ import annotations

import click

from ff_celery.cli.common import (
    Number,
    dimensions,
    emit_json,
    engine_for,
    json_option,
    reports_errors,
    table,
    url_option,
    when,
)
from ff_celery.engine import (
    BudgetStatus,
    budget_status,
    create_budget,
    create_quota,
    error_for_code,
    quota_id_for,
    quota_policies,
)
from ff_celery.features import budgets
from ff_celery.mapping.numbers import COUNT_OPTION, POSITIVE_COUNT_OPTION, SECONDS_OPTION

limit_options = [
    click.option("--hard", multiple=True, metavar="DIM=N", help="Hard limit (repeatable); 0 = none."),
    click.option("--soft", multiple=True, metavar="DIM=N", help="Soft limit (repeatable); 0 = none."),
]


def with_limits(command: click.Command) -> click.Command:
    for option in reversed(limit_options):
        command = option(command)
    return command


@click.group("budget")
def budget() -> None:
    """Budgets: limits per dimension (tokens, cost_micros, ...) that tasks report usage to."""


@budget.command("create")
@click.argument("name")
@with_limits
@click.option("--reset-every", type=Number(SECONDS_OPTION), default=0, help="Reset usage every N seconds.")
@url_option
@reports_errors
def budget_create(name: str, hard: tuple[str, ...], soft: tuple[str, ...], reset_every: float, url: str) -> None:
    """Create budget NAME (kept as it is if it exists)."""
    budget_id = create_budget(
        engine_for(url), name, hard=dimensions(hard), soft=dimensions(soft), reset_interval_s=reset_every
    )
    click.echo(f"budget {name}: {budget_id}")


def _status(url: str, name: str) -> BudgetStatus:
    status = budget_status(engine_for(url), name)
    if status is None:
        raise error_for_code("budget_not_found", [name])
    return status


@budget.command("show")
@click.argument("name")
@url_option
@json_option
@reports_errors
def budget_show(name: str, url: str, as_json: bool) -> None:
    """Usage against limits, breaches and the next reset."""
    status = _status(url, name)
    if as_json:
        emit_json(status)
        return
    dims = sorted(set(status.hard_limits) | set(status.soft_limits) | set(status.usage))
    rows = [[d, status.usage.get(d, 0), status.soft_limits.get(d) or "", status.hard_limits.get(d) or ""] for d in dims]
    click.echo(f"budget {name} ({status.budget_id})")
    table(rows, ["dimension", "used", "soft", "hard"])
    exhausted = status.exhausted()
    click.echo(f"hard breaches {status.breach_count}, soft breaches {status.soft_breach_count}"
               + (f"; exhausted on {exhausted[0]}: new executions wait" if exhausted else ""))  # fmt: skip
    if status.next_reset_at:
        click.echo(f"next reset {when(status.next_reset_at)} UTC")


@budget.command("reset")
@click.argument("name")
@url_option
@reports_errors
def budget_reset(name: str, url: str) -> None:
    """Zero the usage; executions that waited on the budget run."""
    _status(url, name)
    released = budgets.reset_budget(url, name)
    click.echo(f"budget {name}: reset; {released} waiting executions released")


@budget.command("raise")
@click.argument("name")
@with_limits
@url_option
@reports_errors
def budget_raise(name: str, hard: tuple[str, ...], soft: tuple[str, ...], url: str) -> None:
    """Set new limits; executions the budget no longer holds back run."""
    _status(url, name)
    released = budgets.raise_budget(url, name, hard=dimensions(hard), soft=dimensions(soft))
    click.echo(f"budget {name}: limits set; {released} waiting executions released")


@click.group("quota")
def quota() -> None:
    """Quotas: claims per time window and concurrent executions."""


@quota.command("create")
@click.argument("name")
@click.option("--rate", type=Number(COUNT_OPTION), default=0, help="Claims per window (0 = no limit).")
@click.option("--window", type=Number(POSITIVE_COUNT_OPTION), default=60, show_default=True, help="Window in seconds.")
@click.option("--concurrency", type=Number(COUNT_OPTION), default=0, help="Executions running at once (0 = no limit).")
@url_option
@reports_errors
def quota_create(name: str, rate: int, window: int, concurrency: int, url: str) -> None:
    """Create quota NAME (kept as it is if it exists)."""
    quota_policy_id = create_quota(
        engine_for(url), name, max_requests_per_window=rate, window_seconds=window, max_concurrent=concurrency
    )
    click.echo(f"quota {name}: {quota_policy_id}")


@quota.command("show")
@click.argument("name")
@url_option
@json_option
@reports_errors
def quota_show(name: str, url: str, as_json: bool) -> None:
    """The quota's limits and what it admits now."""
    quota_policy_id = quota_id_for(name)
    policy = quota_policies(engine_for(url), [quota_policy_id])[quota_policy_id]
    if policy is None:
        raise error_for_code("quota_policy_not_found", [name])
    if as_json:
        emit_json(policy)
        return
    click.echo(f"quota {name} ({quota_policy_id})")
    table(
        [[f"{policy.admitted_in_window}/{policy.max_requests_per_window or '-'} per {policy.window_seconds}s",
          f"{policy.running}/{policy.max_concurrent or '-'}"]],
        ["admitted in window", "running"],
    )  # fmt: skip


COMMANDS = [budget, quota]
