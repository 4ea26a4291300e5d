"""Request bodies: capped before they are read whole, then read as JSON or multipart/form-data.

A declared Content-Length over the cap is refused at once, without reading a byte;
a chunked body is counted as it arrives and refused at the first chunk that passes
the cap, so no route ever holds more than the cap in memory.
"""
from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from fastapi import Request

from producer.http_errors import PayloadTooLarge, UnsupportedMediaType
from tasks.errors import InvalidInput
from tasks.schemas import check_unicode

JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
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


async def read_body(request: Request, accepted: tuple[str, ...]) -> bytes:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in accepted:
        raise UnsupportedMediaType(f"Content-Type {media or '(none)'!r} is not one of {', '.join(accepted)}")
    return await request.body()


def parse_json(data: bytes) -> Any:
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {str(exc)[:200]}") from None
    try:
        _check_strings(body)
    except RecursionError:  # nested as deep as the parser allows, deeper than any job body
        raise InvalidInput("the body is nested too deeply") from None
    return body


def _check_strings(value: Any, where: str = "the body") -> None:
    """Every string of a parsed body encodable as UTF-8: JSON's escapes can spell a lone surrogate
    ("\\ud800"), which every field would carry into the record, and no answer can hold."""
    if isinstance(value, str):
        check_unicode(where, value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, f"{where}: a key")
            _check_strings(item, f"{where}.{key}" if key.isascii() else where)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, where)


async def read_job(request: Request, max_image_bytes: int) -> tuple[Any, bytes | None]:
    """The job body and, from multipart/form-data, the image file's bytes."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != MULTIPART_TYPE:
        return parse_json(await read_body(request, (JSON_TYPE, MULTIPART_TYPE))), None
    # The `request` part may itself be a file part (curl -F request=@job.json, a browser Blob).
    form = await request.form(max_files=2, max_fields=4, max_part_size=2**20)
    try:
        request_part = form.get("request")
        if request_part is None:
            raise InvalidInput("a multipart job needs a `request` part holding the job's JSON")
        if isinstance(request_part, str):
            text = request_part
        else:
            try:
                text = (await request_part.read()).decode("utf-8")
            except UnicodeDecodeError:  # as the JSON body would be refused, not read with U+FFFD in it
                raise InvalidInput("the `request` part is not UTF-8") from None
        if len(form.getlist("image")) > 1:
            raise InvalidInput("a multipart job has one `image` part; this one has several")
        image_part = form.get("image")
        if image_part is None:
            return parse_json(text.encode()), None
        if isinstance(image_part, str):
            raise InvalidInput("the `image` part must be a file")
        image = await image_part.read(max_image_bytes + 1)
        if len(image) > max_image_bytes:
            raise PayloadTooLarge(f"the image part has more than {max_image_bytes} bytes")
        return parse_json(text.encode()), image
    finally:
        await form.close()
