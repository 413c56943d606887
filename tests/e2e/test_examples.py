"""The showcase examples run as a user runs them (``python examples/<name>.py`` from the
repository root), each starting and stopping its own server and worker. The three run at the
same time, started once for the module, so the tests cost about as long as the slowest one."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("approval_gate", "token_budget_fanout", "streaming_progress")
TIMEOUT_S = 120


class Run:
    def __init__(self, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, f"examples/{name}.py"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._output: str | None = None

    def output(self) -> str:
        """The script's whole output, once it exited with 0."""
        if self._output is None:
            try:
                self._output, _ = self.process.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self._output = self.process.communicate()[0] + f"\n[killed after {TIMEOUT_S} s]"
        assert self.process.returncode == 0, f"{self.name} exited with {self.process.returncode}:\n{self._output}"
        return self._output


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, Run]]:
    started = {name: Run(name) for name in EXAMPLES}
    yield started
    for run in started.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def test_approval_gate_rejects_a_forged_callback_and_resumes_on_the_real_one(runs):
    output = runs["approval_gate"].output()
    assert "state: SUSPENDED, waiting for ['approve', 'reject']" in output
    assert "the only worker slot is free: add(20, 22) ran meanwhile -> 42" in output
    assert "forged callback (made-up token) -> 403 invalid_token; task still SUSPENDED" in output
    assert "real approve link clicked         -> 202 resume_condition_satisfied" in output
    assert "'decision': 'approve', 'by': 'ada', 'note': 'within budget, ship it', 'via': 'approvals-ui'" in output
    assert "mails in the mailbox now: 0" in output  # the code before the wait ran again, idempotently
    assert "the reject link, clicked too late -> 409 target_not_signalable" in output
    assert output.rstrip().endswith("done: signal server, worker and server stopped")


def test_token_budget_stops_a_call_holds_the_rest_and_a_reset_releases_them(runs):
    output = runs["token_budget_fanout"].output()
    assert "hard limit hit: a report of tokens was refused" in output
    before, after = output.split("reset_budget('llm-tokens') -> usage 0/3000 tokens")
    stopped, waiting = map(int, re.search(r"(\d+) call\(s\) stopped with BudgetExceeded, (\d+) wait", before).groups())
    assert stopped >= 1 and waiting >= 1
    assert before.count("BLOCKED  execution rate_limited (waiting_for_budget)") == waiting
    assert f"one second later: {waiting} still rate_limited" in before
    assert f"{waiting} blocked calls finished after the reset" in after
    assert "BLOCKED" not in after and after.count("SUCCESS") == 8 - stopped
    assert after.count("FAILURE  BudgetExceeded") == stopped  # the stopped calls stay failed, no retry
    assert output.rstrip().endswith("done: worker and server stopped")


def test_streaming_progress_is_followed_live_to_100_percent(runs):
    output = runs["streaming_progress"].output()
    bars = re.findall(r"\] +(\d+\.\d)%  (\d+)/10 documents", output)
    assert [float(percent) for percent, _ in bars] == [10.0 * step for step in range(1, 11)]
    assert "log (attempt 0): indexed 'annual report 2025'" in output
    assert "log (attempt 0): index written" in output
    assert "(SUCCESS)" in output
    seen = int(re.search(r"PROGRESS (\d+) times out of 10", output).group(1))
    # the Celery state mirrors the progress while the task runs (how many of the ten reads see
    # it depends on how far the follower lags behind the task, with three examples at once)
    assert seen >= 1
    assert "read_frames afterwards: 22 frames (12 log, 10 progress), closed: attempt_success" in output
    assert output.rstrip().endswith("done: worker and server stopped")
