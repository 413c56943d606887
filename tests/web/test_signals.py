"""The HTTP signal endpoint under hostile clients: strict lengths, timeouts, a request cap,
bare errors, and no token or Python version given away."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import wait_for

from ff_celery.web.signals import SignalServer


@pytest.fixture
def endpoint(ff_url: str, ff_redis) -> Iterator[SignalServer]:
    server = SignalServer(ff_url, port=0, timeout_s=0.5, max_requests=2).start()
    yield server
    server.stop()


def exchange(server: SignalServer, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send ``raw``, read the whole answer (until the server closes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as client:
        client.sendall(raw)
        return read_answer(client)


def read_answer(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


EXECUTION = b"%7Bfp%3A1%7D%3A00000000-0000-0000-0000-000000000001"


def post(length_header: bytes, body: bytes = b"") -> bytes:
    start = b"POST /v1/signals/" + EXECUTION + b"/wp/go HTTP/1.1\r\nHost: x\r\n"
    return start + length_header + b"Connection: close\r\n\r\n" + body


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: -1\r\n",
        b"Content-Length: abc\r\n",
        b"Content-Length: 1e3\r\n",
        b"Transfer-Encoding: chunked\r\n",
    ],
)
def test_a_malformed_or_chunked_length_is_refused_without_reading_a_body(endpoint, header):
    answer = exchange(endpoint, post(header))
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b'"error": "bad_request"' in answer


def test_an_idle_client_is_dropped_after_the_timeout(endpoint):
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as client:
        client.sendall(b"POST /v1/signals/eid/wp/go HTTP/1.1\r\n")  # and then nothing
        assert client.recv(65536) == b""  # closed by the server, not by our 30 s timeout
    assert wait_for(lambda: endpoint.active_requests == 0)


def test_requests_over_the_cap_are_closed_at_once_and_served_again_when_slots_free(ff_url, ff_redis):
    endpoint = SignalServer(ff_url, port=0, timeout_s=120, max_requests=2).start()  # idle ones stay
    try:
        idle = [socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) for _ in range(2)]
        try:
            assert wait_for(lambda: endpoint.active_requests == 2)
            assert exchange(endpoint, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b""
        finally:
            for client in idle:
                client.close()
        assert wait_for(lambda: endpoint.active_requests == 0)
        healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert b'"status": "ok"' in exchange(endpoint, healthz)
    finally:
        endpoint.stop()


def test_the_access_log_and_server_header_give_nothing_away(endpoint, caplog):
    caplog.set_level(logging.INFO, logger="ff_celery.web.signals")
    request = b"POST /v1/signals/eid/wp/go?token=k1%3Asecret-token HTTP/1.1\r\nHost: x\r\n"
    answer = exchange(endpoint, request + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    assert b"Python" not in answer and b"secret-token" not in answer
    assert wait_for(lambda: "/v1/signals/eid/wp/go" in caplog.text)
    assert "secret-token" not in caplog.text and "token=" not in caplog.text


def test_an_unexpected_error_answers_a_bare_500(endpoint, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail: redis://10.0.0.1:6379")

    monkeypatch.setattr("ff_celery.web.signals.deliver_signal", broken)
    answer = exchange(endpoint, post(b"Content-Length: 2\r\n", b"{}"))
    assert b" 500 " in answer.split(b"\r\n")[0] and b'"error": "internal_error"' in answer
    assert b"10.0.0.1" not in answer and b"internal detail" not in answer


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def connect(server: SignalServer, source: str, timeout: float = 30.0) -> socket.socket:
    """A connection to ``server`` from the loopback address ``source`` (127.0.0.x)."""
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0))


def closed_by_server(client: socket.socket) -> bool:
    """Whether the server closed ``client`` without answering (the client's own timeout raises)."""
    try:
        return client.recv(65536) == b""
    except ConnectionResetError:
        return True


@contextmanager
def slow_clients(server: SignalServer, sources: list[str], every_s: float = 2.0) -> Iterator[list[socket.socket]]:
    """A client per source address, each sending one byte of a request every ``every_s``
    seconds for as long as the block runs; all closed after it."""
    clients = [connect(server, source) for source in sources]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(every_s):
            for client in clients:
                with contextlib.suppress(OSError):
                    client.send(b"a")

    for client in clients:
        client.sendall(b"POST /v1/signals/eid/wp/go HTTP/1.1\r\nX-Slow: ")
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        yield clients
    finally:
        stop.set()
        trickler.join(timeout=30)
        for client in clients:
            client.close()


def test_eighty_slow_clients_staying_connected_do_not_keep_a_well_behaved_client_out(ff_url, ff_redis):
    endpoint = SignalServer(ff_url, port=0, timeout_s=120).start()  # default capacity; the slow ones stay
    try:
        with slow_clients(endpoint, [f"127.0.0.{n}" for n in range(2, 82)]):
            assert wait_for(lambda: endpoint.active_requests == 80)
            assert b'"status": "ok"' in exchange(endpoint, HEALTHZ)
        assert wait_for(lambda: endpoint.active_requests == 0)
    finally:
        endpoint.stop()


def test_one_address_is_limited_in_connections_while_another_is_still_served(ff_url, ff_redis):
    endpoint = SignalServer(ff_url, port=0, timeout_s=120, max_per_client=4).start()
    try:
        with slow_clients(endpoint, ["127.0.0.2"] * 4):
            assert wait_for(lambda: endpoint.active_requests == 4)
            with connect(endpoint, "127.0.0.2") as over_the_limit:
                assert closed_by_server(over_the_limit)
            with connect(endpoint, "127.0.0.3") as other:
                other.sendall(HEALTHZ)
                assert b'"status": "ok"' in read_answer(other)
        assert wait_for(lambda: endpoint.active_requests == 0)
        with connect(endpoint, "127.0.0.2") as again:
            again.sendall(HEALTHZ)
            assert b'"status": "ok"' in read_answer(again)
    finally:
        endpoint.stop()


def test_a_burst_of_connections_is_all_queued_before_the_server_accepts_any(ff_url, ff_redis):
    endpoint = SignalServer(ff_url, port=0)  # listening, not yet accepting: the backlog holds them
    try:
        burst = [connect(endpoint, f"127.0.1.{n}", timeout=10) for n in range(1, 129)]
        for client in burst:
            client.sendall(HEALTHZ)
        endpoint.start()
        for client in burst:
            with client:
                assert b'"status": "ok"' in read_answer(client)
    finally:
        endpoint.stop()


def test_a_client_trickling_its_request_is_cut_off_at_the_deadline_although_each_read_is_quick(ff_url, ff_redis):
    endpoint = SignalServer(ff_url, port=0, timeout_s=1.0).start()
    try:
        started, cut_off = time.monotonic(), False  # before the server can accept: its deadline is later
        with connect(endpoint, "127.0.0.2") as client:
            client.sendall(b"POST /v1/signals/eid/wp/go HTTP/1.1\r\nX-Slow: ")
            while not cut_off and time.monotonic() - started < 30:
                try:
                    client.send(b"a")  # a byte every 0.1 s: no read waits anywhere near 1 s
                except ConnectionError:
                    cut_off = True
                    break
                if select.select([client], [], [], 0.1)[0]:
                    cut_off = closed_by_server(client)
            assert cut_off, "still connected after 30 s of a byte every 0.1 s"
            assert time.monotonic() - started >= 1.0
        assert wait_for(lambda: endpoint.active_requests == 0)
    finally:
        endpoint.stop()
