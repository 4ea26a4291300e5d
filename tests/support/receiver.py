"""A real HTTP webhook receiver on loopback whose behaviour each test sets per path."""
from __future__ import annotations

import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Answer:
    """What the receiver sends back when a bare status is not enough."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


@dataclass
class Receiver:
    """`behaviour[path](delivery, nth_try_of_this_webhook_id) -> status | Answer`; default 200."""

    port: int = 0
    behaviour: dict[str, Callable[[Delivery, int], int | Answer]] = field(default_factory=dict)
    received: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                tries = sum(1 for d in receiver.received if d.headers["webhook-id"] == delivery.headers["webhook-id"])
                receiver.received.append(delivery)
                answer = receiver.behaviour.get(self.path, lambda d, n: 200)(delivery, tries + 1)
                if isinstance(answer, int):
                    answer = Answer(answer)
                self.send_response(answer.status, answer.reason)
                if answer.status in (301, 302):
                    self.send_header("Location", "http://169.254.169.254/")
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://localhost:{self.port}{path}"

    def on(self, path: str) -> list[Delivery]:
        return [d for d in self.received if d.path == path]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
