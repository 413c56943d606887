"""The operator CLI against real workers: show, list, signal, budgets, tail, cancel, replay,
resume, top and the waitpoint secret, as tables and as JSON."""

import json
import re
import signal
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner

from ff_celery.cli import main
from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.engine.work.signals import SECRET_ENV

from .conftest import execution, wait_for


@pytest.fixture
def cli(app_url):
    redis_url = app_url.replace("flowfabric://", "redis://", 1)

    def run(*args, ok=True, stdin=None):
        outcome = CliRunner().invoke(main, [*args, "--url", redis_url], input=stdin)
        if ok:
            assert outcome.exit_code == 0, outcome.output + repr(outcome.exception)
        return outcome

    return run


@pytest.fixture
def worker(start_worker):
    return start_worker(concurrency=1)


def test_show_and_list_find_executions_by_task_id(ffapp, cli, worker):
    done = ffapp.add.delay(1, 2)
    done.get(timeout=10)
    table = cli("show", done.id).output
    assert f"ffapp.add [{done.id}]" in table and "completed" in table and "initial" in table
    report = json.loads(cli("show", done.id, "--json").output)
    assert report["snapshot"]["core"]["public_state"] == "completed"
    assert report["execution_id"] == execution(ffapp, done.id).execution_id

    waiting = ffapp.add.apply_async((3, 4), queue="cli-list")  # no worker on that queue
    listed = json.loads(cli("list", "--lane", "cli-list", "--state", "waiting", "--json").output)
    assert [(row["task_id"], row["public_state"]) for row in listed] == [(waiting.id, "waiting")]
    assert waiting.id in cli("list", "--lane", "cli-list").output

    missing = cli("show", "no-such-task", ok=False)
    assert missing.exit_code == 1 and "execution_not_found" in missing.output


def test_an_operator_signals_a_waiting_task_and_sees_its_waitpoint(ffapp, cli, worker):
    result = ffapp.await_approval.delay()
    assert wait_for(lambda: result.state == "SUSPENDED")
    assert "approve+reject" in cli("show", result.id).output  # the wait, by name
    assert "no_op" in cli("signal", result.id, "maybe").output
    assert "resume_condition_satisfied" in cli("signal", result.id, "approve", "--payload", '{"ok": 1}').output
    assert result.get(timeout=15) == {"signals": [["approve", {"ok": 1}, ""]]}
    shown = cli("show", result.id).output
    assert "resumed" in shown and "approve(operator)" in shown


def test_an_escalated_task_is_resumed_from_the_cli(ffapp, cli, worker):
    result = ffapp.await_approval.delay(timeout=0.3, on_timeout="escalate")
    assert wait_for(lambda: execution(ffapp, result.id).core["blocking_reason"] == "paused_by_operator", timeout=20)
    assert "waiting" in cli("resume", result.id).output
    assert result.get(timeout=15) == {"signals": []}


def test_budgets_are_created_inspected_and_reset_from_the_cli(ffapp, cli, worker):
    name = f"cli-{uuid.uuid4().hex[:6]}"
    cli("budget", "create", name, "--hard", "tokens=50", "--soft", "tokens=40")
    assert ffapp.spend_tokens.apply_async((1, 50), ff_budgets=[name]).get(timeout=15) == 50
    held = ffapp.spend_tokens.apply_async((1, 5), ff_budgets=[name])
    assert wait_for(lambda: execution(ffapp, held.id).public_state == "rate_limited")
    shown = cli("budget", "show", name).output
    assert "tokens" in shown and "50" in shown and "exhausted on tokens" in shown
    assert json.loads(cli("budget", "show", name, "--json").output)["usage"] == {"tokens": 50}
    # the worker's unblock scanner may release it first, between the reset and the CLI's count
    assert re.search(r"reset; [01] waiting executions released", cli("budget", "reset", name).output)
    assert held.get(timeout=15) == 5
    cli("quota", "create", name, "--concurrency", "2")
    assert json.loads(cli("quota", "show", name, "--json").output)["max_concurrent"] == 2
    assert cli("budget", "show", "no-such-budget", ok=False).exit_code == 1


