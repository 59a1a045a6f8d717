"""The HTTP API: ``create_app`` composes the routers over one Redis, the engine and the index.

Every endpoint but ``GET /health`` needs an API key (``X-API-Key: <secret>`` or ``Authorization: Bearer <secret>``)
unless ``api.auth`` is off. Redis is used synchronously from plain ``def`` endpoints (FastAPI runs them in its thread
pool); only the live alert stream is ``async`` (redis.asyncio), since it holds its connection for as long as the
client listens. The OpenAPI document at ``/openapi.json`` is the contract.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detector.engine import Engine
from index.search import IndexReader
from personsearch.api import alerts, cameras, operations, search, watchlist, webhooks
from personsearch.api.context import (
    ApiContext,
    LazyEngine,
    LazyIndex,
    authenticate,
    default_engine_factory,
    default_index_factory,
)
from personsearch.api.errors import PlainTextErrorsAsJson, error_responses, install_error_handlers
from personsearch.settings import Settings
from personsearch.streams import Keys

logger = logging.getLogger(__name__)

JSON_BODY_LIMIT = 1024 * 1024  # every request body but photo uploads

REQUESTS = Counter(
    "personsearch_api_requests_total", "HTTP API requests by route and status", ["method", "route", "status"]
)
REQUEST_SECONDS = Histogram(
    "personsearch_api_request_seconds",
    "Time to answer an HTTP API request (the live alert stream is not timed)",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

TAGS = [
    {"name": "service", "description": "Liveness, readiness and metrics."},
    {"name": "cameras", "description": "The camera registry and each camera's live status."},
    {"name": "watchlist", "description": "Persons to alert on, with their reference photos."},
    {"name": "alerts", "description": "Raised alerts: the audit log, acknowledgements, snapshots, a live stream."},
    {"name": "search", "description": "Search the recorded past by photo."},
    {"name": "webhooks", "description": "Receivers of signed alert POSTs."},
]


class RequestMetrics:
    """Counts and times requests per route template (not per URL, so ids do not explode the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status, streaming = 500, False

        async def send_and_note(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                streaming = any(
                    k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"]
                )
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = route.path if isinstance(route, APIRoute) else "(unmatched)"
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            if not streaming:
                REQUEST_SECONDS.labels(scope["method"], path).observe(time.perf_counter() - start)


def create_app(
    r: redis.Redis,
    keys: Keys,
    settings: Settings,
    engine: Engine | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    index: IndexReader | None = None,
    *,
    redis_url: str | None = None,
    warm_up_engine: bool = True,
    sse_keepalive_s: float = 15.0,
) -> FastAPI:
    """The API over Redis ``r`` (keys under ``keys``).

    engine: the network for photo uploads and search; else ``engine_factory`` (default: ``settings.engine``) builds
    it on first need, or at start-up in the background when ``warm_up_engine``. index: the indexer's snapshots; else
    opened under ``settings.data_dir/index`` on first need. redis_url: the same Redis, for the live alert stream's
    asyncio client (default: the address of ``r``).
    """
    ctx = ApiContext(
        r=r, keys=keys, settings=settings,
        engine=LazyEngine(engine, engine_factory or default_engine_factory(settings)),
        index=LazyIndex(index, default_index_factory(settings)),
        redis_url=redis_url, sse_keepalive_s=sse_keepalive_s,
    )  # fmt: skip
    if not settings.api.auth:
        logger.warning("API authentication is OFF (api.auth = false): anyone who can reach the port has full access")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if warm_up_engine and not ctx.engine.loaded:
            import threading

            threading.Thread(target=ctx.engine.warm_up, name="engine-warm-up", daemon=True).start()
        yield

    app = FastAPI(
        title="personsearch",
        summary="Person search for live video: cameras, a watchlist with alerts, and search by photo.",
        version=_version(),
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids are the endpoint functions' names
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(PlainTextErrorsAsJson)
    app.add_middleware(RequestMetrics)

    # Body limits are set per router, not on the app: the app's limiter would sit outside PlainTextErrorsAsJson.
    protected: dict[str, Any] = {"dependencies": [Depends(authenticate)], "responses": error_responses(401)}
    max_photo = settings.watchlist.max_photo_bytes
    app.include_router(operations.public, max_body_size=JSON_BODY_LIMIT)
    app.include_router(operations.router, max_body_size=JSON_BODY_LIMIT, **protected)
    app.include_router(cameras.router, max_body_size=JSON_BODY_LIMIT, **protected)
    app.include_router(watchlist.router, max_body_size=watchlist.upload_limit(max_photo), **protected)
    app.include_router(alerts.router, max_body_size=JSON_BODY_LIMIT, **protected)
    app.include_router(search.router, max_body_size=watchlist.upload_limit(max_photo, 1), **protected)
    app.include_router(webhooks.router, max_body_size=JSON_BODY_LIMIT, **protected)
    _document_validation_errors(app)
    return app


def _document_validation_errors(app: FastAPI) -> None:
    """Document 422 with our ErrorBody where FastAPI documents its own HTTPValidationError (which we never send)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # cached by FastAPI in app.openapi_schema; edited in place once
        for path_item in schema["paths"].values():
            for operation in path_item.values():
                response = operation.get("responses", {}).get("422", {})
                content = response.get("content", {}).get("application/json", {})
                if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    response["description"] = error_responses(422)[422]["description"]
                    content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("personsearch")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["create_app"]
