"""The SDK's HTTP mode: jobs through a visionq gateway with an API key, never Redis.

`HttpJobSource` is the `JobSource` a `Job` reads through when the `Client` was made with
`api_url` (or VISIONQ_API_URL): the same `Job`, the same records, the same exceptions
(`producer.http_errors` reads the gateway's error body back into them). `wait()` follows
the job's server-sent events instead of polling.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlparse

import httpx
from PIL import Image

from producer.http_errors import error_from_response
from tasks.errors import InvalidInput, VisionqError
from tasks.images import png_of
from tasks.heartbeats import serving_of
from tasks.kinds import JobKind
from tasks.record import JobRecord
from tasks.store import NotFinalYet
from tasks.schemas import missing_local_image

USER_AGENT = "visionq-sdk"
# Image references the gateway reads itself; local files travel as an upload.
REMOTE_SCHEMES = ("http://", "https://", "s3://", "data:")
# Reading an event stream: the gateway writes a keep-alive comment every 15 s.
STREAM_READ_TIMEOUT_S = 30.0


class HttpJobSource:
    def __init__(self, api_url: str, api_key: str, *, timeout_s: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.address = api_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.address, timeout=timeout_s, transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionError(f"cannot reach the gateway at {self.address} (VISIONQ_API_URL): {exc}") from exc
        if response.is_error:
            raise _error(response)
        return response.json()

    def submit(
        self, body: dict[str, Any], *, image: bytes | None = None, idempotency_key: str | None = None,
    ) -> JobRecord:
        """POST /v1/jobs: JSON, or multipart/form-data when the image is uploaded with it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        if image is None:
            data = self._call("POST", "/v1/jobs", json=body, headers=headers)
        else:
            files = {"request": (None, json.dumps(body), "application/json"),
                     "image": ("image", image, "application/octet-stream")}
            data = self._call("POST", "/v1/jobs", files=files, headers=headers)
        return JobRecord.from_dict(data)

    def submit_job(self, kind: JobKind, params: dict[str, Any], **options: Any) -> JobRecord:
        job = gateway_job(kind, params, **options)
        return self.submit(job.body, image=job.upload, idempotency_key=job.idempotency_key)

    def submit_batch(self, jobs: list[GatewayJob]) -> list[JobRecord | VisionqError]:
        """POST /v1/jobs/batch with jobs that upload nothing: per job, in order, its record or what
        refused it alone. Raises what refused the whole batch (a `VisionqError`), or
        ConnectionError when the gateway was not reached or did not answer."""
        bodies = [job.body if job.idempotency_key is None else {**job.body, "idempotency_key": job.idempotency_key}
                  for job in jobs]
        answered = self._call("POST", "/v1/jobs/batch", json={"jobs": bodies})["jobs"]
        # A slot is a record (whose "error" may be null) or {"error": {"code", "message"}}.
        return [JobRecord.from_dict(item) if "id" in item else error_from_response(200, item) for item in answered]

    def get(self, job_id: str) -> JobRecord:
        return JobRecord.from_dict(self._call("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> JobRecord:
        return JobRecord.from_dict(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self, job_id: str, timeout_s: float | None, on_change: Callable[[JobRecord], None] | None = None,
        seen: JobRecord | None = None,  # its status is the one told if no event came
    ) -> JobRecord:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        record: JobRecord | None = None
        while True:  # a stream cut short (a gateway replica restarting) is opened again
            try:
                for record in self._events(job_id, deadline):
                    if on_change is not None:
                        on_change(record)
                    if record.is_final:
                        return record
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError):
                pass
            if deadline is not None and time.monotonic() >= deadline:
                last = record if record is not None else seen
                raise NotFinalYet(job_id, last.status.value if last is not None else "not final", timeout_s)

    def _events(self, job_id: str, deadline: float | None) -> Iterator[JobRecord]:
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        read_timeout = STREAM_READ_TIMEOUT_S if remaining is None else min(remaining, STREAM_READ_TIMEOUT_S)
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        try:
            with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    raise _error(response)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield JobRecord.from_dict(json.loads(line[len("data: "):]))
                    if deadline is not None and time.monotonic() >= deadline:
                        return
        except httpx.ConnectError as exc:
            raise ConnectionError(f"cannot reach the gateway at {self.address} (VISIONQ_API_URL): {exc}") from exc

    def serving_kinds(self) -> set[str]:
        return serving_of(self.workers())

    def queues(self) -> dict[str, dict[str, int]]:
        return self._call("GET", "/v1/queues")

    def workers(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/workers")

    def list(self, *, kind: str | None = None, status: str | None = None, limit: int = 20,
             cursor: str | None = None) -> tuple[list[JobRecord], str | None]:
        params = {k: v for k, v in {"kind": kind, "status": status, "limit": limit, "cursor": cursor}.items()
                  if v is not None}
        data = self._call("GET", "/v1/jobs", params=params)
        return [JobRecord.from_dict(r) for r in data["jobs"]], data["next_cursor"]


@dataclass(frozen=True)
class GatewayJob:
    """A `Client` submit as the gateway takes it: the JSON body, a local image's bytes to upload
    beside it (multipart; a batch carries none), and the Idempotency-Key."""

    body: dict[str, Any]
    upload: bytes | None
    idempotency_key: str | None


def gateway_job(
    kind: JobKind, params: dict[str, Any], *, idempotency_key: str | None = None,
    webhook_secret: str | None = None, **options: Any,
) -> GatewayJob:
    """A `Client` method's arguments as one gateway request: the parameters as `input`, the job
    options (`priority`, `webhook`, `webhook_events`, `queue_timeout_s`...) beside it, a local
    image (path, bytes, PIL image) to upload."""
    if webhook_secret is not None:
        raise InvalidInput("webhook_secret is not taken through the gateway: it signs with the tenant's secret")
    params = dict(params)
    upload = None
    if "image" in params:
        params["image"], upload = image_for_gateway(params["image"])
    body = {"kind": kind.value, "input": {k: v for k, v in params.items() if v is not None},
            **{k: v for k, v in options.items() if v is not None}}
    return GatewayJob(body, upload, idempotency_key)


def image_for_gateway(image: Any) -> tuple[str | None, bytes | None]:
    """(a URI the gateway takes as it is, None) or (None, the bytes of a local image to upload)."""
    if isinstance(image, Image.Image):
        return None, png_of(image)
    if isinstance(image, (bytes, bytearray)):
        return None, bytes(image)
    if isinstance(image, str) and image.startswith("file://"):
        image = Path(unquote(urlparse(image).path))
    elif isinstance(image, str) and image.startswith(REMOTE_SCHEMES):
        return image, None
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:  # unreadable (permissions, a name too long): this request's error alone
            if not path.is_file():
                raise missing_local_image(image)
            return None, path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"image {str(path)[:200]} cannot be read: {exc.strerror or exc}") from None
    raise InvalidInput(f"image must be a path, bytes, a PIL image or a URI string, got {type(image).__name__}")


def _error(response: httpx.Response) -> Exception:
    try:
        body = response.json()
    except ValueError:
        body = response.text[:300]
    return error_from_response(response.status_code, body, response.headers.get("Retry-After"))