def test_tail_follows_frames_and_progress_until_the_task_ends(ffapp, cli, worker):
    result = ffapp.streaming_report.delay(3, 0.2)
    output = cli("tail", result.id, "--block", "1").output
    assert [line for line in output.splitlines() if "log:" in line] == [f"[0] log: line {n}" for n in (1, 2, 3)]
    assert "100.0% step 3 of 3" in output
    assert output.rstrip().endswith("completed")
    frames = [json.loads(line) for line in cli("tail", result.id, "--json").output.splitlines() if line.startswith("{")]
    assert [frame.get("frame_type") for frame in frames].count("progress") == 3
    assert frames[-1] == {"execution_id": execution(ffapp, result.id).execution_id, "public_state": "completed"}


def test_cancel_and_replay_from_the_cli(ffapp, cli, worker):
    queued = ffapp.add.apply_async((1, 1), queue="cli-cancel")
    assert "cancelled (was runnable)" in cli("cancel", queued.id).output
    assert queued.state == "REVOKED"
    failed = ffapp.boom.delay()
    with pytest.raises(KeyError):
        failed.get(timeout=10)
    assert "replay scheduled" in cli("replay", failed.id).output
    assert wait_for(lambda: len(execution(ffapp, failed.id).attempts) == 2)


def test_the_waitpoint_secret_is_listed_and_rotated(ffapp, cli):
    cli("secret", "seed")
    before = json.loads(cli("secret", "kids", "--json").output)
    rotated = cli("secret", "rotate", "--kid", f"cli{uuid.uuid4().hex[:4]}", stdin="cd" * 32 + "\n").output
    assert "rotated on 256 partitions" in rotated
    after = json.loads(cli("secret", "kids", "--json").output)
    assert before["current_kid"] in after["verifying"]
    assert cli("secret", "rotate", "--kid", "nothing", ok=False, stdin="").exit_code != 0  # no secret given


def test_secret_seed_refuses_a_secret_given_on_the_command_line(cli):
    secret = "ab" * 32
    refused = cli("secret", "seed", "--secret", secret, ok=False)
    assert refused.exit_code == 2
    assert SECRET_ENV in refused.output and "--secret-file" in refused.output
    assert secret not in refused.output


def test_secret_seed_reads_the_secret_from_standard_input():
    secret = "cd" * 32
    with DevServer() as server:
        seeded = CliRunner().invoke(main, ["secret", "seed", "--secret-file", "-", "--url", server.url], input=secret)
        assert seeded.exit_code == 0, seeded.output
        stored = Engine.from_url(server.url).redis.hget(PartitionKeys(0).waitpoint_hmac, "secret:k1")
    assert stored == secret.encode()
    assert secret not in seeded.output


@pytest.mark.parametrize("command", [["secret", "kids"], ["library", "status"], ["list"]])
def test_a_mistyped_url_scheme_is_a_usage_error_that_never_shows_the_password(command):
    outcome = CliRunner().invoke(main, [*command, "--url", "redsi://:hunter2@127.0.0.1:6379/0"])
    assert outcome.exit_code == 2
    assert "redsi://:***@127.0.0.1:6379/0" in outcome.output
    assert "hunter2" not in outcome.output + repr(outcome.exception)


@pytest.mark.parametrize(
    "args",
    [
        ["quota", "create", "q", "--rate", "nan"],
        ["quota", "create", "q", "--window", "0"],
        ["budget", "create", "b", "--reset-every", "inf"],
        ["budget", "create", "b", "--hard", "tokens=1e400"],
        ["list", "--limit", "-1"],
        ["resume", "x", "--delay-ms", "1e308"],
        ["tail", "x", "--block", "nan"],
        ["top", "--interval", "-2"],
        ["metrics", "--port", "70000"],
        ["signal-server", "--metrics-port", "-1"],
        ["form-cluster", "h:99999"],
    ],
)
def test_a_cli_number_out_of_range_is_a_usage_error_naming_the_option(args):
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 2, outcome.output
    assert "must be" in outcome.output


