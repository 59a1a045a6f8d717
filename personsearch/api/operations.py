"""Liveness, readiness and Prometheus metrics: what an orchestrator and a scraper ask of the API."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from personsearch.api.context import ApiContext, Ctx
from personsearch.api.errors import ServiceUnavailable
from personsearch.api.models import Check, Health, Readiness

public = APIRouter(tags=["service"])  # no API key: liveness probes carry none
router = APIRouter(tags=["service"])


@public.get("/health", summary="Liveness: the process answers", response_model=Health)
def health() -> Health:
    return Health()


def _check_redis(ctx: ApiContext) -> Check:
    try:
        ctx.r.ping()
    except Exception as e:
        return Check(ok=False, detail=f"{type(e).__name__}: {e}")
    return Check(ok=True)


def _check_engine(ctx: ApiContext) -> Check:
    if ctx.engine.loaded:
        return Check(ok=True, detail=f"{ctx.engine.model_name} loaded")
    if ctx.engine.error:
        return Check(ok=False, detail=f"loading failed: {ctx.engine.error}")
    return Check(ok=False, detail="not loaded yet")


def _check_index(ctx: ApiContext) -> Check:
    try:
        reader = ctx.index.get()
    except ServiceUnavailable as e:
        return Check(ok=False, detail=str(e))
    index = reader.index()
    if index is None:
        return Check(ok=False, detail=f"no snapshot yet in {reader.directory}")
    return Check(ok=True, detail=f"{len(index)} tracklets")


# Every role an alert passes through; readiness needs at least one live worker of each (anywhere: they register
# their heartbeat in Redis, so workers on other machines count).
PIPELINE_ROLES = ("ingest", "detector", "tracker", "indexer", "matcher", "delivery")


def _check_workers(ctx: ApiContext) -> Check:
    from personsearch.runtime import live_workers

    try:
        names = sorted(live_workers(ctx.r, ctx.keys))
    except Exception as e:
        return Check(ok=False, detail=f"{type(e).__name__}: {e}")
    missing = [role for role in PIPELINE_ROLES if not any(n.split(":", 1)[0] == role for n in names)]
    if missing:
        up = f"; up: {', '.join(names)}" if names else " (is `personsearch up` running?)"
        return Check(ok=False, detail=f"no live {', '.join(missing)} worker{'s' if len(missing) > 1 else ''}{up}")
    return Check(ok=True, detail=", ".join(names))


@router.get(
    "/ready",
    summary="Readiness: Redis, the engine, an index snapshot and a live worker of every pipeline role",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: the checks say which failed"}},
)
def ready(ctx: Ctx) -> JSONResponse:
    checks = {
        "redis": _check_redis(ctx),
        "engine": _check_engine(ctx),
        "index": _check_index(ctx),
        "workers": _check_workers(ctx),
    }
    body = Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics (of every worker when served by `personsearch up`)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "text format"}},
)
def metrics() -> Response:
    from personsearch.runtime import metrics_registry

    return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)


__all__ = ["public", "router"]
