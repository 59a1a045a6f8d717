"""Search the past by photo: the tracklets most like the person in an uploaded photo (index/search.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Response, UploadFile

from index.search import query_embedding
from index.store import SearchHit
from personsearch.api.context import Ctx
from personsearch.api.errors import error_responses
from personsearch.api.models import SearchHitView, SearchResult
from personsearch.api.watchlist import parse_box, read_photo
from watchlist.store import decode_photo

router = APIRouter(tags=["search"])


def _hit(hit: SearchHit) -> SearchHitView:
    rec = hit.record
    return SearchHitView(
        tracklet_id=rec.tracklet_id, camera=rec.camera, start_ts=rec.start_ts, end_ts=rec.end_ts, frames=rec.frames,
        best_box=rec.best_box, score=hit.score,
        snapshot_url=f"/tracklets/{rec.tracklet_id}/snapshot" if rec.snapshot else None,
    )  # fmt: skip


@router.post(
    "/search",
    summary="Find a person in the past by photo",
    response_model=SearchResult,
    responses=error_responses(413, 415, 422, 503),
)
def search(
    ctx: Ctx,
    photo: Annotated[UploadFile, File(description="a photo of the person (JPEG, PNG, BMP or WebP)")],
    box: Annotated[
        str | None,
        Form(description="JSON [x1, y1, x2, y2]: the person's box in pixels; none: the photo shows one person"),
    ] = None,
    k: Annotated[int, Form(ge=1, le=100, description="how many tracklets to return")] = 10,
    cameras: Annotated[str | None, Form(description="comma-separated camera ids; none: every camera")] = None,
    since: Annotated[float | None, Form(description="tracklets seen at or after, Unix seconds")] = None,
    until: Annotated[float | None, Form(description="tracklets seen at or before, Unix seconds")] = None,
) -> SearchResult:
    """Tracklets ranked by cosine similarity to the person's embedding; 422 with the persons found (``boxes``) when
    the photo shows none or several and no box is given. Results are as fresh as the indexer's last snapshot."""
    max_bytes = ctx.settings.watchlist.max_photo_bytes
    image, _ = decode_photo(read_photo(photo, max_bytes), max_bytes)
    query_box = parse_box(box)
    reader = ctx.index.snapshot_reader()
    emb, used = query_embedding(ctx.engine.get(), image, query_box)
    camera_ids = [c.strip() for c in cameras.split(",") if c.strip()] if cameras else None
    hits = reader.search(emb, k=k, cameras=camera_ids, since=since, until=until)
    return SearchResult(box=used, hits=[_hit(h) for h in hits])


@router.get(
    "/tracklets/{tracklet_id}/snapshot",
    summary="A tracklet's snapshot (its best frame's crop)",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG"}, **error_responses(404, 503)},
)
def tracklet_snapshot(ctx: Ctx, tracklet_id: str) -> Response:
    reader = ctx.index.snapshot_reader()
    found = reader.get(tracklet_id)
    path = reader.snapshot_path(found[0]) if found is not None else None
    try:
        # Read now rather than stream the file: the indexer may replace the snapshot meanwhile.
        data = path.read_bytes() if path is not None else None
    except FileNotFoundError:
        data = None
    if data is None:
        raise HTTPException(404, f"tracklet {tracklet_id!r} is not in the index or has no snapshot")
    return Response(data, media_type="image/jpeg")


__all__ = ["router"]
