"""Running an ASGI app on uvicorn with guards against hostile clients, which uvicorn leaves to
a proxy: at most ``max_connections`` connections at once and ``max_per_client`` from one
address (further ones are closed at once, unanswered); a client must send each whole request
within ``timeout_s`` of connecting or of its previous answer, however quickly each byte comes
(uvicorn has no deadline for reading a request); a deep listen backlog for bursts. The socket
is bound and listening when the server is created, before it accepts."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a client has to send a whole request.
DEFAULT_TIMEOUT_S = 10.0
#: Connections open at once.
DEFAULT_MAX_CONNECTIONS = 256
#: Connections open at once from one client address.
DEFAULT_MAX_PER_CLIENT = 16
#: Connections the kernel queues before they are accepted (capped by ``net.core.somaxconn``).
LISTEN_BACKLOG = 1024
#: Seconds a stopping server waits for answers in progress (live event streams included).
GRACEFUL_SHUTDOWN_S = 5.0
#: h11 states of a peer that has sent its whole request.
REQUEST_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.SWITCHED_PROTOCOL)


@dataclass
class ConnectionLimits:
    """Connections open now, overall and by client address (touched by the event loop only)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_client: int = DEFAULT_MAX_PER_CLIENT
    timeout_s: float = DEFAULT_TIMEOUT_S
    open: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def admit(self, client: str) -> bool:
        if self.open >= self.max_connections or self.by_client.get(client, 0) >= self.max_per_client:
            return False
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        self.open -= 1
        if self.by_client[client] == 1:
            del self.by_client[client]
        else:
            self.by_client[client] -= 1


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol under :class:`ConnectionLimits` and a deadline per request."""

    limits: ConnectionLimits  # set on the subclass :func:`guarded_protocol` makes
    bad_request_body = b"Invalid HTTP request received."

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        peer = transport.get_extra_info("peername")
        self.peer_address = peer[0] if isinstance(peer, tuple) else ""
        self.admitted = self.limits.admit(self.peer_address)
        self.deadline: asyncio.TimerHandle | None = None
        if not self.admitted:  # closed unanswered: a FIN first, so the client reads the end, not a reset
            self.transport = transport
            transport.write_eof()
            transport.close()
            return
        super().connection_made(transport)
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.limits.timeout_s, self._deadline_passed)

    def _deadline_passed(self) -> None:
        if self.conn.their_state not in REQUEST_RECEIVED:  # still sending (or idle): cut it off
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()  # the next request on this connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        if self.deadline is not None:
            self.deadline.cancel()
        self.limits.release(self.peer_address)
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, with a body of this server's choosing."""
        event = h11.Response(
            status_code=400,
            reason=b"Bad Request",
            headers=[(b"content-type", b"application/json"), (b"connection", b"close")],
        )
        for part in (event, h11.Data(data=self.bad_request_body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(part))
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits, bad_request_body: bytes | None = None) -> type[GuardedProtocol]:
    """A protocol class for one server's ``limits`` (uvicorn makes an instance per connection)."""
    attributes: dict[str, Any] = {"limits": limits}
    if bad_request_body is not None:
        attributes["bad_request_body"] = bad_request_body
    return type("GuardedProtocol", (GuardedProtocol,), attributes)


class WebServer:
    """An ASGI app on uvicorn, listening on ``host:port`` (port 0 picks a free one) from creation on."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: ConnectionLimits | None = None,
        bad_request_body: bytes | None = None,
        root_path: str = "",
        forwarded_allow_ips: str = "127.0.0.1",
    ) -> None:
        self.limits = limits or ConnectionLimits()
        self.socket = socket.create_server((host, port), backlog=LISTEN_BACKLOG)
        config = uvicorn.Config(
            app,
            http=guarded_protocol(self.limits, bad_request_body),
            root_path=root_path.rstrip("/"),
            proxy_headers=True,
            forwarded_allow_ips=forwarded_allow_ips,
            server_header=False,
            access_log=False,
            log_config=None,
            timeout_keep_alive=int(max(1, self.limits.timeout_s)),
            timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN_S),
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def active_requests(self) -> int:
        """Connections open now."""
        return self.limits.open

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.socket.getsockname()[0]}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until SIGINT or SIGTERM."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, timeout_s: float = 30.0) -> WebServer:
        """Serve in a background thread; back once it accepts."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="ff-web-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.should_exit = True
            self._thread.join(timeout=GRACEFUL_SHUTDOWN_S + 5)
        self.socket.close()
