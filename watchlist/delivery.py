"""Webhook delivery of alerts: signed JSON POSTs, retried with backoff, crash-safe because every pending delivery lives
in Redis.

Two halves, both in ``DeliveryService.step``:

1. Fan-out. The service consumes the alerts stream in consumer group ``Groups.ALERT_DELIVERY``. For each alert entry
   it adds, in one MULTI/EXEC with the XACK, one due delivery per enabled webhook to the ``keys.deliveries`` sorted set
   (member ``"<webhook id>|<alert stream id>"``, score = when the next attempt is due). An alert is never acked without
   its deliveries being scheduled, and a re-handled entry schedules nothing twice (ZADD NX).
2. Delivery. Due members are leased atomically (their score is pushed past the lease, so several workers never take
   the same delivery, and one a killed worker held becomes due again when its lease runs out). The alert is read back
   from the stream by id, POSTed, and the outcome recorded: 2xx removes the delivery; a failure re-schedules it with
   exponential backoff and jitter until ``max_attempts``, after which it is given up and logged to
   ``keys.deliveries_failed``.

Delivery is at-least-once: a worker killed after a POST but before recording it sends that POST again. Receivers
de-duplicate on the ``X-PersonSearch-Delivery`` header, which is the same for every attempt of one delivery.

Requests carry ``X-PersonSearch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``; receivers
check it with ``verify_signature`` (the timestamp is signed so that a captured request cannot be replayed later).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import redis
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, field_validator

from personsearch.streams import (
    AlertMessage,
    Groups,
    Keys,
    SchemaError,
    StreamConsumer,
    decode,
    default_consumer_name,
)

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-PersonSearch-Signature"
EVENT_HEADER = "X-PersonSearch-Event"
DELIVERY_HEADER = "X-PersonSearch-Delivery"
USER_AGENT = "personsearch-webhook/1"

DELIVERIES = Counter("personsearch_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["result"])
DELIVERY_SECONDS = Histogram(
    "personsearch_webhook_delivery_seconds",
    "Time of one webhook POST, successful or not",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


# -- webhooks ----------------------------------------------------------------------------------------------------


class Webhook(BaseModel):
    """A receiver of alerts: where to POST and the secret that signs each request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    webhook_id: str
    url: str = Field(description="http:// or https:// URL the alerts are POSTed to")
    secret: str = Field(description="HMAC-SHA256 key of the X-PersonSearch-Signature header")
    description: str = ""
    created_at: float = Field(description="Unix seconds")
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"webhook url must start with http:// or https://, not {parts.scheme or 'no scheme'}")
        if not parts.hostname:
            raise ValueError("webhook url has no host")
        return url


class WebhookStatus(BaseModel):
    """A webhook's delivery counters and its last success and error."""

    delivered: int = 0
    failed_attempts: int = 0  # every attempt that failed, retried or not
    gave_up: int = 0  # deliveries abandoned after the last attempt
    last_success_ts: float | None = None
    last_error: str | None = None
    last_error_ts: float | None = None
    last_status_code: int | None = None  # of the last attempt; None when it got no HTTP response


MIN_SECRET, MAX_SECRET = 16, 256  # a short HMAC key is guessable


