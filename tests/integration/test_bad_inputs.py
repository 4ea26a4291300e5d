"""Bad inputs found by the worker fail their own job with a clear code; the worker keeps serving."""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from typing import Any, Iterator

import pytest

from producer import Client
from tasks.errors import InvalidInput
from tasks.kinds import JobKind
from tasks.record import utc_now
from tests.conftest import BUCKET
from tests.support.corpus import DROPPED, MESSAGE, RECORD, SDK, SERVER, SUCCEEDED, UPLOAD, Case, cases
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration

TIMEOUT = 60
GOOD_PNG = encode(scene())
# Every corpus case ends within this of its submission: the 15 s fetch deadline
# (VISIONQ_FETCH_TIMEOUT_S) of the slow servers, plus a generous margin for queueing
# behind the rest of the corpus on a busy machine.
CASE_DEADLINE_S = 60
ESCAPES_REASON = "Oops\x1b[2J\x1b]0;owned\x07"


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A loopback HTTP server: /ok.png serves an image; the other paths misbehave."""
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
            elif self.path == "/drip-headers":
                self.drip(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"a" * 200)
            elif self.path == "/silent":
                self.drip(b"")
            elif self.path == "/huge":
                self.send_response(200)
                self.send_header("Content-Length", str(50 * 1024 * 1024))
                self.end_headers()
                self.wfile.write(b"\x00" * 1024)
            elif self.path == "/escapes":
                self.send_response(500, ESCAPES_REASON)
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def drip(self, data: bytes) -> None:
            """One byte every 0.3 s (nothing at all for b""), until the client leaves or 40 s pass."""
            deadline = time.monotonic() + 40
            try:
                for byte in data or iter(int, 1):
                    if time.monotonic() > deadline:
                        return
                    if data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                return  # the worker gave up: what it must do

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def failed_with(job, code: str, fragment: str) -> None:
    job.wait(timeout=TIMEOUT)
    assert job.status == "failed", job.to_dict()
    assert job.error["code"] == code
    assert fragment.lower() in job.error["message"].lower(), job.error["message"]


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


# --- the bad-input corpus (tests/support/corpus.py) ---------------------------------


def test_bad_input_corpus(client: Client, s3: object, worker, image_server: str) -> None:
    """Every case reaches its documented outcome in bounded time; the worker keeps serving."""
    pid = worker.pid
    corpus = cases()
    assert len(corpus) >= 50 and sum(c.entry != SDK for c in corpus) * 2 >= len(corpus)
    run_id = uuid.uuid4().hex[:8]
    forged_keys: list[str] = []
    submitted: list[tuple[Case, str, float]] = []
    problems: list[str] = []
    try:
        # Forged messages first: when the rest of the corpus is done, they were taken.
        for case in sorted(corpus, key=lambda c: c.entry != RECORD):
            request = _fill(case.request, _upload(s3, case, run_id), image_server)
            if case.entry == RECORD:
                forged_keys.append(_forge(client, case, request, run_id))
            elif case.entry == MESSAGE:
                submitted.append((case, _send_raw(client, case, request), time.monotonic()))
            else:
                try:
                    job = getattr(client, case.kind)(**request)
                except InvalidInput as exc:  # the SDK's own checks: refused at submit
                    problems += _mismatch(case, "failed", exc.to_dict())
                    continue
                submitted.append((case, job.id, time.monotonic()))
        for case, job_id, sent in submitted:
            try:
                job = client.get(job_id).wait(timeout=max(1.0, sent + CASE_DEADLINE_S - time.monotonic()))
            except TimeoutError as exc:
                problems.append(f"{case.name}: not over within {CASE_DEADLINE_S} s ({exc})")
                continue
            problems += _mismatch(case, job.status, job.error)
        for case, key in zip([c for c in corpus if c.entry == RECORD], forged_keys):
            problems += _untouched(client, s3, case, key, run_id)
        log = worker.log_path.read_text(errors="replace")
        dropped = log.count("dropping a forged message or record")
        if dropped < len(forged_keys):
            problems.append(f"the worker log shows {dropped} dropped forged messages, expected {len(forged_keys)}")
        if "DecompressionBombWarning" in log:  # decode_image refuses those sizes itself (worker/process.py)
            problems.append("Pillow's DecompressionBombWarning in the worker log")
        if "raised unexpected" in log:  # Celery's ERROR line and traceback for a task's unexpected exception
            problems.append("a failed job logged as an unexpected task error: " + log[log.index("raised unexpected"):][:300])
    finally:
        if forged_keys:
            client.store.redis.delete(*forged_keys)
    assert not problems, "\n".join(problems)
    assert client.caption(GOOD_PNG).wait(timeout=TIMEOUT).status == "succeeded"
    assert worker.process.poll() is None and worker.pid == pid


def _upload(s3: object, case: Case, run_id: str) -> str | None:
    if case.upload is None:
        return None
    key = f"svc/corpus/{run_id}/{case.name}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=case.upload)
    return f"s3://{BUCKET}/{key}"


def _fill(request: Any, upload_uri: str | None, server: str) -> Any:
    """The request with its placeholders replaced (the SDK takes the bytes themselves)."""
    if not isinstance(request, dict) or not isinstance(request.get("image"), str):
        return request
    image = request["image"].replace(SERVER, server)
    if image == UPLOAD:
        image = upload_uri
    return {**request, "image": image}


def _send_raw(client: Client, case: Case, request: Any) -> str:
    """A record and a message as any holder of the Redis credentials could write them."""
    kind = JobKind(case.kind)
    record, _ = client.store.create(kind, {"corpus": case.name})
    client.celery.send_task(kind.task_name, kwargs={"job_id": record.id, "request": request},
                            queue=kind.queue, task_id=record.id)
    return record.id


def _forge(client: Client, case: Case, request: Any, run_id: str) -> str:
    """A record written straight into Redis under the message's id, and the message."""
    kind = JobKind(case.kind)
    record = {"id": case.record_id, "kind": case.kind, "status": "queued", "created_at": utc_now(),
              "input": {"corpus": case.name, "run": run_id}, "attempt": 0}
    key = client.store.job_key(str(case.job_id))
    client.store.redis.hset(key, mapping={name: json.dumps(value) for name, value in record.items()})
    client.store.redis.expire(key, 600)
    client.celery.send_task(kind.task_name, kwargs={"job_id": case.job_id, "request": request}, queue=kind.queue)
    return key


