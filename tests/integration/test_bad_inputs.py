"""Bad inputs found by the worker fail their own job with a clear code; the worker keeps serving."""
from __future__ import annotations

import http.server
import threading
from typing import Iterator

import pytest

from producer import Client
from tasks.kinds import JobKind
from tests.conftest import BUCKET
from tests.support.images import encode, png_bomb, scene

pytestmark = pytest.mark.integration

TIMEOUT = 60
GOOD_PNG = encode(scene())


def put(s3: object, name: str, data: bytes) -> str:
    key = f"svc/uploads/{name}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A loopback HTTP server: /ok.png serves an image, /redirect points elsewhere."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            hits.append(self.path)
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(GOOD_PNG)))
                self.end_headers()
                self.wfile.write(GOOD_PNG)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def submit_raw(client: Client, image_uri: str):
    """Enqueue a caption job as any producer could, without the SDK's own checks."""
    from tasks.schemas import CaptionRequest, request_to_message

    request = CaptionRequest(image=image_uri)
    record, _ = client.store.create(JobKind.CAPTION, {"image": image_uri})
    client.celery.send_task(JobKind.CAPTION.task_name, kwargs={
        "job_id": record.id, "request": request_to_message(request)}, queue=JobKind.CAPTION.queue)
    return client.get(record.id)


def failed_with(job, code: str, fragment: str) -> None:
    job.wait(timeout=TIMEOUT)
    assert job.status == "failed", job.to_dict()
    assert job.error["code"] == code
    assert fragment.lower() in job.error["message"].lower(), job.error["message"]


def test_bad_images_fail_alone(client: Client, s3: object, worker, tmp_path) -> None:
    pid = worker.pid
    truncated = encode(scene(200, 200))[:400]
    cases = [
        (put(s3, "truncated.png", truncated), "truncated"),
        (put(s3, "text.png", b"hello, I am not an image at all"), "not a JPEG, PNG or WebP"),
        (put(s3, "bomb.png", png_bomb()), "pixels"),
        (put(s3, "anim.gif", encode(scene(), "GIF")), "GIF"),
        (put(s3, "huge.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024)), "more than the limit"),
        (f"s3://{BUCKET}/svc/uploads/missing.png", "cannot be read"),
        ("file:///etc/passwd", "outside the storage folder"),
    ]
    jobs = [(submit_raw(client, uri), fragment) for uri, fragment in cases]
    for job, fragment in jobs:
        failed_with(job, "invalid_input", fragment)
    assert client.caption(GOOD_PNG).wait(timeout=TIMEOUT).status == "succeeded"
    assert worker.process.poll() is None and worker.pid == pid


def test_image_urls_behind_the_ssrf_guard(client: Client, image_server: str) -> None:
    ok = client.caption(f"{image_server}/ok.png").wait(timeout=TIMEOUT)
    assert ok.status == "succeeded", ok.error
    failed_with(client.caption(f"{image_server}/redirect"), "invalid_input", "redirect")
    failed_with(client.caption(f"{image_server}/missing.png"), "invalid_input", "404")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
                "http://[::ffff:127.0.0.2]/x.png", "http://0x7f.2/x.png"):
        failed_with(client.caption(url), "invalid_input", "refused")


def test_prompt_over_the_encoder_limit_is_rejected_not_truncated(client: Client) -> None:
    job = client.generate("word " * 300, width=64, height=64, steps=1)
    failed_with(job, "invalid_input", "token")
    labels = client.segment(GOOD_PNG, labels=["tree " * 19])
    failed_with(labels, "invalid_input", "token")