class WebhookRegistry:
    """The webhooks of a deployment, in one Redis hash."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r, self.keys = r, keys

    def add(self, url: str, secret: str | None = None, description: str = "") -> Webhook:
        """Register a webhook; a secret is generated when none is given. ValueError on an invalid url or secret."""
        if secret is not None and not MIN_SECRET <= len(secret) <= MAX_SECRET:
            raise ValueError(f"a webhook secret must be {MIN_SECRET}-{MAX_SECRET} characters, got {len(secret)}")
        hook = Webhook(
            webhook_id=secrets.token_hex(6),
            url=url,
            secret=secret if secret is not None else secrets.token_urlsafe(32),
            description=description,
            created_at=time.time(),
        )
        self.r.hset(self.keys.webhooks, hook.webhook_id, hook.model_dump_json())
        logger.info("webhook %s added: %s", hook.webhook_id, hook.url)
        return hook

    def list(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.webhooks)  # type: ignore[assignment]
        return sorted((Webhook.model_validate_json(v) for v in raw.values()), key=lambda h: h.created_at)

    def get(self, webhook_id: str) -> Webhook:
        """The webhook; KeyError when unknown."""
        raw: bytes | None = self.r.hget(self.keys.webhooks, webhook_id)  # type: ignore[assignment]
        if raw is None:
            raise KeyError(webhook_id)
        return Webhook.model_validate_json(raw)

    def update(
        self, webhook_id: str, *, url: str | None = None, description: str | None = None, enabled: bool | None = None
    ) -> Webhook:
        """Change a webhook's url, description or enabled flag (None keeps the value); KeyError when unknown,
        ValueError on an invalid url. A disabled webhook gets no new deliveries and drops the ones still due."""
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.webhooks)
                    raw: bytes | None = pipe.hget(self.keys.webhooks, webhook_id)  # type: ignore[assignment]
                    if raw is None:
                        raise KeyError(webhook_id)
                    hook = Webhook.model_validate_json(raw)
                    changes = {"url": url, "description": description, "enabled": enabled}
                    hook = Webhook.model_validate(
                        {**hook.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
                    )
                    pipe.multi()
                    pipe.hset(self.keys.webhooks, webhook_id, hook.model_dump_json())
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        logger.info("webhook %s updated: %s, %s", webhook_id, hook.url, "enabled" if hook.enabled else "disabled")
        return hook

    def remove(self, webhook_id: str) -> None:
        """Delete the webhook with its status and every delivery still pending for it; KeyError when unknown."""
        if not self.r.hdel(self.keys.webhooks, webhook_id):
            raise KeyError(webhook_id)
        # An in-flight delivery of this webhook finds it gone when recording its outcome and drops itself.
        pending = [m for m, _ in self.r.zscan_iter(self.keys.deliveries, match=f"{webhook_id}|*")]
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.webhook_status(webhook_id))
        if pending:
            pipe.zrem(self.keys.deliveries, *pending)
            pipe.hdel(self.keys.delivery_attempts, *pending)
        pipe.execute()
        logger.info("webhook %s removed (%d pending deliveries dropped)", webhook_id, len(pending))

    def status(self, webhook_id: str) -> WebhookStatus:
        """The webhook's delivery counters; KeyError when unknown."""
        self.get(webhook_id)
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.webhook_status(webhook_id))  # type: ignore[assignment]
        return WebhookStatus.model_validate({k.decode(): v.decode() for k, v in raw.items()})


