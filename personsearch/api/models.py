"""The HTTP API's request and response bodies (the OpenAPI contract) beyond the domain models it returns as they are.

Domain models that are already the right shape are served directly: ``Person`` (watchlist/store.py), ``CameraStatus``
(ingest/cameras.py), ``Webhook`` and ``WebhookStatus`` (watchlist/delivery.py), ``AlertRecord`` (watchlist/alerts.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.cameras import CameraConfig, CameraStatus
from watchlist.alerts import AlertRecord
from watchlist.delivery import WebhookStatus

Box = tuple[float, float, float, float]


# -- errors ------------------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    """One invalid field of a request."""

    loc: list[str | int] = Field(description="where: e.g. ['body', 'url'] or ['query', 'limit']")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: the reason, and for some errors what a client needs to fix the request."""

    detail: str = Field(description="why the request failed, for a person to read")
    boxes: list[Box] | None = Field(
        default=None,
        description="photo errors (422): the persons the network found in the photo, x1y1x2y2 pixels; send one of "
        "them as the photo's box to pick that person (empty when none was found or the photo could not be read)",
    )
    photo: int | None = Field(default=None, description="which uploaded photo the error is about, counted from 0")
    errors: list[FieldError] | None = Field(default=None, description="validation errors (422): every invalid field")


# -- service -----------------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Check(BaseModel):
    """The outcome of one readiness check."""

    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    """Whether the API can serve every endpoint, and each check's outcome."""

    ready: bool
    checks: dict[str, Check] = Field(description="redis, engine, index, workers")


# -- cameras -----------------------------------------------------------------------------------------------------


class CameraUpdate(BaseModel):
    """Fields of a camera to change; the ones left out keep their values (the id cannot change)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="rtsp://, rtsps://, http(s):// or file:// URL, or a path")
    fps: float | None = Field(default=None, gt=0, le=60)
    max_size: int | None = Field(default=None, ge=64, le=8192)
    enabled: bool | None = None
    loop: bool | None = None
    name: str | None = None


class CameraView(CameraConfig):
    """A registered camera with its live status (the URL's password, if any, shows as ***)."""

    status: CameraStatus


# -- watchlist ---------------------------------------------------------------------------------------------------


class PersonUpdate(BaseModel):
    """Fields of a watchlist person to change; ``"threshold": null`` goes back to the deployment's default."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    notes: str | None = Field(default=None, max_length=5000)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, description="cosine similarity; null: the default")


# -- alerts ------------------------------------------------------------------------------------------------------


class AlertView(AlertRecord):
    """An alert as the audit log keeps it, with where to fetch its snapshot."""

    snapshot_url: str | None = Field(default=None, description="the snapshot JPEG (this API's path); none if absent")

    @classmethod
    def of(cls, record: AlertRecord) -> AlertView:
        url = f"/alerts/{record.alert_id}/snapshot" if record.has_snapshot else None
        return cls(**record.model_dump(), snapshot_url=url)


class AckRequest(BaseModel):
    """An acknowledgement of an alert (who acknowledged it is the API key's name)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000, description="what was done about it")
    false_match: bool = Field(
        default=False,
        description="the alert was someone else: their detection becomes a rejection of the person, so that "
        "look-alike stops matching them",
    )


# -- search ------------------------------------------------------------------------------------------------------


class SearchHitView(BaseModel):
    """One tracklet found by a search."""

    tracklet_id: str
    camera: str
    start_ts: float = Field(description="first frame, Unix seconds")
    end_ts: float = Field(description="last frame, Unix seconds")
    frames: int
    best_box: Box = Field(description="the person's box in the tracklet's best frame, x1y1x2y2 frame pixels")
    score: float = Field(description="cosine similarity to the query")
    snapshot_url: str | None = Field(default=None, description="the best frame's crop (this API's path), if kept")


class SearchResult(BaseModel):
    box: Box = Field(description="the box of the query person in the photo (given, or the one person found)")
    hits: list[SearchHitView] = Field(description="best first")


# -- webhooks ----------------------------------------------------------------------------------------------------


class WebhookCreate(BaseModel):
    """A receiver of alerts to register."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http:// or https:// URL the alerts are POSTed to")
    secret: str | None = Field(
        default=None, min_length=16, max_length=256, description="HMAC-SHA256 signing key; none: one is generated"
    )
    description: str = Field(default="", max_length=500)


class WebhookUpdate(BaseModel):
    """Fields of a webhook to change; the ones left out keep their values (the secret cannot change: re-register)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="http:// or https:// URL the alerts are POSTed to")
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = Field(default=None, description="false: no deliveries until enabled again")


class WebhookView(BaseModel):
    """A registered webhook with its delivery status (the secret is only shown when the webhook is created)."""

    webhook_id: str
    url: str
    description: str
    created_at: float = Field(description="Unix seconds")
    enabled: bool
    status: WebhookStatus


__all__ = [
    "AckRequest",
    "AlertView",
    "Box",
    "CameraUpdate",
    "CameraView",
    "Check",
    "ErrorBody",
    "FieldError",
    "Health",
    "PersonUpdate",
    "Readiness",
    "SearchHitView",
    "SearchResult",
    "WebhookCreate",
    "WebhookUpdate",
    "WebhookView",
]
