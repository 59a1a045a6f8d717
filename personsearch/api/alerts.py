"""Alerts: the audit log (list, filter, acknowledge, snapshots) and the live stream as Server-Sent Events.

Acknowledging an alert as a false match teaches the matcher (watchlist/feedback.py).

The live stream reads the alerts stream with a plain XREAD BLOCK from a position of its own (no consumer group): every
client sees every alert, and a client that reconnects with ``Last-Event-ID`` resumes where it left off, for as long as
the stream still holds that entry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from personsearch.api.context import ApiContext, Auth, Ctx
from personsearch.api.errors import error_responses
from personsearch.api.models import AckRequest, AlertView
from personsearch.streams import AlertMessage, SchemaError, decode
from watchlist.alerts import AlertRecord
from watchlist.feedback import acknowledge_alert as acknowledge

logger = logging.getLogger(__name__)

STREAM_ID = r"^\d+(-\d+)?$"

router = APIRouter(prefix="/alerts", tags=["alerts"])


def format_event(stream_id: str, record: AlertRecord) -> str:
    """One SSE event: the alert (with its snapshot URL) as JSON, under its stream entry id."""
    return f"id: {stream_id}\nevent: alert\ndata: {AlertView.of(record).model_dump_json()}\n\n"


async def alert_events(ctx: ApiContext, after: str | None) -> AsyncIterator[str]:
    """SSE text: alerts added to the stream after entry ``after`` (None: after the newest now), with keep-alives."""
    client = ctx.async_redis()
    try:
        if after is None:
            newest: Any = await client.xrevrange(ctx.keys.alerts, count=1)
            after = newest[0][0].decode() if newest else "0-0"
        yield ": connected\n\n"  # the position is fixed: every alert from here on will be sent
        block_ms = max(1, int(ctx.sse_keepalive_s * 1000))
        while True:
            res: Any = await client.xread({ctx.keys.alerts: after}, count=100, block=block_ms)
            if not res:
                yield ": keep-alive\n\n"  # holds proxies open and lets the server notice a gone client
                continue
            for _stream, entries in res:
                for entry_id, fields in entries:
                    after = entry_id.decode()
                    try:
                        msg = decode(AlertMessage, fields)
                    except SchemaError as e:
                        logger.warning("alert stream entry %s skipped: %s", after, e)
                        continue
                    record = AlertRecord.from_message(msg).model_copy(update={"stream_id": after})
                    yield format_event(after, record)
    finally:
        with anyio.CancelScope(shield=True):  # the client went away: this generator is being cancelled
            await client.aclose()


@router.get(
    "/stream",
    summary="Live alerts as Server-Sent Events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`id: <alerts stream entry id>`, `event: alert`, `data: <an Alert as JSON>` per alert; "
            "a `: keep-alive` comment when nothing happened for 15 s",
        },
        **error_responses(422),
    },
)
async def stream_alerts(
    ctx: Ctx,
    since_id: Annotated[
        str | None, Query(pattern=STREAM_ID, description="send the alerts after this stream entry id")
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", pattern=STREAM_ID, description="sent by EventSource when it reconnects"),
    ] = None,
) -> StreamingResponse:
    """Starts after the newest alert unless ``since_id`` or the ``Last-Event-ID`` header says where to resume."""
    return StreamingResponse(
        alert_events(ctx, last_event_id or since_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("", summary="List alerts, newest first", response_model=list[AlertView])
def list_alerts(
    ctx: Ctx,
    person_id: str | None = None,
    camera: str | None = None,
    since: Annotated[float | None, Query(description="captured at or after, Unix seconds")] = None,
    until: Annotated[float | None, Query(description="captured at or before, Unix seconds")] = None,
    acknowledged: Annotated[bool | None, Query(description="only acknowledged (true) or open (false) alerts")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AlertView]:
    records = ctx.alerts.list(person_id, camera, since, until, acknowledged, limit)
    return [AlertView.of(rec) for rec in records]


@router.get("/{alert_id}", summary="One alert", response_model=AlertView, responses=error_responses(404))
def get_alert(ctx: Ctx, alert_id: str) -> AlertView:
    return AlertView.of(ctx.alerts.get(alert_id))


@router.post(
    "/{alert_id}/ack",
    summary="Acknowledge an alert",
    response_model=AlertView,
    responses=error_responses(404, 409, 422),
)
def acknowledge_alert(ctx: Ctx, caller: Auth, alert_id: str, ack: AckRequest | None = None) -> AlertView:
    """Recorded with the API key's name and the time; acknowledging again replaces the note and the verdict.

    `false_match: true` also adds the alert's detection to the person's rejections, so that look-alike stops
    matching them (see the person's `rejections`); acknowledging again without it takes the rejection back. 409 for
    an alert without a stored embedding.
    """
    ack = ack or AckRequest()
    record = acknowledge(ctx.r, ctx.keys, alert_id, by=caller.name, note=ack.note, false_match=ack.false_match)
    return AlertView.of(record)


@router.get(
    "/{alert_id}/snapshot",
    summary="The alert's snapshot",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "JPEG"}, **error_responses(404)},
)
def alert_snapshot(ctx: Ctx, alert_id: str) -> Response:
    return Response(ctx.alerts.snapshot(alert_id), media_type="image/jpeg")


__all__ = ["alert_events", "format_event", "router"]