# -- signing -----------------------------------------------------------------------------------------------------


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The X-PersonSearch-Signature header value of ``body`` sent at ``timestamp`` (Unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify_signature(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """True if ``header`` signs ``body`` with ``secret`` and its timestamp is within ``tolerance_s`` of ``now``.

    Several ``v1=`` values are accepted (any one may match), so a sender can sign with an old and a new secret while
    receivers rotate.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, body, timestamp)
    # No early exit, so the time taken says nothing about which candidate matched.
    matched = False
    for c in candidates:
        matched |= hmac.compare_digest(expected.encode(), c.encode())
    return matched


def alert_payload(alert: AlertMessage) -> dict[str, Any]:
    """The JSON body of an alert webhook: the alert without its snapshot and embedding bytes, and where to fetch the
    snapshot."""
    body = alert.model_dump(mode="json", exclude={"snapshot", "embedding"})
    body.update(event="alert", snapshot_url=f"/alerts/{alert.alert_id}/snapshot")
    return body


# -- the service -------------------------------------------------------------------------------------------------

# Lease up to ARGV[3] deliveries due at ARGV[1]: their score becomes ARGV[2] (the lease end), so no other worker takes
# them meanwhile and a killed worker's deliveries come due again (KEYS: deliveries). Returns the members.
_LEASE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m) end
return due
"""

# Record one delivery's outcome (KEYS: webhooks, status, deliveries, attempts, failed stream; ARGV: webhook id, member,
# outcome ok|retry|gave_up, now, next attempt ts, attempted 0|1, status code or '', error, failed maxlen, alert id,
# attempts). A webhook removed meanwhile only has the delivery dropped, so nothing of it is re-created.
_RECORD = """
local hook, member, outcome, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', KEYS[1], hook) == 0 then
  redis.call('ZREM', KEYS[3], member)
  redis.call('HDEL', KEYS[4], member)
  return 0
end
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[2], 'last_status_code')
else
  redis.call('HSET', KEYS[2], 'last_status_code', ARGV[7])
end
if outcome == 'ok' then
  redis.call('ZREM', KEYS[3], member)
  redis.call('HDEL', KEYS[4], member)
  redis.call('HINCRBY', KEYS[2], 'delivered', 1)
  redis.call('HSET', KEYS[2], 'last_success_ts', now)
  return 1
end
if ARGV[6] == '1' then redis.call('HINCRBY', KEYS[2], 'failed_attempts', 1) end
redis.call('HSET', KEYS[2], 'last_error', ARGV[8], 'last_error_ts', now)
if outcome == 'retry' then
  redis.call('ZADD', KEYS[3], 'XX', ARGV[5], member)
  return 1
end
redis.call('ZREM', KEYS[3], member)
redis.call('HDEL', KEYS[4], member)
redis.call('HINCRBY', KEYS[2], 'gave_up', 1)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', tonumber(ARGV[9]), '*', 'webhook_id', hook, 'alert_entry',
  string.match(member, '|(.*)$'), 'alert_id', ARGV[10], 'attempts', ARGV[11], 'error', ARGV[8], 'ts', now)
return 1
"""


@dataclass(frozen=True)
class DeliveryOptions:
    """Retry, timeout and batching settings of webhook delivery."""

    max_attempts: int = 6  # a delivery is given up after this many failed POSTs
    backoff_initial_s: float = 1.0  # wait after the first failure; doubles after each further one
    backoff_cap_s: float = 60.0
    timeout_s: float = 5.0  # per POST (connect, read, write, pool each)
    claim_idle_ms: int = 10_000  # alerts a dead worker left pending are taken over after this long
    concurrency: int = 8  # POSTs in flight at once; also how many due deliveries one step leases
    failed_maxlen: int = 10_000  # the deliveries_failed log is trimmed (approximately) to this many entries
    max_error_chars: int = 500


@dataclass(frozen=True)
class _Outcome:
    result: Literal["ok", "error", "gave_up"]
    status_code: int | None = None
    error: str = ""
    attempted: bool = True


class DeliveryService:
    """Fans alerts out to every enabled webhook and delivers them, surviving restarts and kills of its workers."""

    def __init__(
        self, r: redis.Redis, keys: Keys, options: DeliveryOptions | None = None, consumer_name: str | None = None
    ) -> None:
        self.r, self.keys = r, keys
        self.opt = options or DeliveryOptions()
        if self.opt.max_attempts < 1 or self.opt.concurrency < 1:
            raise ValueError("max_attempts and concurrency must be >= 1")
        self.consumer = StreamConsumer(
            r,
            Groups.ALERT_DELIVERY,
            [keys.alerts],
            consumer_name or default_consumer_name("delivery"),
            self.opt.claim_idle_ms,
        )
        self.consumer.ensure_groups()
        self.registry = WebhookRegistry(r, keys)
        # A lease outlives the slowest POST twice over, so a live worker never loses a delivery it is still sending.
        self.lease_s = max(self.opt.claim_idle_ms / 1000, 2 * self.opt.timeout_s)
        self.http = httpx.Client(timeout=self.opt.timeout_s, headers={"User-Agent": USER_AGENT})
        self._pool = ThreadPoolExecutor(self.opt.concurrency, thread_name_prefix="webhook")
        self._lease = r.register_script(_LEASE_DUE)
        self._record = r.register_script(_RECORD)
        self._rng = random.Random()

    # -- fan-out --

    def fan_out(self, block_ms: int) -> int:
        """Schedule one delivery per enabled webhook for each new alert, acking it in the same transaction."""
        entries = self.consumer.read(count=64, block_ms=block_ms)
        if not entries:
            return 0
        hooks = [h for h in self.registry.list() if h.enabled]
        now = time.time()
        for entry in entries:
            pipe = self.r.pipeline(transaction=True)
            readable = entry.fields is not None
            if entry.fields is not None:
                try:
                    decode(AlertMessage, entry.fields)
                except SchemaError as e:
                    logger.warning("not delivering unreadable alert %s: %s", entry.id, e)
                    readable = False
            if readable and hooks:
                pipe.zadd(self.keys.deliveries, {f"{h.webhook_id}|{entry.id}": now for h in hooks}, nx=True)
            pipe.xack(entry.stream, Groups.ALERT_DELIVERY, entry.id)
            pipe.execute()
        return len(entries)

    # -- delivery --

    def backoff_s(self, attempts: int) -> float:
        """Wait before the next attempt after ``attempts`` failed ones, with +-20 % jitter."""
        base = min(self.opt.backoff_cap_s, self.opt.backoff_initial_s * 2 ** (attempts - 1))
        return base * self._rng.uniform(0.8, 1.2)

    def deliver_due(self) -> int:
        """Lease the deliveries that are due, POST them and record each outcome; returns how many were handled."""
        now = time.time()
        leased = self._lease(
            keys=[self.keys.deliveries], args=[repr(now), repr(now + self.lease_s), self.opt.concurrency]
        )
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in leased]
        if not members:
            return 0
        hooks = {h.webhook_id: h for h in self.registry.list()}
        list(self._pool.map(lambda m: self._deliver_one(m, hooks), members))
        return len(members)

    def _deliver_one(self, member: str, hooks: dict[str, Webhook]) -> None:
        webhook_id, _, entry_id = member.partition("|")
        hook = hooks.get(webhook_id)
        if hook is None or not hook.enabled:
            pipe = self.r.pipeline(transaction=True)
            pipe.zrem(self.keys.deliveries, member)
            pipe.hdel(self.keys.delivery_attempts, member)
            pipe.execute()
            return
        alert_id = ""
        res: Any = self.r.xrange(self.keys.alerts, entry_id, entry_id, count=1)
        if not res:
            outcome = _Outcome("gave_up", error="alert no longer in stream", attempted=False)
        else:
            try:
                alert = decode(AlertMessage, res[0][1])
            except SchemaError as e:
                outcome = _Outcome("gave_up", error=f"unreadable alert: {e}", attempted=False)
            else:
                alert_id = alert.alert_id
                outcome = self._post(hook, member, alert)
        self._finish(hook, member, alert_id, outcome)

    def _post(self, hook: Webhook, delivery_id: str, alert: AlertMessage) -> _Outcome:
        body = json.dumps(alert_payload(alert), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(hook.secret, body, int(time.time())),
            EVENT_HEADER: "alert",
            DELIVERY_HEADER: delivery_id,
        }
        t0 = time.perf_counter()
        try:
            resp = self.http.post(hook.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            return _Outcome("error", error=f"{type(e).__name__}: {e}"[: self.opt.max_error_chars])
        finally:
            DELIVERY_SECONDS.observe(time.perf_counter() - t0)
        if 200 <= resp.status_code < 300:
            return _Outcome("ok", status_code=resp.status_code)
        detail = resp.text[:200].strip()
        error = f"HTTP {resp.status_code}" + (f": {detail}" if detail else "")
        return _Outcome("error", status_code=resp.status_code, error=error[: self.opt.max_error_chars])

    def _finish(self, hook: Webhook, member: str, alert_id: str, outcome: _Outcome) -> None:
        now = time.time()
        result: str = outcome.result
        attempts = 0
        next_ts = now
        if outcome.result == "error":
            DELIVERIES.labels("error").inc()
            attempts = int(self.r.hincrby(self.keys.delivery_attempts, member, 1))  # type: ignore[arg-type]
            if attempts >= self.opt.max_attempts:
                result = "gave_up"
            else:
                result = "retry"
                next_ts = now + self.backoff_s(attempts)
        self._record(
            keys=[
                self.keys.webhooks,
                self.keys.webhook_status(hook.webhook_id),
                self.keys.deliveries,
                self.keys.delivery_attempts,
                self.keys.deliveries_failed,
            ],
            args=[
                hook.webhook_id,
                member,
                result,
                repr(now),
                repr(next_ts),
                "1" if outcome.attempted else "0",
                "" if outcome.status_code is None else str(outcome.status_code),
                outcome.error,
                self.opt.failed_maxlen,
                alert_id,
                attempts,
            ],
        )
        if result == "ok":
            DELIVERIES.labels("ok").inc()
        elif result == "gave_up":
            DELIVERIES.labels("gave_up").inc()
            logger.warning("webhook %s: gave up delivery %s: %s", hook.webhook_id, member, outcome.error)
        else:
            logger.info(
                "webhook %s: delivery %s failed (attempt %d): %s", hook.webhook_id, member, attempts, outcome.error
            )

    def _next_due_in_ms(self) -> int | None:
        """Milliseconds until the earliest scheduled delivery, or None when none is scheduled."""
        first: Any = self.r.zrange(self.keys.deliveries, 0, 0, withscores=True)
        if not first:
            return None
        return max(0, int((float(first[0][1]) - time.time()) * 1000))

    # -- the loop --

    def step(self, block_ms: int = 500) -> int:
        """Fan out new alerts (waiting at most until the next delivery is due), then deliver what is due.

        Returns how many alerts and deliveries were handled.
        """
        due_in = self._next_due_in_ms()
        wait = block_ms if due_in is None else min(block_ms, due_in)
        return self.fan_out(wait) + self.deliver_due()

    def run(self, stop: threading.Event) -> None:
        """Deliver until ``stop`` is set."""
        logger.info("webhook delivery %s started", self.consumer.consumer)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except redis.ConnectionError as e:
                    logger.warning("webhook delivery: redis unavailable (%s); retrying", e)
                    stop.wait(1.0)
        finally:
            self.close()
        logger.info("webhook delivery stopped")

    def close(self) -> None:
        """Release the HTTP client and the sender threads."""
        self._pool.shutdown(wait=True)
        self.http.close()


__all__ = [
    "DeliveryOptions",
    "DeliveryService",
    "Webhook",
    "WebhookRegistry",
    "WebhookStatus",
    "alert_payload",
    "sign",
    "verify_signature",
]
