"""The console's browser tests: ``ff-celery serve --console`` as a subprocess on the embedded
server, real ``celery worker`` processes (the e2e tests' fixtures and app, plus
:mod:`consoleapp`), and Debian's chromium driven through Playwright (never a downloaded
browser). Screenshots of each page go to a directory of the test run, printed at the end
(or to ``$FF_CONSOLE_SCREENSHOTS`` if set)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e.conftest import Worker, app_url, ffapp  # noqa: F401 (fixtures used here)

from ff_celery.devtools.devserver import free_port

HERE = Path(__file__).resolve().parent
E2E = HERE.parent / "e2e"
CHROMIUM = os.environ.get("FF_CHROMIUM", "/usr/bin/chromium")
#: How long a page action or assertion waits for the page (live updates under a loaded CI).
PAGE_TIMEOUT_MS = 30_000
#: The operator's token the console under test is started with.
TOKEN = "operator-token-for-tests"


@dataclass
class Console:
    """A running ``ff-celery serve --console``."""

    base_url: str
    audit_log: Path
    process: subprocess.Popen

    def audit(self) -> str:
        return self.audit_log.read_text()


def _up(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextlib.contextmanager
def serving(url: str, home: Path, *options: str, secrets: dict[str, str] | None = None) -> Iterator[Console]:
    """``ff-celery serve --url url *options`` on a free port (its audit log and output in
    ``home``), once it answers ``/healthz``; stopped afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "ff_celery.cli", "serve", "--url", url, "--port", str(port),
               "--audit-log", str(home / "audit.jsonl"), *options]  # fmt: skip
    env = {**os.environ, "FF_CONSOLE_TOKEN": TOKEN, **(secrets or {})}
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not _up(base_url):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"ff-celery serve did not start:\n{(home / 'serve.log').read_text()}")
        time.sleep(0.1)
    try:
        yield Console(base_url, home / "audit.jsonl", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def console(ff_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with serving(
        ff_server.url, tmp_path_factory.mktemp("console"), "--console", "--metrics", "--metrics-interval", "1"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def console_worker(app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:  # noqa: F811
    """One prefork worker (concurrency 2) running :mod:`consoleapp`."""
    env = {"PYTHONPATH": os.pathsep.join([str(E2E), str(HERE)])}
    worker = Worker(app_url, tmp_path_factory.mktemp("worker"), app="consoleapp", env=env).wait_ready()
    yield worker
    worker.shut_down()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    chosen = os.environ.get("FF_CONSOLE_SCREENSHOTS")
    directory = Path(chosen) if chosen else tmp_path_factory.mktemp("console-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    yield directory
    print(f"\nconsole screenshots: {directory}")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PAGE_TIMEOUT_MS)  # assertions wait as long as page actions
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.fail(f"no chromium at {CHROMIUM}: scripts/setup.sh installs Debian's (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, console: Console) -> Iterator[object]:
    """A fresh browser context (no cookies) on the console."""
    context = browser.new_context(base_url=console.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


def sign_in(page) -> None:
    """Sign in as the operator with the token."""
    page.goto("/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_selector("#operator")
