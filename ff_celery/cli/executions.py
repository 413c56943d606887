"""Operator commands on executions, found by Celery task id or execution id: show, list,
cancel, replay, resume, tail (frames and a live progress bar), and top (a live view of the lanes)."""

from __future__ import annotations

import json
import sys
import time

import click

from ff_celery.cli.common import Number, emit_json, engine_for, json_option, reports_errors, table, url_option, when
from ff_celery.engine import (
    STATE_INDEXES,
    CoreField,
    ExecutionReport,
    describe_execution,
    follow_execution,
    lane_states,
    list_executions,
    resolve_target,
    resume_execution,
)
from ff_celery.mapping.numbers import BLOCK_OPTION, COUNT_OPTION, MILLIS_OPTION, POSITIVE_COUNT_OPTION, WAIT_OPTION

target_argument = click.argument("target", metavar="TASK_ID|EXECUTION_ID")


def _print_report(report: ExecutionReport) -> None:
    snapshot = report.snapshot
    core, tags = snapshot.core, snapshot.tags
    field = core.get
    phase, ownership = field(CoreField.LIFECYCLE_PHASE), field(CoreField.OWNERSHIP_STATE)
    eligibility = field(CoreField.ELIGIBILITY_STATE)
    state = f"{snapshot.public_state}  (phase {phase}, ownership {ownership}, eligibility {eligibility})"
    ending = (CoreField.TERMINAL_OUTCOME, CoreField.FAILURE_REASON, CoreField.CANCELLATION_REASON)
    outcome = " ".join(filter(None, map(field, ending)))
    flow_id = field(CoreField.FLOW_ID)
    lines = [
        ("execution", report.execution_id),
        ("task", f"{tags['celery.task']} [{tags.get('celery.id', '')}]" if "celery.task" in tags else ""),
        ("lane", field(CoreField.LANE_ID, "")),
        ("flow", f"{flow_id}  (ff-celery flow {flow_id})" if flow_id else ""),
        ("state", state),
        ("blocking", f"{field(CoreField.BLOCKING_REASON, '')} {field(CoreField.BLOCKING_DETAIL, '')}".strip()),
        ("outcome", outcome),
        ("created", when(field(CoreField.CREATED_AT))),
        ("completed", when(field(CoreField.COMPLETED_AT))),
        ("retries", field(CoreField.RETRY_COUNT, "0")),
        ("progress", f"{field(CoreField.PROGRESS_PCT, '')}% {field(CoreField.PROGRESS_MESSAGE, '')}".strip(" %")),
        ("stream", f"{report.stream_frames} frames {report.stream_closed_reason}".strip()),
    ]
    lease = snapshot.lease
    if lease:
        holder = f"{lease.get('worker_id')} ({lease.get('worker_instance_id')})"
        lines.append(("lease", f"{holder}, epoch {lease.get('lease_epoch')}, expires {when(lease.get('expires_at'))}"))
    width = max(len(name) for name, _ in lines)
    for name, value in lines:
        if value:
            click.echo(f"{name.ljust(width)}  {value}")
    if snapshot.attempts:
        click.echo("\nattempts")
        rows = [
            [a.attempt_index, a.attempt_type, a.attempt_state, a.fields.get("worker_id", ""),
             when(a.fields.get("started_at")), when(a.fields.get("ended_at")), a.fields.get("failure_reason", "")]
            for a in snapshot.attempts
        ]  # fmt: skip
        table(rows, ["#", "type", "state", "worker", "started", "ended", "failure"])
    if report.waitpoints:
        click.echo("\nwaitpoints")
        rows = [
            [w.waitpoint_key, w.waitpoint_id, w.state, w.close_reason,
             ", ".join(f"{s.name}({s.source_identity or s.source_type})" for s in w.signals)]
            for w in report.waitpoints
        ]  # fmt: skip
        table(rows, ["name", "waitpoint id", "state", "closed", "signals"])
    if report.budgets:
        click.echo("\nbudgets")
        rows = []
        for budget in report.budgets:
            for dim in sorted(set(budget.hard_limits) | set(budget.soft_limits) | set(budget.usage)):
                soft, hard = budget.soft_limits.get(dim) or "", budget.hard_limits.get(dim) or ""
                rows.append([budget.budget_id, dim, budget.usage.get(dim, 0), soft, hard])
        table(rows, ["budget", "dimension", "used", "soft", "hard"])
    if report.quota:
        q = report.quota
        rate = f"{q.admitted_in_window}/{q.max_requests_per_window or '-'} per {q.window_seconds}s"
        click.echo(f"\nquota {q.quota_policy_id}: {rate}, running {q.running}/{q.max_concurrent or '-'}")
    other_tags = {k: v for k, v in tags.items() if k not in ("celery.task", "celery.id")}
    if other_tags:
        click.echo("\ntags  " + "  ".join(f"{k}={v}" for k, v in sorted(other_tags.items())))


