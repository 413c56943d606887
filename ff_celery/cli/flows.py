"""Operator commands on flows (a Celery canvas is one): ``flow`` draws a flow's members and
who waits on whom; ``cancel-flow`` cancels every member that has not ended."""

from __future__ import annotations

import click

from ff_celery.cli.common import emit_json, engine_for, json_option, reports_errors, table, url_option
from ff_celery.engine import CoreField, resolve_flow

flow_target = click.argument("target", metavar="FLOW_ID|TASK_ID|EXECUTION_ID")


@click.command("flow")
@flow_target
@url_option
@json_option
@reports_errors
def flow(target: str, url: str, as_json: bool) -> None:
    """Draw a flow: its members by depth, their state, and what each waits for."""
    engine = engine_for(url)
    view = engine.flows.describe(resolve_flow(engine, target))
    members = sorted(view.members)
    tags = dict(zip(members, engine.read_tags(members)))
    names = {m: tags[m].get("celery.id", m) for m in members}
    depth = view.levels()
    ordered = sorted(members, key=lambda m: (depth[m], tags[m].get("celery.id", m)))
    if as_json:
        emit_json(
            {
                "flow": view.record,
                "members": [
                    {"execution_id": m, "task_id": tags[m].get("celery.id"), "task": tags[m].get("celery.task"),
                     "depth": depth[m], "after": [names[up] for up in view.upstream_of(m)], **view.members[m]}
                    for m in ordered
                ],
            }
        )  # fmt: skip
        return
    record = view.record
    click.echo(
        f"flow {view.flow.flow_id}  {record.get('public_flow_state', '?')}  "
        f"{record.get('node_count', 0)} members, {record.get('edge_count', 0)} edges"
    )
    rows = [
        [depth[m], "  " * depth[m] + view.members[m].get(CoreField.PUBLIC_STATE, "?"), tags[m].get("celery.task", ""),
         names[m], ", ".join(names[up] for up in view.upstream_of(m))]
        for m in ordered
    ]  # fmt: skip
    table(rows, ["depth", "state", "task", "task id", "waits for"])


@click.command("cancel-flow")
@flow_target
@click.option("--reason", default="cancelled by operator", show_default=True)
@url_option
@reports_errors
def cancel_flow(target: str, reason: str, url: str) -> None:
    """Cancel a flow: every member that has not ended (running ones lose their lease)."""
    engine = engine_for(url)
    found = resolve_flow(engine, target)
    cancelled = engine.flows.cancel(found, reason)
    click.echo(f"flow {found.flow_id}: cancelled, {len(cancelled)} member(s) stopped")


COMMANDS = [flow, cancel_flow]
