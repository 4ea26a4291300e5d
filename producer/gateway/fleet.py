"""The routes about the fleet rather than one job: queues, workers, health, metrics, the dashboard."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from producer.gateway import schemas
from producer.gateway.auth import Caller, services_of
from producer.gateway.metrics import render_metrics
from producer.gateway.readiness import check_ready
from producer.gateway.schemas import AUTH_ERRORS, error_responses
from tasks.heartbeats import list_workers
from tasks.queues import queue_report

router = APIRouter()
STATIC = Path(__file__).parent / "static"


@router.get("/v1/queues", tags=["fleet"], summary="Queued jobs per kind and priority (as `visionq queues --json`)",
            response_model=dict[str, schemas.KindQueues], responses=error_responses(*AUTH_ERRORS))
def queues(request: Request, who: Caller) -> JSONResponse:
    services = services_of(request)
    return JSONResponse(queue_report(services.redis, services.settings.redis_prefix))


@router.get("/v1/workers", tags=["fleet"], summary="Live workers (as `visionq workers --json`)",
            response_model=list[schemas.WorkerHeartbeat], responses=error_responses(*AUTH_ERRORS))
def workers(request: Request, who: Caller) -> JSONResponse:
    services = services_of(request)
    return JSONResponse(list_workers(services.redis, services.settings.redis_prefix))


@router.get("/healthz", tags=["health"], summary="The process is up", response_model=schemas.Health)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Redis and storage are reachable",
            response_model=schemas.Health, responses=error_responses(503))
def readyz(request: Request) -> dict[str, str]:
    services = services_of(request)
    check_ready(services)
    return {"status": "ready"}


@router.get("/metrics", tags=["health"], summary="Prometheus: fleet-wide gauges", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"},
                       **error_responses(503)})
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    services = services_of(request)
    return Response(render_metrics(services.redis, services.settings.redis_prefix), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")
