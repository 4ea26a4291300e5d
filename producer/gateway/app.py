"""The HTTP gateway: `create_app(settings)` builds the FastAPI application.

Routes are in `jobs.py` and `fleet.py`; this module wires what every route shares: the one
error body (`{"error": {"code", "message"}}`, validation errors included, as
400 rather than FastAPI's 422), the body cap, the dashboard's static files and
the OpenAPI document that says all of it.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from producer.gateway import fleet, jobs, schemas
from producer.gateway.bodies import BodyCap
from producer.gateway.keys import ApiKey
from producer.gateway.services import Services
from producer.http_errors import error_body, http_status
from tasks.errors import ErrorCode, VisionqError
from tasks.record import utc_now
from tasks.settings import Settings

log = logging.getLogger("visionq.gateway")

NO_AUTH_TENANT = "local"  # who every request is with --no-auth (loopback only)
_STATUS_CODES = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND,
                 409: ErrorCode.CONFLICT, 413: ErrorCode.PAYLOAD_TOO_LARGE,
                 415: ErrorCode.UNSUPPORTED_MEDIA_TYPE, 429: ErrorCode.RATE_LIMITED, 503: ErrorCode.UNAVAILABLE}


def create_app(settings: Settings | None = None, *, no_auth: bool = False) -> FastAPI:
    settings = settings or Settings.from_env()
    services = Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.open_async()
        try:
            yield
        finally:
            await services.close_async()

    app = FastAPI(
        lifespan=lifespan, title="visionq gateway", version="1",
        # operationIds a generated client names its functions by: submit_job, get_file, ... (the
        # route functions' names), not FastAPI's submit_job_v1_jobs_post.
        generate_unique_id_function=lambda route: route.name,
        # /v1/jobs/ID/ is no route (404, as documented), not a redirect whose Location is built
        # from the client's Host header.
        redirect_slashes=False,
        description="Submit and follow caption, segment and generate jobs with a tenant's API key "
                    "(`Authorization: Bearer <key>`, from `visionq keys create`). The body of a job is "
                    "its job record. Reference with curl: docs/gateway.md.",
    )
    app.state.services = services
    app.state.anonymous = None
    if no_auth:
        services.keys.ensure_tenant(NO_AUTH_TENANT)
        app.state.anonymous = ApiKey(key_id="none", tenant=NO_AUTH_TENANT, created_at=utc_now(),
                                     max_queued=None, rate=None)
    limits = settings.limits
    # The largest body a route takes: a multipart image part, or an inline image in JSON.
    app.add_middleware(BodyCap, max_bytes=max(limits.max_image_bytes, limits.max_inline_image_bytes) + 2**20)
    app.include_router(jobs.router)
    app.include_router(fleet.router)
    app.mount("/static", StaticFiles(directory=fleet.STATIC), name="static")
    _add_error_handlers(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VisionqError)
    async def visionq_error(request: Request, exc: VisionqError) -> JSONResponse:
        headers = {}
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        status = http_status(exc)
        if status == 401:  # RFC 9110: a 401 names the scheme the OpenAPI document declares
            headers["WWW-Authenticate"] = 'Bearer realm="visionq"'
        return JSONResponse(error_body(exc), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ()))
        given = first.get("input")
        shown = f" (got {str(given)[:80]!r})" if isinstance(given, (str, int, float)) else ""
        message = f"{where}: {first.get('msg')}{shown}" if where else str(first.get("msg"))
        return _error(400, ErrorCode.INVALID_INPUT, message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, ErrorCode.INVALID_INPUT)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on this path only.
            headers["Allow"] = ", ".join(_methods_on(app, request))
        return _error(exc.status_code, code, message, headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, ErrorCode.INTERNAL, f"internal error ({type(exc).__name__}); see the gateway's log")

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("Redis failed during %s %s: %s", request.method, request.url.path, exc)
        return _error(503, ErrorCode.UNAVAILABLE, f"Redis is unreachable or failed: {type(exc).__name__}",
                      {"Retry-After": "5"})


def _methods_on(app: FastAPI, request: Request) -> list[str]:
    matching = [route for route in [*app.router.routes, *jobs.router.routes, *fleet.router.routes]
                if route.matches(request.scope)[0] is not Match.NONE]
    # /v1/jobs/batch also matches /v1/jobs/{job_id}; a path without parameters wins.
    exact = [route for route in matching if getattr(route, "path", None) == request.url.path]
    return sorted({method for route in exact or matching for method in getattr(route, "methods", None) or ()})


def _error(status: int, code: ErrorCode, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code.value, "message": message}}, status_code=status, headers=headers)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with validation errors as they are really answered: 400 and our body."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = _error_response("invalid input")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    # The job bodies are read by hand (JSON or multipart, both validated by tasks.schemas),
    # so FastAPI does not see them: add their schemas for the request bodies to refer to.
    for name, shape in (("JobBody", schemas.JobBody), ("BatchBody", schemas.BatchBody),
                        ("UploadRequest", schemas.UploadRequest)):
        body = TypeAdapter(shape).json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[name] = body
    app.openapi_schema = schema
    return schema


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
