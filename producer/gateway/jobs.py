"""The job routes: submit, read, list, cancel, follow, and the signed links to output files.

Every one but the file links needs `Authorization: Bearer <key>`. Routes that only touch
Redis briefly are plain functions (FastAPI runs them in its
thread pool); those that wait (`Prefer: wait`, server-sent events) are coroutines
on asyncio Redis, so a thousand waiting clients hold no thread.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, AsyncIterator, Callable, Literal

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from producer.gateway import schemas
from producer.gateway.auth import Caller, services_of
from producer.gateway.bodies import JSON_TYPE, MULTIPART_TYPE, parse_json, read_body, read_job
from producer.gateway.events import event_stream
from producer.gateway.keys import ApiKey
from producer.gateway.schemas import AUTH_ERRORS, JOB_ERRORS, error_responses
from producer.gateway.submit import Submitter
from producer.http_errors import RateLimited, error_body
from producer.redis_source import RedisJobSource
from tasks.errors import InvalidInput, JobNotFound, VisionqError
from tasks.limits import MAX_BATCH_JOBS
from tasks.record import JobRecord



class _JobIdConvertor(Convertor[str]):
    """Path segments that are job ids: `/v1/jobs/batch` is then never a job, and any other
    segment is simply a path that does not exist (404), like an unknown id."""

    regex = "[0-9a-f]{32}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("job_id", _JobIdConvertor())
router = APIRouter()

JOB_ID = Path(pattern=r"^[0-9a-f]{32}$", description="a job id (32 lowercase hex digits)")
MAX_WAIT_S = 60
BINARY_TYPE = "application/octet-stream"
# A whole number of seconds, ending where the preference does: "wait=1.5" is no wait to apply.
# RFC 7240: a preference's name is case-insensitive, and "=" may have blanks around it.
PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*(\d+)(?=$|[;,\s])", re.IGNORECASE)


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200,
    description="the same key (per tenant, within the job TTL) and body return the same job; another body: 409",
)]
Prefer = Annotated[str | None, Header(
    description="`wait=N` (N <= 60): answer when the job is final or after N seconds, whichever is first",
)]


def render(request: Request, record: JobRecord) -> dict[str, Any]:
    """The record as a client sees it: file links it can follow."""
    return services_of(request).file_links.with_links(record.to_dict(), str(request.base_url))


def owned(record: JobRecord, who: ApiKey) -> JobRecord:
    # Another tenant's job reads exactly like an unknown id: ids reveal nothing.
    if record.tenant != who.tenant:
        raise JobNotFound.for_id(record.id)
    return record


def _wait_seconds(prefer: str | None) -> int | None:
    match = PREFER_WAIT.search(prefer or "")
    return None if match is None else min(int(match.group(1)), MAX_WAIT_S)


async def _after_wait(
    request: Request, who: ApiKey, record: JobRecord, prefer: str | None,
) -> tuple[JobRecord, dict[str, str]]:
    seconds = _wait_seconds(prefer)
    if seconds is None:
        return record, {}
    services = services_of(request)
    slots = services.stream_slots
    if not slots.take(who.tenant):
        # The tenant's share of followed jobs is taken: the preference is not applied (RFC 7240
        # lets a server ignore one), and a submit still answers 201, never a refusal to retry.
        return record, {}
    try:
        return await services.async_jobs.wait(record.id, seconds), {"Preference-Applied": f"wait={seconds}"}
    finally:
        slots.give_back(who.tenant)


_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "/v1/jobs/{id}"}}
_PREFERENCE_APPLIED = {"Preference-Applied": {"schema": {"type": "string"},
                                              "description": "`wait=N` when a `Prefer: wait` was applied"}}

# One server-sent event: what each `event:`/`data:` pair of the stream carries.
_SSE_EVENT = {
    "type": "object", "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["job.snapshot", "job.started", "job.progress",
                                              "job.succeeded", "job.failed", "job.canceled"]},
        "data": {"type": "string", "contentMediaType": JSON_TYPE,
                 "contentSchema": {"$ref": "#/components/schemas/JobRecord"}},
    },
}
# The stream as a body: described in words and, for tools that read extensions, by `_SSE_EVENT`.
# No `type`: a generated client (openapi-python-client) then hands over the text, and a validator
# (openapi-core), which has no decoder for text/event-stream, does not hold its bytes to `string`.
_SSE_STREAM = {
    "description": "server-sent events, each an `event: NAME` line (job.snapshot, job.started, job.progress, "
                   "job.succeeded, job.failed, job.canceled), a `data: RECORD` line (the JobRecord as JSON) "
                   "and a blank line; `: keep-alive` comments in between",
    "x-event": _SSE_EVENT,
}

_JOB_BODY = {
    "required": True,
    "content": {
        JSON_TYPE: {"schema": {"$ref": "#/components/schemas/JobBody"}},
        MULTIPART_TYPE: {
            "schema": {
                "type": "object", "required": ["request"],
                "properties": {
                    # Not JobBody: its `input` (and the input's `image`) may be left out here, since
                    # the `image` part is the image; the gateway checks the rest as for JSON.
                    "request": {"$ref": "#/components/schemas/UploadRequest"},
                    "image": {"type": "string", "format": "binary", "description": "the image file (JPEG, PNG, WebP)"},
                },
            },
            "encoding": {"request": {"contentType": JSON_TYPE}},
        },
    },
}


@router.post(
    "/v1/jobs", status_code=201, tags=["jobs"], summary="Submit a job",
    responses={201: {"model": schemas.JobRecord, "description": "queued (or already final with `Prefer: wait`)",
                     "headers": {**_LOCATION, **_PREFERENCE_APPLIED}},
               200: {"model": schemas.JobRecord, "description": "the job of an earlier submit with this Idempotency-Key",
                     "headers": {**_LOCATION, **_PREFERENCE_APPLIED}},
               **error_responses(*AUTH_ERRORS, 409, 413, 415, 429)},
    openapi_extra={"requestBody": _JOB_BODY},
)
async def submit_job(
    request: Request, who: Caller, idempotency_key: IdempotencyKey = None, prefer: Prefer = None,
) -> JSONResponse:
    body, image = await read_job(request, services_of(request).settings.limits.max_image_bytes)
    submission = await run_in_threadpool(
        Submitter(services_of(request)).submit, who, body, image=image, idempotency_key=idempotency_key,
    )
    record, headers = await _after_wait(request, who, submission.record, prefer)
    headers["Location"] = f"/v1/jobs/{record.id}"
    return JSONResponse(render(request, record), status_code=201 if submission.created else 200, headers=headers)


@router.post(
    "/v1/jobs/batch", tags=["jobs"], summary="Submit several jobs at once",
    # A rate or quota refusal answers in its job's slot: the batch itself is never 429.
    response_model=schemas.BatchResult, responses=error_responses(*AUTH_ERRORS, 413, 415),
    openapi_extra={"requestBody": {"required": True, "content": {
        JSON_TYPE: {"schema": {"$ref": "#/components/schemas/BatchBody"}}}}},
)
async def submit_batch(request: Request, who: Caller) -> JSONResponse:
    body = parse_json(await read_body(request, (JSON_TYPE,)))
    jobs = body.get("jobs") if isinstance(body, dict) else None
    if not isinstance(jobs, list) or not jobs or set(body) != {"jobs"}:
        raise InvalidInput('a batch is {"jobs": [job, ...]} with at least one job')
    if len(jobs) > MAX_BATCH_JOBS:
        raise InvalidInput(f"a batch has {len(jobs)} jobs, more than the limit {MAX_BATCH_JOBS}")
    if not all(isinstance(job, dict) for job in jobs):
        raise InvalidInput("every job of a batch is a JSON object")

    def submit_all() -> list[dict[str, Any]]:
        submitter = Submitter(services_of(request))
        # Each job stands alone, as with Client.submit_many: a bad body, a quota or a rate
        # refusal answers in its own slot and loses nothing else.
        outcomes: list[Any] = []
        checked = []
        for job in jobs:
            try:
                checked.append(submitter.check(who, job))
                outcomes.append(None)
            except InvalidInput as exc:
                outcomes.append(exc)
        # Every admitted job written in one pipelined round trip (Client.submit_many's path).
        submitted = iter(submitter.submit_checked_many(who, checked) if checked else [])
        outcomes = [next(submitted) if outcome is None else outcome for outcome in outcomes]
        return [error_body(outcome) if isinstance(outcome, VisionqError) else render(request, outcome.record)
                for outcome in outcomes]

    return JSONResponse({"jobs": await run_in_threadpool(submit_all)})


@router.get(
    "/v1/jobs", tags=["jobs"], summary="This tenant's recent jobs, newest first",
    response_model=schemas.JobList, responses=error_responses(*AUTH_ERRORS),
)
def list_jobs(
    request: Request, who: Caller,
    kind: Annotated[Literal["caption", "segment", "generate"] | None, Query()] = None,
    status: Annotated[Literal["queued", "running", "succeeded", "failed", "canceled"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the previous page")] = None,
) -> JSONResponse:
    page = services_of(request).tenant_jobs.page(
        who.tenant, limit=limit, cursor=int(cursor) if cursor is not None else None, kind=kind, status=status,
    )
    return JSONResponse({"jobs": [render(request, r) for r in page.records], "next_cursor": page.next_cursor})


@router.get(
    "/v1/jobs/{job_id:job_id}", tags=["jobs"], summary="A job",
    response_model=schemas.JobRecord, responses={200: {"headers": _PREFERENCE_APPLIED}, **error_responses(*JOB_ERRORS)},
)
async def get_job(
    request: Request, who: Caller, job_id: Annotated[str, JOB_ID], prefer: Prefer = None,
) -> JSONResponse:
    record = owned(await run_in_threadpool(services_of(request).store.get, job_id), who)
    record, headers = await _after_wait(request, who, record, prefer)
    return JSONResponse(render(request, record), headers=headers)


@router.post(
    "/v1/jobs/{job_id:job_id}/cancel", tags=["jobs"], summary="Cancel a job",
    description="A queued job ends canceled at once; a running one stops at its next checkpoint. "
                "A final job is returned as it is.",
    response_model=schemas.JobRecord, responses=error_responses(*JOB_ERRORS),
)
def cancel_job(request: Request, who: Caller, job_id: Annotated[str, JOB_ID]) -> JSONResponse:
    services = services_of(request)
    owned(services.store.get(job_id), who)
    source = RedisJobSource(services.store, services.events, services.settings.redis_url)
    return JSONResponse(render(request, source.cancel(job_id)))


@router.get(
    "/v1/jobs/{job_id:job_id}/events", tags=["jobs"], summary="Follow a job (server-sent events)",
    description="`event: job.snapshot` with the current record, then one event per change named like the "
                "webhook events (`job.started` before the final one, `job.progress`), each with the record "
                "as `data`; the stream closes after the final event.",
    responses={200: {"content": {"text/event-stream": {"schema": _SSE_STREAM}},
                     "description": "the event stream"},
               **error_responses(*JOB_ERRORS, 429, described={
                   429: "this tenant follows as many jobs as it may on this gateway (see Retry-After)"})},
    response_class=StreamingResponse,
)
async def job_events(request: Request, who: Caller, job_id: Annotated[str, JOB_ID]) -> StreamingResponse:
    services = services_of(request)
    jobs = services.async_jobs
    first = owned(await jobs.get(job_id), who)
    slots = services.stream_slots
    if not slots.take(who.tenant):
        raise RateLimited(
            f"this tenant already follows {slots.per_tenant} jobs on this gateway, or the gateway "
            f"{slots.total} (VISIONQ_GATEWAY_STREAMS_PER_TENANT, VISIONQ_GATEWAY_STREAMS); close a stream "
            "or poll GET /v1/jobs/{id}", retry_after_s=1,
        )

    return _HeldStream(
        event_stream(jobs, first, lambda record: render(request, record)), lambda: slots.give_back(who.tenant),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _HeldStream(StreamingResponse):
    """A stream that gives its slot back however it ends: the job ended, the client left, or the
    client was gone before a byte was sent (when the stream's generator never even starts)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# HEAD too (a link checker's or a downloader's size probe): FileResponse sends the headers alone.
# Not in the schema: the document describes the GET, which HEAD mirrors.
@router.head("/v1/files/{job_id:job_id}/{name}", include_in_schema=False)
@router.get(
    "/v1/files/{job_id:job_id}/{name}", tags=["files"], summary="An output file (local storage), by signed link",
    description="The `url` of a FileRef when the deployment stores files locally; needs no key "
                "(an `<img>` cannot send one), only the link's unexpired signature.",
    # The file's bytes, as its media type says. The image types have no schema: OpenAPI 3.1 describes
    # such a body by its media type, and a `string` schema has validators (openapi-core) read it as
    # text. application/octet-stream (a name of no known type) keeps `format: binary`, which
    # generated clients (openapi-python-client) turn into a file: without it they drop the 200.
    responses={200: {"content": {**{t: {} for t in ("image/png", "image/jpeg", "image/webp")},
                                 BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                     "description": "the file"},
               **error_responses(400, 403, 404, 503, described={404: "no such file in this job"})},
    response_class=FileResponse,
)
def get_file(
    request: Request, job_id: Annotated[str, JOB_ID],
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")],
    expires: Annotated[int, Query(ge=0, le=2**40)],
    sig: Annotated[str, Query(max_length=128)],  # any other: 403 like a wrong one (files.py)
) -> FileResponse:
    path = services_of(request).file_links.local_file(job_id, name, expires, sig)
    media = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}  # what outputs are
    return FileResponse(path, media_type=media.get(path.suffix, BINARY_TYPE),
                        headers={"Cache-Control": "private, max-age=3600"})


