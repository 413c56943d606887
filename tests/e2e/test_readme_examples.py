"""Every code example of the README and of ``docs/**/*.md`` runs as written, in an app configured
only by its URLs (``readmeapp``), with a real server and a real ``celery worker``, and does
what the text around it says.

Blocks are found by ``readme_blocks``; each is claimed by exactly one test below (``@runs``,
by a marker only that block contains) or exempted (``EXEMPT``, with the reason), so a new
example fails :func:`test_every_example_is_run_by_a_test_or_exempted` until a test runs it.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from ff_celery.devtools.devserver import DevServer, free_port
from ff_celery.engine.duties.scanners import SCANNER_LEADER_KEY, ScannerSettings
from ff_celery.engine.work.budgets import budget_id_for, quota_id_for
from ff_celery.engine.work.lane_shards import shard_lanes

from .conftest import HERE, Worker, wait_for
from .readme_blocks import ROOT, Block, at_address, blocks, is_definition, run

pytest_plugins = ["pytester"]

#: Blocks that are not run, by a marker only they contain, with the reason.
EXEMPT = {
    "./scripts/demo.sh": "sets up the machine and runs the whole demo and suite: what CI itself runs",
    "bench/celery_bench.py --count": "a benchmark: minutes of both cores",
    "bench/canvas_bench.py": "a benchmark: minutes of both cores",
    "bench/celery_bench.py --cluster": "a benchmark: minutes of both cores",
    "bench/suspend_bench.py": "a benchmark: minutes of both cores",
    "bench/engine_bench.py": "a benchmark: minutes of both cores",
    "bench/footprint.py": "a benchmark: minutes of both cores",
    "bench/hotpath.py": "a benchmark: minutes of both cores, against another git revision",
    "bench/soak.py --steady": "a soak run: ten minutes of both cores",
    "bench/soak.py --count": "a soak run: minutes of both cores",
    "rm -rf /tmp/ff-metrics": (
        "a fixed directory and port shared by everyone on the machine; tests/e2e/test_metrics.py runs a "
        "prefork worker in multiprocess mode with flowfabric_metrics_port set, as this block does"
    ),
    "lua/                   FlowFabric's": "the repository's layout, not code",
    "(your code, unchanged)": "a drawing of the layers (docs/architecture.md), not code",
    "ff-celery library source|load|status": "a synopsis of the setup commands (tests/e2e/test_operator_cli.py)",
    "export FF_CONSOLE_TOKEN": "serves on a fixed port until interrupted; tests/web starts ff-celery serve so",
    '"who": "token", "address"': "an audit log line, not code (tests/web checks the log's entries)",
    "--root-path /ff --forwarded-allow-ips": "serves until interrupted; tests/web/test_console_http.py runs it so",
    "location /ff/ {": "an nginx configuration, not code",
}
#: Blocks run by a test below: marker -> the test's name.
RUNNERS: dict[str, str] = {}


def runs(*markers: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Declares the blocks a test runs, each by a marker only that block contains."""

    def declare(test: Callable[..., None]) -> Callable[..., None]:
        RUNNERS.update(dict.fromkeys(markers, test.__name__))
        return test

    return declare


def block_with(marker: str) -> Block:
    (block,) = [block for block in blocks() if marker in block.text]
    return block


