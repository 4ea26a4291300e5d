"""Outbound HTTP deadlines against real loopback servers that answer slowly on purpose.

A socket timeout bounds each read, not the exchange: a server that sends one byte
every 0.3 s never trips it. The deadline covers connect, TLS, headers and body
together; these tests hold it to the limit with a generous margin.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from tasks.errors import InvalidInput
from tasks.ssrf import AllowList
from worker.outbound import fetch, post

LOOPBACK = AllowList.parse("127.0.0.1")
DRIP_EVERY_S = 0.3
LIMIT_S = 1.0
MARGIN_S = 5.0  # generous: the machine is shared; without the deadline a drip lasts minutes


class SlowServer:
    """Reads one request, sends `answer` at once, then `drip` one byte every 0.3 s, then closes."""

    def __init__(self, answer: bytes, drip: bytes = b"") -> None:
        self.answer = answer
        self.drip = drip
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def url(self, path: str = "/x", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}?token=secret"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                if not self.drip.startswith(b"\x16"):  # a TLS client speaks first, but not HTTP
                    self._read_request(connection)
                connection.sendall(self.answer)
                for byte in self.drip:
                    if self.stopped.wait(DRIP_EVERY_S):
                        return
                    connection.sendall(bytes([byte]))
            except OSError:
                return  # the client hung up: what the deadline is for

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += connection.recv(65536)

    def stop(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.fixture
def slow_server() -> Iterator[type[SlowServer]]:
    servers: list[SlowServer] = []

    def start(answer: bytes, drip: bytes = b"") -> SlowServer:
        servers.append(SlowServer(answer, drip))
        return servers[-1]

    yield start  # type: ignore[misc]
    for server in servers:
        server.stop()


# Each would take ~30 s and more to finish at one byte per 0.3 s.
DRIPS = {
    "status line": (b"", b"HTTP/1.1 200 OK\r\n" + b"X" * 100),
    "headers": (b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 100 + b"\r\n\r\n"),
    "body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"b" * 100),
    "tls handshake": (b"", b"\x16\x03\x03\x40\x00" + b"\x00" * 100),
}


@pytest.mark.parametrize("stage", list(DRIPS))
def test_fetch_ends_at_its_deadline_whatever_stage_drips(slow_server, stage: str) -> None:
    answer, drip = DRIPS[stage]
    server = slow_server(answer, drip)
    scheme = "https" if stage == "tls handshake" else "http"
    started = time.monotonic()
    with pytest.raises(InvalidInput) as raised:
        fetch(server.url("/image.png", scheme), max_bytes=10_000, timeout_s=LIMIT_S, allow=LOOPBACK)
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT_S + MARGIN_S
    message = str(raised.value)
    assert f"{scheme}://127.0.0.1:{server.port}/image.png" in message and "1 s limit" in message
    assert "secret" not in message  # the query (tokens) is not repeated


def test_post_ends_at_its_deadline_on_a_dripping_receiver(slow_server) -> None:
    answer, drip = DRIPS["headers"]
    server = slow_server(answer, drip)
    started = time.monotonic()
    result = post(server.url(), b"{}", {}, timeout_s=LIMIT_S, allow=LOOPBACK)
    assert time.monotonic() - started < LIMIT_S + MARGIN_S
    assert result.status is None and result.error == "no complete answer within the 1 s deadline"


def test_a_quick_answer_is_unaffected_by_the_deadline(slow_server) -> None:
    server = slow_server(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
    result = post(server.url(), b"{}", {}, timeout_s=LIMIT_S, allow=LOOPBACK)
    assert (result.status, result.error) == (204, None)
    body_server = slow_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert fetch(body_server.url(), max_bytes=10, timeout_s=LIMIT_S, allow=LOOPBACK)[0] == b"abc"


@pytest.mark.parametrize("header, seconds", [
    ("1e300", 1e300),
    ("inf", float("inf")),
    ("120", 120.0),
    ("-5", 0.0),
    ("nan", None),
    ("soon, please", None),
    ("Fri, 31 Dec 99999 23:59:59 GMT", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: at once
])
def test_retry_after_of_any_shape_is_read_without_breaking(slow_server, header: str, seconds: float | None) -> None:
    server = slow_server(
        f"HTTP/1.1 503 Busy\r\nRetry-After: {header}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    result = post(server.url(), b"{}", {}, timeout_s=LIMIT_S, allow=LOOPBACK)
    assert result.status == 503 and result.retry_after_s == seconds


def test_control_characters_of_a_reason_phrase_are_not_kept(slow_server) -> None:
    server = slow_server(b"HTTP/1.1 500 Oops\x1b]0;pwned\x07\x1b[2J\r\nContent-Length: 0\r\n\r\n")
    result = post(server.url(), b"{}", {}, timeout_s=LIMIT_S, allow=LOOPBACK)
    assert result.error == "HTTP 500 Oops]0;pwned[2J"
