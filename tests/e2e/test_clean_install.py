"""``pip install`` of the repository into a clean virtualenv, without extras, is enough to run
a URL-only app: its worker and its publisher, nothing else installed."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

from .conftest import HERE, Worker

ROOT = HERE.parents[1]


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("clean-venv")
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        check=True,
        timeout=600,
    )
    return python


def test_a_url_only_app_runs_from_a_plain_install(clean_python, ff_server, tmp_path):
    base = f"127.0.0.1:{ff_server.port}"
    env = {"PLAINAPP_BROKER": f"flowfabric://{base}/5", "PLAINAPP_BACKEND": f"flowfabric://{base}/6"}
    worker = Worker(f"flowfabric://{base}/5", tmp_path, app="plainapp", env=env, python=str(clean_python))
    worker.wait_ready()
    try:
        done = subprocess.run(
            [clean_python, "-c", "from plainapp import add; print(add.delay(4, 5).get(timeout=30))"],
            cwd=HERE,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "9"
    finally:
        worker.stop()