def address_of(server: DevServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_every_example_is_run_by_a_test_or_exempted():
    claimed = {**RUNNERS, **EXEMPT}
    unclaimed, doubly = [], []
    for block in blocks():
        markers = [marker for marker in claimed if marker in block.text]
        if not markers:
            unclaimed.append(block.name)
        elif len(markers) > 1:
            doubly.append(f"{block.name}: {markers}")
    assert not unclaimed, f"examples no test runs (add a runner, or an exemption with its reason): {unclaimed}"
    assert not doubly, f"examples claimed twice: {doubly}"
    stale = [marker for marker in claimed if sum(marker in block.text for block in blocks()) != 1]
    assert not stale, f"markers that match no example, or several: {stale}"


# -- the app, its server and its worker ------------------------------------------------------


@pytest.fixture(scope="module")
def readme_server() -> Iterator[DevServer]:
    with DevServer() as server:
        yield server


@pytest.fixture(scope="module")
def readmeapp(readme_server: DevServer):
    url = f"flowfabric://{address_of(readme_server)}/0"
    os.environ["READMEAPP_URL"] = url
    sys.path.insert(0, str(HERE))
    import readmeapp

    return readmeapp


@pytest.fixture(scope="module")
def readme_worker(readmeapp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    url = readmeapp.app.conf.broker_url
    worker = Worker(url, tmp_path_factory.mktemp("readme"), app="readmeapp", env={"READMEAPP_URL": url})
    with stopped_at_exit(worker):
        yield worker.wait_ready()


@contextmanager
def stopped_at_exit(worker: Worker) -> Iterator[Worker]:
    try:
        yield worker
    finally:
        worker.shut_down()


def run_for_the_caller(readmeapp, block: Block, address: str, **supplied: Any) -> dict[int, Any]:
    """What an app-defining block does besides defining (its calls, its ``with``), in the
    namespace its definitions were made in."""
    namespace = readmeapp.NAMESPACES[block.name]
    namespace.update(supplied)
    return run([s for s in block.statements(address) if not is_definition(s)], namespace, block.document)


def run_as_a_script(block: Block, address: str, **supplied: Any) -> tuple[dict[int, Any], list[str]]:
    """A caller's block, whole: the values of its bare expressions and the lines it printed."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        values = run(block.statements(address), {"__name__": "__main__", **supplied}, block.document)
    return values, printed.getvalue().splitlines()


# -- Python examples -------------------------------------------------------------------------


@runs("app.conf.broker_transport_options = {")
def test_settings_spread_the_queue_over_three_lanes_in_publisher_and_worker(readmeapp, readme_worker):
    app = readmeapp.app
    assert ScannerSettings(**app.conf.flowfabric_scanner_settings).lease_expiry_interval_s == 1.5
    results = [readmeapp.merge.delay(number) for number in range(6)]
    assert [result.get(timeout=30) for result in results] == list(range(6))  # the worker consumes all three
    engine = app.backend.engine
    lanes = [engine.snapshot(engine.resolve(result.id)).core["lane_id"] for result in results]
    assert sorted(lanes) == sorted(shard_lanes("celery", 3, engine.partitions) * 2)


@runs("# conftest.py")
def test_pytest_plugin_example_passes_in_a_users_own_pytest_session(pytester: pytest.Pytester):
    files: dict[str, list[str]] = {}
    for line in block_with("# conftest.py").text.splitlines():
        if line.startswith("# ") and line.endswith(".py"):
            name = line[2:]
        files.setdefault(name, []).append(line)
    assert set(files) == {"conftest.py", "test_tasks.py"}
    for name, lines in files.items():
        (pytester.path / name).write_text("\n".join(lines) + "\n")
    outcome = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcome.assert_outcomes(passed=1)


@runs("def publish_invoice(", "point = suspended_waitpoint(result)")
def test_waiting_task_suspends_and_the_signal_sent_as_shown_resumes_it(readmeapp, readme_worker, readme_server):
    invoice = readmeapp.NAMESPACES[block_with("def publish_invoice(").name]["publish_invoice"]
    result = invoice.delay("inv-1")
    assert wait_for(lambda: result.state == "SUSPENDED", timeout=30), result.state
    assert set(result.info) >= {"waitpoint", "signal_names", "timeout_at"}
    assert set(result.info["waitpoint"]) == {"name", "execution_id", "waitpoint_id", "token", "task_id"}
    assert result.info["signal_names"] == ["approve", "reject"]
    assert result.info["waitpoint"]["name"] == "approval"
    journal = readmeapp.journal()
    (link,) = journal.lrange("readme:approval-links", 0, -1)
    assert link.decode().startswith("https://hooks.example.com/v1/signals/")
    assert "/approve?token=" in link.decode()

    sender = block_with("point = suspended_waitpoint(result)")
    values, _ = run_as_a_script(sender, address_of(readme_server), result=result)
    assert list(values.values())[-1] == "resume_condition_satisfied"  # `outcome.effect`
    assert result.get(timeout=30) == {"published": True, "draft": "draft of inv-1"}
    assert journal.llen("readme:rendered:inv-1") == 2  # the code before the wait ran again


@runs("curl -X POST")
def test_curl_callback_through_the_signal_server_resumes_the_waiting_task(readmeapp, readme_worker, tmp_path):
    url = readmeapp.app.conf.broker_url.replace("flowfabric://", "redis://", 1)
    endpoint = f"127.0.0.1:{free_port()}"
    log = tmp_path / "signal-server.log"
    # the bullet's own command, on a free port
    with command_running(f"ff-celery signal-server --url {url} --port {endpoint.split(':')[1]}", log):
        assert wait_for(lambda: "signal endpoint on" in log.read_text(), timeout=30), log.read_text()
        invoice = readmeapp.NAMESPACES[block_with("def publish_invoice(").name]["publish_invoice"]
        result = invoice.delay("inv-2")
        assert wait_for(lambda: result.state == "SUSPENDED", timeout=30), result.state
        point = result.info["waitpoint"]
        # the template's elisions filled in: the execution id, the waitpoint id, the token
        (command,) = commands(block_with("curl -X POST"), "")
        command = re.sub(r"%7Bfp%3A\d+%7D%3A\.\.\.", quote(point["execution_id"], safe=""), command)
        command = command.replace("<waitpoint id>", point["waitpoint_id"]).replace("k1:...", point["token"])
        command = command.replace("127.0.0.1:8765", endpoint)
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["effect"] == "resume_condition_satisfied"
    assert result.get(timeout=30) == {"published": True, "draft": "draft of inv-2"}


@runs("def summarize(")
def test_budget_stops_the_call_over_its_hard_limit_and_holds_the_next_until_a_reset(
    readmeapp, readme_worker, readme_server
):
    block = block_with("def summarize(")
    run_for_the_caller(readmeapp, block, address_of(readme_server), docs=["doc-1", "doc-2"])
    app, journal = readmeapp.app, readmeapp.journal()
    assert wait_for(lambda: journal.llen("readme:llm-calls") == 2, timeout=30)
    calls = [app.AsyncResult(task_id.decode()) for task_id in journal.lrange("readme:llm-calls", 0, -1)]
    assert wait_for(lambda: all(call.ready() for call in calls), timeout=30)
    # two calls of 120 000 tokens under a hard limit of 200 000: the second report is refused
    outcomes = sorted((call.state, type(call.result).__name__, call.id) for call in calls)
    assert [outcome[:2] for outcome in outcomes] == [("FAILURE", "BudgetExceeded"), ("SUCCESS", "str")]
    engine = app.backend.engine
    (attempt,) = engine.snapshot(engine.resolve(outcomes[0][2])).attempts  # no retry
    assert attempt.fields["failure_category"] == "budget_exceeded"
    budgets = readmeapp.NAMESPACES[block.name]["budgets"]
    status = budgets.budget_status(app, "llm-tokens")
    assert status.usage == {"tokens": readmeapp.TOKENS_PER_CALL, "cost_micros": 10_000}

    # the task's own budget (`@app.task(ff_budgets=[...])`) holds the next call back
    summarize = readmeapp.NAMESPACES[block.name]["summarize"]
    late = summarize.delay("doc-3")
    assert wait_for(lambda: late.state != "PENDING", timeout=30)
    assert late.state == "BLOCKED"
    assert late.info["reason"] == "waiting_for_budget"
    execution = engine.resolve(late.id)
    assert engine.read_core(execution, "budget_ids")["budget_ids"] == budget_id_for("llm-tokens")
    assert engine.read_core(execution, "quota_policy_id")["quota_policy_id"] == quota_id_for("openai")
    budgets.reset_budget(app, "llm-tokens")
    assert late.get(timeout=30) == "summary: summarize doc-3"


@runs("def build_report(", "streams.read_frames(app, task_id")
def test_streamed_frames_and_progress_are_read_back_as_shown(readmeapp, readme_worker, readme_server):
    build_report = readmeapp.NAMESPACES[block_with("def build_report(").name]["build_report"]
    result = build_report.delay("ds-1")
    assert result.get(timeout=30) == "ok"
    readers = block_with("streams.read_frames(app, task_id")
    values, printed = run_as_a_script(readers, address_of(readme_server), app=readmeapp.app, task_id=result.id)
    (read,) = values.values()  # what `read_frames` answered
    assert read.closed and [frame.frame_type for frame in read.frames] == ["log", "progress"] * 3
    progress = [json.dumps({"percent": 100 * n / 3, "message": f"chunk {n}"}) for n in (1, 2, 3)]
    assert printed == [line for n in (1, 2, 3) for line in (f"0 log chunk {n} done", f"0 progress {progress[n - 1]}")]


@runs("engine = Engine.from_url(")
def test_engine_example_submits_claims_and_completes(readme_server):
    sent: list[bytes] = []
    _, printed = run_as_a_script(block_with("engine = Engine.from_url("), address_of(readme_server), send=sent.append)
    assert sent == [b'{"to": "a@b.c"}']
    assert printed == ["completed"]


# -- the migration and the commands ------------------------------------------------------------

PROJECT = ROOT / "examples" / "proj"
CANVAS_CHECK = """
import json
from celery import chain, chord
from proj.tasks import add, fetch_price, mul, xsum
print(json.dumps([
    chain(add.s(2, 2), mul.s(8))().get(timeout=30),
    chord(add.s(n, n) for n in range(4))(xsum.s()).get(timeout=30),
    fetch_price.delay("FF", fail_times=1).get(timeout=30)["retries"],
]))
"""


def check_the_project(pythonpath: Path, env: dict[str, str] | None = None) -> None:
    """A chain, a chord and a retrying task of ``proj``, from a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", CANVAS_CHECK],
        env={**os.environ, "PYTHONPATH": str(pythonpath), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [32, 12, 1]


@pytest.fixture
def project_server() -> Iterator[DevServer]:
    with DevServer() as server:
        yield server


@runs('-app = Celery("proj", broker="redis://')
def test_migration_diff_changes_only_the_urls_and_the_unchanged_tasks_run(project_server, tmp_path):
    lines = block_with('-app = Celery("proj", broker="redis://').text.splitlines()
    before = "\n".join(line[1:] for line in lines if line[:1] in " -") + "\n"
    after = "\n".join(line[1:] for line in lines if line[:1] in " +") + "\n"
    assert before.replace("redis://", "flowfabric://") == after  # the URLs and nothing else
    package = tmp_path / "proj"
    package.mkdir()
    for unchanged in ("__init__.py", "tasks.py"):
        (package / unchanged).write_text((PROJECT / unchanged).read_text())
    (package / "celery.py").write_text(at_address(after, address_of(project_server)))
    worker = Worker(project_server.url, tmp_path, app="proj", env={"PYTHONPATH": str(tmp_path)})
    with stopped_at_exit(worker):
        worker.wait_ready()
        check_the_project(tmp_path)


@contextmanager
def command_running(command: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A README command line in bash from the repository root, the virtualenv's commands
    first on PATH; its process group is interrupted afterwards (Ctrl-C), killed if need be."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env={**os.environ, "PATH": path},
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def commands(block: Block, address: str) -> list[str]:
    """The block's command lines (continuations joined), comments kept."""
    text = block.at(address) if address else block.text
    return text.replace("\\\n", " ").strip().splitlines()


@runs("pip install ff-celery")
def test_worker_command_runs_the_example_project(project_server, tmp_path):
    install, start = commands(block_with("pip install ff-celery"), address_of(project_server))
    # not run: a pip install from PyPI; tests/e2e/test_clean_install.py installs the repository
    # into a clean virtualenv with pip, as the comment offers
    assert install.startswith("pip install ff-celery")
    log = tmp_path / "worker.log"
    with command_running(start, log) as process:
        assert wait_for(lambda: "ready." in log.read_text() or process.poll() is not None, timeout=60)
        assert process.poll() is None, log.read_text()
        check_the_project(ROOT / "examples", {"PROJ_URL": f"flowfabric://{address_of(project_server)}/0"})


@runs("ff-celery scanners --url redis://valkey")
def test_scanners_command_runs_standalone_and_leads(project_server, tmp_path):
    (command,) = commands(block_with("ff-celery scanners --url redis://valkey"), address_of(project_server))
    log = tmp_path / "scanners.log"
    leader = redis.Redis.from_url(project_server.url)
    with command_running(command, log) as process:
        assert wait_for(lambda: "scanners running as" in log.read_text() or process.poll() is not None, timeout=30)
        instance = log.read_text().split("scanners running as ")[1].split(";")[0]
        assert wait_for(lambda: leader.get(SCANNER_LEADER_KEY) == instance.encode(), timeout=30)
    assert process.returncode == 0, log.read_text()
