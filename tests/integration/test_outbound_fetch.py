"""An image URL whose server drips its answer: the job fails `invalid_input` at the fetch
deadline (VISIONQ_FETCH_TIMEOUT_S, default 15 s) and the worker goes on serving."""
from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from producer import Client
from tests.support.images import scene

pytestmark = pytest.mark.integration

DEFAULT_FETCH_TIMEOUT_S = 15


@pytest.fixture
def dripping_url() -> Iterator[str]:
    """A loopback server that sends one header byte every 0.3 s, for minutes."""
    stopped = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def drip(connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\n")
                for _ in range(1000):
                    if stopped.wait(0.3):
                        return
                    connection.sendall(b"a")
            except OSError:
                return  # the worker hung up at its deadline

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    stopped.set()
    listener.close()


def test_a_dripping_image_url_fails_the_job_at_the_fetch_deadline(client: Client, dripping_url: str) -> None:
    job = client.caption(dripping_url).wait(timeout=DEFAULT_FETCH_TIMEOUT_S + 45)  # a bound, not a measurement
    assert job.status == "failed" and job.error["code"] == "invalid_input"
    assert dripping_url in job.error["message"]
    assert f"within the {DEFAULT_FETCH_TIMEOUT_S} s limit" in job.error["message"]
    assert client.caption(scene()).wait(timeout=60).status == "succeeded"  # the worker still serves