def test_top_shows_each_lanes_executions_by_state_and_the_completion_rate(ffapp, cli, worker):
    results = [ffapp.add.delay(i, i) for i in range(5)]
    assert [result.get(timeout=30) for result in results] == [0, 2, 4, 6, 8]
    held = ffapp.add.apply_async((1, 1), countdown=600)

    output = cli("top", "--iterations", "2", "--interval", "0.5").output

    lines = [line.split() for line in output.splitlines() if not re.match(r"\d{4}-", line)]
    assert lines[0][:8] == ["LANE", "WAITING", "DELAYED", "ACTIVE", "SUSPENDED", "BLOCKED", "ENDED", "ENDED/S"]
    celery_rows = [row for row in lines[1:] if row[0] == "celery"]
    assert len(celery_rows) == 2  # one per refresh
    first, second = celery_rows  # the rate is known from the second refresh on
    assert len(first) == 8 and len(second) == 9
    delayed, ended, rate, head_wait = second[2], second[6], second[7], second[8]
    assert int(delayed) >= 1 and int(ended) >= 5 and float(rate) >= 0 and head_wait.endswith("s")
    held.revoke()


def test_a_canvas_is_drawn_as_a_flow_and_cancelled_as_one(ffapp, cli, worker):
    from celery import chain, chord

    done = chain(ffapp.add.s(1, 1), ffapp.add.s(1))()
    assert done.get(timeout=15) == 3
    flow_id = execution(ffapp, done.id).core["flow_id"]
    assert f"ff-celery flow {flow_id}" in cli("show", done.id).output
    drawn = json.loads(cli("flow", done.id, "--json").output)
    assert [(m["task_id"], m["depth"], m["after"], m["public_state"]) for m in drawn["members"]] == [
        (done.parent.id, 0, [], "completed"),
        (done.id, 1, [done.parent.id], "completed"),
    ]
    assert done.parent.id in cli("flow", flow_id).output

    # a chord on a queue no worker consumes: cancel it whole, by any member's task id
    waiting = chord([ffapp.add.s(1, 1), ffapp.add.s(2, 2)], ffapp.xsum.s()).apply_async(queue="cli-flow")
    header = [r.id for r in waiting.parent.results]
    table = cli("flow", header[0]).output
    assert "waiting_children" in table and all(task_id in table for task_id in [*header, waiting.id])
    assert "3 member(s) stopped" in cli("cancel-flow", header[1]).output
    assert wait_for(lambda: [ffapp.app.AsyncResult(t).state for t in [*header, waiting.id]] == ["REVOKED"] * 3)
    assert cli("flow", "no-such-task", ok=False).exit_code == 1


def scanners_command(app_url, *settings):
    url = app_url.replace("flowfabric://", "redis://", 1)
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return [sys.executable, "-m", "ff_celery.cli", "scanners", "--url", url, *sets]


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "a day"])
def test_scanners_refuses_a_retention_that_is_no_length_of_time(app_url, value):
    refused = subprocess.run(
        scanners_command(app_url, f"retention_s={value}"), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "retention_s" in refused.stderr


def test_scanners_keep_terminal_executions_forever_when_told(app_url, tmp_path):
    output = tmp_path / "scanners.out"
    with output.open("w") as out:
        runner = subprocess.Popen(scanners_command(app_url, "retention_s=forever"), stdout=out, stderr=out)
    try:
        assert wait_for(lambda: "scanners running" in output.read_text(), timeout=60), output.read_text()
    finally:
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 0
