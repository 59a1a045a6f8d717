"""The watchlist: persons to alert on, each with photos (watchlist/store.py does the work and its checks).

Photos arrive as multipart files, optionally with the box of the person in each (a JSON list, one entry per photo:
``[x1, y1, x2, y2]`` or ``null``); without a box a photo must show exactly one person. A refused photo refuses the
whole request and nothing is written.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from personsearch.api.context import ApiContext, Ctx
from personsearch.api.errors import error_responses
from personsearch.api.models import PersonUpdate
from watchlist.store import PERSON_ID, Person, PhotoError, PhotoInput

MAX_PHOTOS_PER_REQUEST = 10
FORM_SLACK_BYTES = 64 * 1024  # multipart boundaries, part headers and the text fields

router = APIRouter(prefix="/watchlist", tags=["watchlist"])

PhotosField = Annotated[
    list[UploadFile],
    File(description=f"1-{MAX_PHOTOS_PER_REQUEST} photos of the person (JPEG, PNG, BMP or WebP)"),
]
BoxesField = Annotated[
    str | None,
    Form(
        description="JSON list with one entry per photo, in order: the person's box [x1, y1, x2, y2] in pixels, or "
        "null to detect the one person in that photo",
        examples=["[[40, 10, 120, 300], null]"],
    ),
]


def upload_limit(max_photo_bytes: int, photos: int = MAX_PHOTOS_PER_REQUEST) -> int:
    """The largest request body an upload of ``photos`` photos may have."""
    return max_photo_bytes * photos + FORM_SLACK_BYTES


def read_photo(upload: UploadFile, max_bytes: int, index: int | None = None) -> bytes:
    """The file's bytes, refusing one over ``max_bytes`` (413) without reading more than ``max_bytes + 1``."""
    if upload.size is not None and upload.size > max_bytes:
        raise PhotoError(f"the photo is {upload.size} bytes; the limit is {max_bytes}", 413, index=index)
    return upload.file.read(max_bytes + 1)  # decode_photo refuses it if there is more


def parse_box(text: str | None) -> list[float] | None:
    """A box given as a JSON list of 4 numbers (or null); 422 otherwise."""
    if text is None or not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise HTTPException(422, f"box must be a JSON list [x1, y1, x2, y2], got {text[:100]!r}") from None
    return _box(value, "box")


