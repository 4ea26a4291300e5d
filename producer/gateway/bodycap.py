"""Request bodies are capped before they are read whole.

A declared Content-Length over the cap is refused at once, without reading a byte;
a chunked body is counted as it arrives and refused at the first chunk that passes
the cap, so no route ever holds more than the cap in memory.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from producer.http_errors import PayloadTooLarge

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class BodyCap:
    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _refuse(send, f"the request body has {int(declared)} bytes, more than the limit {self.max_bytes}")
            return
        received = 0

        async def capped() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the route that reads the body: its error handler answers 413.
                    raise PayloadTooLarge(f"the request body passed the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, capped, send)


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"error": {"code": "payload_too_large", "message": message}}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})
