"""The embedded default: a local server on a free loopback port, stopped by its pid."""

import os
import signal
import subprocess
import sys

import pytest
import redis

from ff_celery.devserver import DevServer, find_server_binary
from ff_celery.engine.library import library_version, loaded_version


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_starts_on_a_free_loopback_port_and_stops_by_pid():
    server = DevServer().start()
    pid, directory = server.pid, server.directory
    try:
        assert server.url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(server.url).ping()
        assert directory.is_dir()
    finally:
        server.stop()
    assert not pid_alive(pid)
    assert not directory.exists()


def test_prefers_valkey_and_falls_back_to_redis_server():
    assert os.path.basename(find_server_binary()) in ("valkey-server", "redis-server")


def test_says_what_to_install_when_no_server_is_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        find_server_binary()


def test_cli_dev_server_runs_until_interrupted_with_the_library_loaded():
    process = subprocess.Popen([sys.executable, "-m", "ff_celery.cli", "dev-server"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = line.split()[0]
        server_pid = int(line.split("pid ")[1].split(";")[0])
        assert loaded_version(redis.Redis.from_url(url)) == library_version()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    assert not pid_alive(server_pid)


def test_a_persistent_server_keeps_its_data_across_a_restart_and_a_plain_one_does_not():
    for persistent, kept in ((True, b"1"), (False, None)):
        with DevServer(persistent=persistent) as server:
            redis.Redis(port=server.port).set("k", 1)
            server.restart()
            assert redis.Redis(port=server.port).get("k") == kept