@click.command("show")
@target_argument
@url_option
@json_option
@reports_errors
def show(target: str, url: str, as_json: bool) -> None:
    """Show an execution: state, attempts, lease, waitpoints, budgets, stream, tags."""
    engine = engine_for(url)
    report = describe_execution(engine, resolve_target(engine, target))
    if as_json:
        emit_json(report)
    else:
        _print_report(report)


@click.command("list")
@click.option("--lane", default="celery", show_default=True, help="Lane (Celery queue).")
@click.option(
    "--state", "states", multiple=True, type=click.Choice(sorted(STATE_INDEXES)),
    help="States to list (repeatable; default: every non-terminal one).",
)  # fmt: skip
@click.option("--limit", type=Number(POSITIVE_COUNT_OPTION), default=50, show_default=True)
@click.option("--all-partitions", is_flag=True, help="Also look on every partition (flow members).")
@url_option
@json_option
@reports_errors
def list_command(lane: str, states: tuple[str, ...], limit: int, all_partitions: bool, url: str, as_json: bool) -> None:
    """List a lane's executions by state, newest first."""
    wanted = list(states) or ["waiting", "delayed", "active", "suspended", "rate_limited", "waiting_children"]
    found = list_executions(engine_for(url), lane, wanted, limit=limit, all_partitions=all_partitions)
    if as_json:
        emit_json([summary.model_dump() for summary in found])
        return
    rows = [[s.public_state, s.task_name, s.task_id, s.execution_id, s.attempt, when(s.created_at), s.blocking_reason]
            for s in found]  # fmt: skip
    table(rows, ["state", "task", "task id", "execution id", "attempt", "created", "blocking"])


@click.command("cancel")
@target_argument
@click.option("--reason", default="cancelled by operator", show_default=True)
@url_option
@reports_errors
def cancel(target: str, reason: str, url: str) -> None:
    """Cancel an execution in any phase (a running one loses its lease and is stopped)."""
    engine = engine_for(url)
    execution_id = resolve_target(engine, target)
    phase = engine.cancel(execution_id, reason)
    click.echo(f"{execution_id}: cancelled (was {phase})")


@click.command("replay")
@target_argument
@url_option
@reports_errors
def replay(target: str, url: str) -> None:
    """Run an ended (failed, cancelled, expired) execution again, as a new attempt."""
    engine = engine_for(url)
    execution_id = resolve_target(engine, target)
    engine.replay(execution_id)
    click.echo(f"{execution_id}: replay scheduled")


@click.command("resume")
@target_argument
@click.option("--delay-ms", type=Number(MILLIS_OPTION), default=0, show_default=True, help="Run it this much later.")
@url_option
@reports_errors
def resume(target: str, delay_ms: int, url: str) -> None:
    """Resume a suspended execution without a signal (e.g. after an escalated timeout)."""
    engine = engine_for(url)
    execution_id = resolve_target(engine, target)
    click.echo(f"{execution_id}: {resume_execution(engine, execution_id, delay_ms)}")


