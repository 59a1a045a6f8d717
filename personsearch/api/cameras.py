"""Cameras: register, list with live status, change and remove (the registry in ingest/cameras.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ingest.cameras import CameraConfig
from personsearch.api.context import ApiContext, Ctx
from personsearch.api.errors import error_responses
from personsearch.api.models import CameraUpdate, CameraView

router = APIRouter(prefix="/cameras", tags=["cameras"])


def _view(ctx: ApiContext, cfg: CameraConfig) -> CameraView:
    return CameraView.model_validate({**cfg.model_dump(), "url": cfg.describe(), "status": ctx.cameras.status(cfg.id)})


@router.post(
    "",
    summary="Register a camera",
    status_code=201,
    response_model=CameraView,
    responses=error_responses(409, 422),
)
def add_camera(ctx: Ctx, camera: CameraConfig) -> CameraView:
    """The ingest workers start reading it within a second or two; 409 if the id is taken, 422 for a URL scheme
    other than rtsp, rtsps, http, https or file, or an id that is not 1-64 letters, digits, '_', '.', '-'."""
    return _view(ctx, ctx.cameras.add(camera))


@router.get("", summary="List the cameras with their live status", response_model=list[CameraView])
def list_cameras(ctx: Ctx) -> list[CameraView]:
    """Status: state (starting, live, reconnecting, down, disabled), fps, frames, dropped, corrupt, reconnects and the
    last error, as the camera's decoder last reported them."""
    return [_view(ctx, cfg) for cfg in ctx.cameras.list()]


@router.get(
    "/{camera_id}", summary="One camera with its live status", response_model=CameraView, responses=error_responses(404)
)
def get_camera(ctx: Ctx, camera_id: str) -> CameraView:
    return _view(ctx, ctx.cameras.get(camera_id))


@router.patch(
    "/{camera_id}",
    summary="Change some of a camera's settings",
    response_model=CameraView,
    responses=error_responses(404, 422),
)
def update_camera(ctx: Ctx, camera_id: str, changes: CameraUpdate) -> CameraView:
    """Fields left out keep their values; the decoder restarts with the new settings."""
    return _view(ctx, ctx.cameras.update(camera_id, **changes.model_dump(exclude_unset=True)))


@router.delete(
    "/{camera_id}",
    summary="Remove a camera, its status and its unread frames",
    status_code=204,
    response_class=Response,
    responses=error_responses(404),
)
def remove_camera(ctx: Ctx, camera_id: str) -> Response:
    ctx.cameras.remove(camera_id)
    return Response(status_code=204)


__all__ = ["router"]
