"""The embedded default: a throwaway ``valkey-server`` or ``redis-server`` on a free loopback
port with its own temporary directory, stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

INSTALL_HINT = (
    "no valkey-server or redis-server on PATH; install one "
    "(Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install valkey`)"
)


def find_server_binary() -> str:
    """Path of ``valkey-server`` or ``redis-server``, whichever is on PATH (Valkey preferred)."""
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DevServer:
    """A local Valkey/Redis for development and tests. Use as a context manager."""

    def __init__(self, port: int | None = None, *, binary: str | None = None, persistent: bool = False) -> None:
        self.binary = binary or find_server_binary()
        self.port = port or free_port()
        #: With an append-only file (fsync every write), kept across :meth:`restart`.
        self.persistent = persistent
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_socket(self) -> Path | None:
        """The server's unix socket (it listens on one as well as on the port)."""
        return self.directory / "server.sock" if self.directory else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 10.0) -> DevServer:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="ff-celery-server-"))
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                *durability,
                "--dir", str(self.directory),
                "--unixsocket", str(self.directory / "server.sock"),
                "--unixsocketperm", "700",
                "--logfile", str(self.directory / "server.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.binary} exited with {self.process.returncode}; see {self.directory}")
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{self.binary} did not answer PING on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop the server by its pid (SIGTERM, then SIGKILL) and remove its directory
        (unless ``keep_data``)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.process = None
        if self.directory is not None and not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self) -> DevServer:
        """Stop and start again on the same port; a persistent server keeps its data."""
        self.stop(keep_data=self.persistent)
        return self.start()

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
