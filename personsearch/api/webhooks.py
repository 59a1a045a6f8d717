"""Webhooks: receivers of signed alert POSTs (watchlist/delivery.py delivers them)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from personsearch.api.context import ApiContext, Ctx
from personsearch.api.errors import error_responses
from personsearch.api.models import WebhookCreate, WebhookUpdate, WebhookView
from watchlist.delivery import Webhook

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _view(ctx: ApiContext, hook: Webhook) -> WebhookView:
    return WebhookView(
        webhook_id=hook.webhook_id, url=hook.url, description=hook.description, created_at=hook.created_at,
        enabled=hook.enabled, status=ctx.webhooks.status(hook.webhook_id),
    )  # fmt: skip


def _not_found(webhook_id: str) -> HTTPException:
    return HTTPException(404, f"no webhook {webhook_id!r}")


@router.post(
    "",
    summary="Register a webhook (the response shows its signing secret, once)",
    status_code=201,
    response_model=Webhook,
    responses=error_responses(422),
)
def add_webhook(ctx: Ctx, webhook: WebhookCreate) -> Webhook:
    """Every alert is POSTed to ``url`` as JSON, signed in ``X-PersonSearch-Signature`` with the secret (generated
    when none is given). Keep the secret: it is not shown again."""
    return ctx.webhooks.add(webhook.url, webhook.secret, webhook.description)


@router.get("", summary="List the webhooks with their delivery status", response_model=list[WebhookView])
def list_webhooks(ctx: Ctx) -> list[WebhookView]:
    views = []
    for hook in ctx.webhooks.list():
        try:
            views.append(_view(ctx, hook))
        except KeyError:
            continue  # removed meanwhile
    return views


@router.get(
    "/{webhook_id}", summary="One webhook with its delivery status", response_model=WebhookView,
    responses=error_responses(404),
)  # fmt: skip
def get_webhook(ctx: Ctx, webhook_id: str) -> WebhookView:
    try:
        return _view(ctx, ctx.webhooks.get(webhook_id))
    except KeyError:
        raise _not_found(webhook_id) from None


@router.patch(
    "/{webhook_id}", summary="Change a webhook's url or description, or disable and enable it",
    response_model=WebhookView, responses=error_responses(404, 422),
)  # fmt: skip
def update_webhook(ctx: Ctx, webhook_id: str, update: WebhookUpdate) -> WebhookView:
    """A disabled webhook is sent nothing, and deliveries still due to it are dropped, until it is enabled."""
    try:
        hook = ctx.webhooks.update(webhook_id, **update.model_dump())
        return _view(ctx, hook)
    except KeyError:
        raise _not_found(webhook_id) from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None


@router.delete(
    "/{webhook_id}",
    summary="Remove a webhook and the deliveries still pending for it",
    status_code=204,
    response_class=Response,
    responses=error_responses(404),
)
def remove_webhook(ctx: Ctx, webhook_id: str) -> Response:
    try:
        ctx.webhooks.remove(webhook_id)
    except KeyError:
        raise _not_found(webhook_id) from None
    return Response(status_code=204)


__all__ = ["router"]