def _mismatch(case: Case, status: str, error: dict[str, str] | None) -> list[str]:
    got = f"{status} {error}"
    if case.expect == SUCCEEDED:
        return [] if status == "succeeded" else [f"{case.name}: expected success, got {got}"]
    if status != "failed" or error is None or error["code"] != case.expect:
        return [f"{case.name}: expected {case.expect}, got {got}"]
    message = error["message"]
    if case.fragment.lower() not in message.lower():
        return [f"{case.name}: message lacks {case.fragment!r}: {message!r}"]
    if not message.isprintable():
        return [f"{case.name}: message carries control characters: {message!r}"]
    return []


def _untouched(client: Client, s3: object, case: Case, key: str, run_id: str) -> list[str]:
    """A dropped forged message: its record as written, and nothing stored for it."""
    assert case.expect == DROPPED
    fields = {k.decode(): json.loads(v) for k, v in client.store.redis.hgetall(key).items()}
    problems = []
    if fields.get("status") != "queued" or set(fields) - {"id", "kind", "status", "created_at", "input", "attempt"}:
        problems.append(f"{case.name}: the forged record was written to: {fields}")
    stored = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    written = [o["Key"] for o in stored if "forged" in o["Key"] and not o["Key"].startswith("svc/corpus/")]
    if written:
        problems.append(f"{case.name}: objects written for a forged id: {written}")
    return problems