def _box(value: object, what: str) -> list[float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise HTTPException(422, f"{what} must be [x1, y1, x2, y2] (4 numbers, pixels) or null, got {value!r}")
    return [float(v) for v in value]


def photo_inputs(ctx: ApiContext, photos: list[UploadFile], boxes: str | None) -> list[PhotoInput]:
    """The uploaded photos with their boxes, each file checked against ``watchlist.max_photo_bytes``."""
    if not photos:
        raise HTTPException(422, "at least one photo is required")
    if len(photos) > MAX_PHOTOS_PER_REQUEST:
        raise HTTPException(422, f"{len(photos)} photos: at most {MAX_PHOTOS_PER_REQUEST} per request")
    box_list: list[object] = [None] * len(photos)
    if boxes is not None and boxes.strip():
        try:
            box_list = json.loads(boxes)
        except json.JSONDecodeError:
            raise HTTPException(422, f"boxes must be a JSON list, got {boxes[:100]!r}") from None
        if not isinstance(box_list, list) or len(box_list) != len(photos):
            raise HTTPException(422, f"boxes must be a JSON list with one entry per photo ({len(photos)})")
    max_bytes = ctx.settings.watchlist.max_photo_bytes
    return [
        PhotoInput(read_photo(upload, max_bytes, i), _box(box, f"box of photo {i + 1}"))
        for i, (upload, box) in enumerate(zip(photos, box_list))
    ]


@router.post(
    "",
    summary="Add a person with one or more photos",
    status_code=201,
    response_model=Person,
    responses=error_responses(409, 413, 415, 422, 503),
)
def add_person(
    ctx: Ctx,
    person_id: Annotated[str, Form(pattern=PERSON_ID.pattern, description="unique id, e.g. an operator's case id")],
    photos: PhotosField,
    name: Annotated[str, Form(max_length=200)] = "",
    threshold: Annotated[
        float | None, Form(ge=-1.0, le=1.0, description="cosine similarity to alert at; default: the deployment's")
    ] = None,
    notes: Annotated[str, Form(max_length=5000)] = "",
    boxes: BoxesField = None,
) -> Person:
    """Every photo is embedded by the network; 409 if the id is taken, 413 / 415 / 422 for a photo that is too
    large, not an image, corrupt, or shows no person or several without a box (the 422 body lists the persons
    found as ``boxes``)."""
    inputs = photo_inputs(ctx, photos, boxes)
    if ctx.r.hexists(ctx.keys.watchlist, person_id):  # before loading the engine and embedding every photo
        raise HTTPException(409, f"person {person_id!r} is already on the watchlist")
    return ctx.watchlist.add(ctx.engine.get(), person_id, inputs, name=name, threshold=threshold, notes=notes)


@router.get("", summary="List the watchlist", response_model=list[Person])
def list_persons(ctx: Ctx) -> list[Person]:
    return ctx.watchlist.list()


@router.get("/{person_id}", summary="One person", response_model=Person, responses=error_responses(404))
def get_person(ctx: Ctx, person_id: str) -> Person:
    return ctx.watchlist.get(person_id)


@router.patch(
    "/{person_id}",
    summary="Change a person's name, notes or threshold",
    response_model=Person,
    responses=error_responses(404, 422),
)
def update_person(ctx: Ctx, person_id: str, changes: PersonUpdate) -> Person:
    """Fields left out keep their values; ``"threshold": null`` goes back to the deployment's default."""
    clear = "threshold" in changes.model_fields_set and changes.threshold is None
    return ctx.watchlist.update(
        person_id, name=changes.name, notes=changes.notes, threshold=changes.threshold, clear_threshold=clear
    )


@router.post(
    "/{person_id}/photos",
    summary="Add photos of a person",
    response_model=Person,
    responses=error_responses(404, 409, 413, 415, 422, 503),
)
def add_photos(ctx: Ctx, person_id: str, photos: PhotosField, boxes: BoxesField = None) -> Person:
    """The same photo rules as adding a person; all photos are added or none."""
    inputs = photo_inputs(ctx, photos, boxes)
    ctx.watchlist.get(person_id)  # 404 before loading the engine
    return ctx.watchlist.add_photos(ctx.engine.get(), person_id, inputs)


@router.get(
    "/{person_id}/photos/{photo_id}",
    summary="A photo of a person, as uploaded",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {}, "image/png": {}, "image/bmp": {}, "image/webp": {}},
            "description": "the image",
        },
        **error_responses(404),
    },
)
def get_photo(ctx: Ctx, person_id: str, photo_id: str) -> Response:
    data, mime = ctx.watchlist.photo(person_id, photo_id)
    return Response(data, media_type=mime)


@router.delete(
    "/{person_id}/photos/{photo_id}",
    summary="Remove one photo of a person (not the last one)",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409),
)
def remove_photo(ctx: Ctx, person_id: str, photo_id: str) -> Response:
    """409 for a person's only photo: delete the person instead."""
    ctx.watchlist.remove_photo(person_id, photo_id)
    return Response(status_code=204)


@router.delete(
    "/{person_id}/rejections/{alert_id}",
    summary="Take back a rejection: that detection may match the person again",
    response_model=Person,
    responses=error_responses(404),
)
def remove_rejection(ctx: Ctx, person_id: str, alert_id: str) -> Person:
    """Rejections are added by acknowledging an alert as a false match (`POST /alerts/{alert_id}/ack`)."""
    return ctx.watchlist.remove_rejection(person_id, alert_id)


@router.delete(
    "/{person_id}",
    summary="Remove a person with every photo and embedding",
    status_code=204,
    response_class=Response,
    responses=error_responses(404),
)
def delete_person(ctx: Ctx, person_id: str) -> Response:
    ctx.watchlist.delete(person_id)
    return Response(status_code=204)


__all__ = ["MAX_PHOTOS_PER_REQUEST", "parse_box", "read_photo", "router", "upload_limit"]