def _bar(percent: float, message: str, width: int = 30) -> str:
    filled = int(width * max(0.0, min(percent, 100.0)) / 100)
    return f"[{'#' * filled}{'.' * (width - filled)}] {percent:5.1f}% {message}"


@click.command("tail")
@target_argument
@click.option(
    "--block", "block_s", type=Number(BLOCK_OPTION), default=5.0, show_default=True, help="Seconds per wait (max 30)."
)
@url_option
@json_option
@reports_errors
def tail(target: str, block_s: float, url: str, as_json: bool) -> None:
    """Follow an execution's output frames live, with a progress bar, until it ends."""
    engine = engine_for(url)
    execution_id = resolve_target(engine, target)
    live = sys.stdout.isatty() and not as_json
    bar = ""
    for attempt, frame in follow_execution(engine, execution_id, block_ms=int(block_s * 1000)):
        if as_json:
            click.echo(json.dumps({"attempt": attempt, "id": frame.id, **frame.fields}))
            continue
        if frame.frame_type == "progress":
            try:
                update = json.loads(frame.payload)
                bar = _bar(float(update.get("percent") or 0), update.get("message") or "")
            except ValueError:
                bar = frame.payload
            click.echo(("\r" + bar) if live else bar, nl=not live)
            continue
        line = f"[{attempt}] {frame.frame_type}: {frame.payload}"
        click.echo(("\r" + line.ljust(len(bar)) + "\n" + bar) if live and bar else line, nl=not (live and bar))
    state = engine.read_field(execution_id, CoreField.PUBLIC_STATE, "gone")
    if as_json:
        click.echo(json.dumps({"execution_id": str(execution_id), "public_state": state}))
    else:
        click.echo(("\n" if live and bar else "") + f"{execution_id}: {state}")


@click.command("top")
@click.option("--lane", "lanes", multiple=True, help="Lanes to show besides those in ff:idx:lanes (repeatable).")
@click.option("--interval", type=Number(WAIT_OPTION), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option(
    "--iterations", type=Number(COUNT_OPTION), default=0, help="Stop after this many refreshes (0: until Ctrl-C)."
)
@url_option
@reports_errors
def top(lanes: tuple[str, ...], interval: float, iterations: int, url: str) -> None:
    """A live view of every lane: executions by state, the head's wait, and completions/s."""
    engine = engine_for(url)
    redraw = sys.stdout.isatty()
    previous: dict[str, int] = {}  # terminal executions per lane at the last refresh
    refresh, last_read = 0, 0.0
    try:
        while True:
            states = lane_states(engine, set(lanes) | engine.lanes())
            now = time.monotonic()
            elapsed, last_read = now - last_read, now
            rows = []
            for lane, state in states.items():
                counts = state.executions
                blocked = sum(total for name, total in counts.items() if name.startswith("blocked_"))
                ended = counts["terminal"]
                known = lane in previous and ended >= previous[lane]  # (trimming lowers the count)
                rate = f"{(ended - previous[lane]) / elapsed:.1f}" if known else ""
                previous[lane] = ended
                by_state = [counts["eligible"], counts["delayed"], counts["active"], counts["suspended"], blocked]
                rows.append([lane, *by_state, ended, rate, f"{state.head_wait_s:.1f}s"])
            if redraw:
                click.echo("\x1b[H\x1b[2J", nl=False)  # clear the screen: the view replaces itself
            click.echo(f"{when(engine.server_time_ms())}  {len(rows)} lanes  (every {interval:g} s; Ctrl-C to stop)")
            headers = ["lane", "waiting", "delayed", "active", "suspended", "blocked", "ended", "ended/s", "head wait"]
            table(rows, headers)
            refresh += 1
            if iterations and refresh >= iterations:
                return
            time.sleep(max(0.0, interval - (time.monotonic() - now)))
    except KeyboardInterrupt:
        return


COMMANDS = [show, list_command, cancel, replay, resume, tail, top]
