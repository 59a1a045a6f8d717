"""How failures become HTTP problems: every error is JSON ``{"detail": reason}`` (plus ``boxes`` / ``errors`` where a
client can act on them), never a stack trace. Domain exceptions carry their own status where they know it
(``WatchlistError.status``); the rest are mapped here once, so endpoints just call the domain code.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.search import QueryPhotoError
from ingest.cameras import CameraExists, UnknownCamera
from personsearch.api.models import ErrorBody, FieldError
from watchlist.alerts import AlertNotFoundError
from watchlist.store import PhotoError, WatchlistError

logger = logging.getLogger(__name__)

MAX_BODY_SIZE_SCOPE_KEY = "starlette.max_body_size"  # where Starlette's body limiter keeps the request's limit

_DESCRIPTIONS = {
    400: "Malformed request (e.g. an unparseable multipart body)",
    401: "No API key, or one that is not valid (X-API-Key or Authorization: Bearer)",
    404: "Not found",
    409: "Conflicts with the current state (e.g. the id is taken)",
    413: "Too large: a photo over `watchlist.max_photo_bytes`, or the whole request body over its limit",
    415: "Not an image (JPEG, PNG, BMP or WebP expected)",
    422: "Invalid request: a field, or a photo that is corrupt or does not show exactly one person without a box",
    503: "A dependency is not ready (the engine could not be loaded, or the index has no snapshot yet)",
}


class PlainTextErrorsAsJson:
    """ASGI middleware: error responses the framework writes as plain text become ErrorBody JSON too.

    Starlette's body limiter answers a request whose Content-Length is over the route's ``max_body_size`` with a
    plain-text 413 of its own, past every exception handler; this gives it the same shape as every other error.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None  # set while a plain-text error is being collected
        text = b""

        async def send_as_json(message: Message) -> None:
            nonlocal status, text
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and ctype.startswith(b"text/plain"):
                    status = message["status"]
                    return
            elif message["type"] == "http.response.body" and status is not None:
                text += message.get("body", b"")
                if message.get("more_body", False):
                    return
                detail = text.decode(errors="replace").strip() or "error"
                if status == 413 and MAX_BODY_SIZE_SCOPE_KEY in scope:
                    detail = _too_large(scope[MAX_BODY_SIZE_SCOPE_KEY])
                await problem(status, detail)(scope, receive, send)
                return
            await send(message)

        await self.app(scope, receive, send_as_json)


def _too_large(limit: int) -> str:
    return f"the request body is larger than this endpoint's limit of {limit} bytes"


class ServiceUnavailable(RuntimeError):
    """Something the request needs (the engine, the index) is not available; the message says what and why."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry documenting these error statuses with the ErrorBody schema."""
    return {code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]} for code in codes}


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An error response; ``extra`` adds ErrorBody fields (boxes, photo, errors)."""
    body = ErrorBody(detail=detail, **extra).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _field_errors(errors: Any) -> list[FieldError]:
    return [
        FieldError(loc=list(e.get("loc", ())), msg=str(e.get("msg", "")), type=str(e.get("type", ""))) for e in errors
    ]


def _summary(errors: list[FieldError]) -> str:
    parts = []
    for e in errors:
        loc = e.loc[1:] if e.loc and e.loc[0] == "body" and len(e.loc) > 1 else e.loc
        parts.append(f"{'.'.join(str(x) for x in loc)}: {e.msg}" if loc else e.msg)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an ErrorBody response."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 413 and MAX_BODY_SIZE_SCOPE_KEY in request.scope:
            detail = _too_large(request.scope[MAX_BODY_SIZE_SCOPE_KEY])
        return problem(exc.status_code, detail, headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        return problem(422, _summary(errors), errors=errors)

    @app.exception_handler(ValidationError)
    async def _model_invalid(request: Request, exc: ValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors(include_url=False))
        for e in errors:
            e.loc = ["body", *e.loc]
        return problem(422, _summary(errors), errors=errors)

    @app.exception_handler(WatchlistError)
    async def _watchlist(request: Request, exc: WatchlistError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if isinstance(exc, PhotoError):
            extra["photo"] = exc.index
            if exc.status == 422:
                extra["boxes"] = exc.boxes
        return problem(exc.status, str(exc), **extra)

    @app.exception_handler(QueryPhotoError)
    async def _query_photo(request: Request, exc: QueryPhotoError) -> JSONResponse:
        return problem(422, str(exc), boxes=exc.boxes)

    @app.exception_handler(UnknownCamera)
    async def _unknown_camera(request: Request, exc: UnknownCamera) -> JSONResponse:
        return problem(404, str(exc))

    @app.exception_handler(CameraExists)
    async def _camera_exists(request: Request, exc: CameraExists) -> JSONResponse:
        return problem(409, str(exc))

    @app.exception_handler(AlertNotFoundError)
    async def _alert_not_found(request: Request, exc: AlertNotFoundError) -> JSONResponse:
        return problem(404, str(exc))

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return problem(503, str(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return problem(500, f"internal error ({type(exc).__name__}); the server log has the details")


__all__ = ["PlainTextErrorsAsJson", "ServiceUnavailable", "error_responses", "install_error_handlers", "problem"]
