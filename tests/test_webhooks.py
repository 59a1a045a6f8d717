"""Webhook delivery against a real HTTP receiver and a real redis-server: signing, retries, giving up, removal."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from personsearch.streams import AlertMessage, publish
from watchlist.delivery import (
    DeliveryOptions,
    DeliveryService,
    WebhookRegistry,
    sign,
    verify_signature,
)

FAST = DeliveryOptions(max_attempts=3, backoff_initial_s=0.01, backoff_cap_s=0.05, timeout_s=1.0, claim_idle_ms=1000)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that checks each request's signature and answers from a script of status codes."""

    secret: str
    codes: list[int] = field(default_factory=list)  # answered in turn; 200 once exhausted
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def answer(self) -> int:
        return self.codes.pop(0) if self.codes else 200

    @property
    def ok(self) -> list[Received]:
        return [q for q in self.requests if q.verified]


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    servers: list[ThreadingHTTPServer] = []

    def start(secret: str, codes: list[int] | None = None) -> Receiver:
        rec = Receiver(secret, list(codes or []))

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get("X-PersonSearch-Signature", "")
                verified = verify_signature(rec.secret, header, body)
                rec.requests.append(Received(dict(self.headers.items()), body, verified))
                code = rec.answer() if verified else 401
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        return rec

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def service(r, keys) -> Iterator[DeliveryService]:  # type: ignore[no-untyped-def]
    svc = DeliveryService(r, keys, FAST)
    yield svc
    svc.close()


def alert(alert_id: str = "a1") -> AlertMessage:
    return AlertMessage(
        alert_id=alert_id,
        person_id="p1",
        person_name="Ada",
        camera="cam1",
        seq=7,
        capture_ts=1_700_000_000.0,
        alerted_ts=1_700_000_000.5,
        score=0.81,
        frames=3,
        box=(1.0, 2.0, 30.0, 80.0),
        model="oim-r18",
        snapshot=b"\xff\xd8jpeg",
    )


def drive(svc: DeliveryService, done: Callable[[], bool], timeout_s: float = 4.0) -> None:
    """Step the service until ``done()`` (fails after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "condition not reached in time"
        svc.step(block_ms=20)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_delivers_signed_alert_json_without_snapshot_bytes(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("")
    registry = WebhookRegistry(r, keys)
    hook = registry.add(rec.url, description="ops")
    rec.secret = hook.secret  # the generated one
    entry_id = publish(r, keys.alerts, alert("a1"))

    drive(service, lambda: len(rec.requests) == 1)

    got = rec.requests[0]
    assert got.verified
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-PersonSearch-Event"] == "alert"
    assert got.headers["X-PersonSearch-Delivery"] == f"{hook.webhook_id}|{entry_id}"
    assert got.headers["User-Agent"] == "personsearch-webhook/1"
    body = json.loads(got.body)
    assert body["event"] == "alert"
    assert body["alert_id"] == "a1" and body["person_name"] == "Ada" and body["camera"] == "cam1"
    assert body["snapshot_url"] == "/alerts/a1/snapshot"
    assert "snapshot" not in body
    status = registry.status(hook.webhook_id)
    assert status.delivered == 1 and status.failed_attempts == 0 and status.last_status_code == 200
    assert status.last_success_ts is not None
    assert r.zcard(keys.deliveries) == 0
    assert r.xpending(keys.alerts, "delivery")["pending"] == 0


def test_retries_after_server_errors_until_delivered(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("s3cret-s3cret-s3cret", codes=[500, 500])
    hook = WebhookRegistry(r, keys).add(rec.url, secret="s3cret-s3cret-s3cret")
    publish(r, keys.alerts, alert())

    drive(service, lambda: len(rec.requests) == 3)
    drive(service, lambda: r.zcard(keys.deliveries) == 0)

    status = WebhookRegistry(r, keys).status(hook.webhook_id)
    assert status.delivered == 1
    assert status.failed_attempts == 2
    assert status.gave_up == 0
    assert status.last_error is not None and "HTTP 500" in status.last_error
    assert status.last_error_ts is not None
    assert status.last_status_code == 200
    assert len({q.headers["X-PersonSearch-Delivery"] for q in rec.requests}) == 1  # one delivery id for every attempt


def test_gives_up_after_max_attempts_and_logs_the_failure(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("s" * 16, codes=[503] * 10)
    registry = WebhookRegistry(r, keys)
    hook = registry.add(rec.url, secret="s" * 16)
    entry_id = publish(r, keys.alerts, alert("a9"))

    drive(service, lambda: registry.status(hook.webhook_id).gave_up == 1)

    assert len(rec.requests) == FAST.max_attempts
    status = registry.status(hook.webhook_id)
    assert status.delivered == 0 and status.failed_attempts == FAST.max_attempts
    assert status.last_status_code == 503
    assert r.zcard(keys.deliveries) == 0 and r.hlen(keys.delivery_attempts) == 0
    (_, fields), *_ = r.xrange(keys.deliveries_failed)
    assert fields[b"webhook_id"].decode() == hook.webhook_id
    assert fields[b"alert_entry"].decode() == entry_id
    assert fields[b"alert_id"] == b"a9"
    assert fields[b"attempts"] == str(FAST.max_attempts).encode()
    assert b"HTTP 503" in fields[b"error"]


def test_unreachable_receiver_records_connection_error(r, keys, service) -> None:  # type: ignore[no-untyped-def]
    registry = WebhookRegistry(r, keys)
    hook = registry.add(f"http://127.0.0.1:{closed_port()}/hook")
    publish(r, keys.alerts, alert())

    drive(service, lambda: registry.status(hook.webhook_id).failed_attempts >= 1)

    status = registry.status(hook.webhook_id)
    assert status.delivered == 0
    assert status.last_status_code is None
    assert status.last_error is not None and "Connect" in status.last_error


def test_alert_trimmed_from_stream_is_given_up(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("s" * 16)
    registry = WebhookRegistry(r, keys)
    hook = registry.add(rec.url, secret="s" * 16)
    entry_id = publish(r, keys.alerts, alert())
    service.fan_out(block_ms=0)
    r.xdel(keys.alerts, entry_id)

    drive(service, lambda: registry.status(hook.webhook_id).gave_up == 1)

    assert rec.requests == []
    assert registry.status(hook.webhook_id).last_error == "alert no longer in stream"


def test_receiver_rejects_wrong_secret(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("the-receivers-secret")
    registry = WebhookRegistry(r, keys)
    hook = registry.add(rec.url, secret="another-secret-key")
    publish(r, keys.alerts, alert())

    drive(service, lambda: registry.status(hook.webhook_id).failed_attempts >= 1)

    assert rec.requests and not rec.requests[0].verified
    assert registry.status(hook.webhook_id).last_status_code == 401


def test_signature_checks() -> None:
    body = b'{"event":"alert"}'
    header = sign("k", body, 1_000)
    assert header.startswith("t=1000,v1=")
    assert verify_signature("k", header, body, now=1_100)
    assert not verify_signature("wrong", header, body, now=1_100)
    assert not verify_signature("k", header, body + b" ", now=1_100)
    assert not verify_signature("k", header, body, tolerance_s=300, now=1_000 + 301)  # stale: a replay
    assert not verify_signature("k", header, body, tolerance_s=300, now=1_000 - 301)
    assert not verify_signature("k", "garbage", body, now=1_000)
    assert not verify_signature("k", "t=abc,v1=00", body, now=1_000)
    assert not verify_signature("k", "t=1000", body, now=1_000)
    rotated = f"{header},v1={sign('old', body, 1_000).split('v1=')[1]}"
    assert verify_signature("old", rotated, body, now=1_000) and verify_signature("k", rotated, body, now=1_000)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/hook", "http://"])
def test_refuses_non_http_urls(r, keys, url: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="webhook url"):
        WebhookRegistry(r, keys).add(url)
    assert WebhookRegistry(r, keys).list() == []


def test_registry_add_get_list_remove(r, keys) -> None:  # type: ignore[no-untyped-def]
    registry = WebhookRegistry(r, keys)
    a = registry.add("https://example.com/a", description="first")
    b = registry.add("http://example.com/b", secret="given-secret-0123")
    assert len(a.secret) >= 40 and b.secret == "given-secret-0123"
    with pytest.raises(ValueError, match="16-256 characters"):
        registry.add("http://example.com/c", secret="short")
    assert a.webhook_id != b.webhook_id
    assert registry.get(a.webhook_id) == a
    assert [h.webhook_id for h in registry.list()] == [a.webhook_id, b.webhook_id]
    registry.remove(a.webhook_id)
    with pytest.raises(KeyError):
        registry.get(a.webhook_id)
    with pytest.raises(KeyError):
        registry.remove(a.webhook_id)
    with pytest.raises(KeyError):
        registry.status(a.webhook_id)


def test_removing_webhook_drops_its_pending_deliveries(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    rec = receiver_factory("s" * 16)
    registry = WebhookRegistry(r, keys)
    gone = registry.add(f"http://127.0.0.1:{closed_port()}/hook")
    kept = registry.add(rec.url, secret="s" * 16)
    publish(r, keys.alerts, alert("a1"))
    publish(r, keys.alerts, alert("a2"))
    service.fan_out(block_ms=0)
    assert r.zcard(keys.deliveries) == 4

    registry.remove(gone.webhook_id)

    assert not r.exists(keys.webhook_status(gone.webhook_id))
    members = [m.decode() for m in r.zrange(keys.deliveries, 0, -1)]
    assert len(members) == 2 and all(m.startswith(f"{kept.webhook_id}|") for m in members)
    drive(service, lambda: r.zcard(keys.deliveries) == 0)
    assert len(rec.ok) == 2
    assert not r.exists(keys.webhook_status(gone.webhook_id))


def test_disabled_webhook_gets_nothing_until_enabled_again(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    off = receiver_factory("s" * 16)
    on = receiver_factory("t" * 16)
    registry = WebhookRegistry(r, keys)
    paused = registry.add(off.url, secret="s" * 16)
    registry.add(on.url, secret="t" * 16)
    publish(r, keys.alerts, alert("a1"))
    service.fan_out(block_ms=0)
    assert r.zcard(keys.deliveries) == 2

    hook = registry.update(paused.webhook_id, enabled=False, description="maintenance")
    assert not hook.enabled and hook.description == "maintenance" and hook.secret == paused.secret
    publish(r, keys.alerts, alert("a2"))
    drive(service, lambda: len(on.ok) == 2 and r.zcard(keys.deliveries) == 0)
    assert off.requests == []  # the due delivery was dropped, the new alert never scheduled for it

    registry.update(paused.webhook_id, enabled=True)
    publish(r, keys.alerts, alert("a3"))
    drive(service, lambda: len(off.ok) == 1 and len(on.ok) == 3)
    assert json.loads(off.ok[0].body)["alert_id"] == "a3"
    with pytest.raises(ValueError, match="http"):
        registry.update(paused.webhook_id, url="ftp://x.test/")
    with pytest.raises(KeyError):
        registry.update("nope", enabled=False)


def test_every_webhook_receives_every_alert(r, keys, service, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    one, two = receiver_factory("one-secret-one-secret"), receiver_factory("two-secret-two-secret")
    registry = WebhookRegistry(r, keys)
    registry.add(one.url, secret="one-secret-one-secret")
    registry.add(two.url, secret="two-secret-two-secret")
    for i in range(3):
        publish(r, keys.alerts, alert(f"a{i}"))

    drive(service, lambda: len(one.ok) == 3 and len(two.ok) == 3)

    for rec in (one, two):
        assert sorted(json.loads(q.body)["alert_id"] for q in rec.ok) == ["a0", "a1", "a2"]
    assert [registry.status(h.webhook_id).delivered for h in registry.list()] == [3, 3]


def test_killed_worker_loses_no_delivery(r, keys, receiver_factory) -> None:  # type: ignore[no-untyped-def]
    """Deliveries live in Redis: one scheduled but never sent, and one leased by a worker that died, both arrive."""
    rec = receiver_factory("s" * 16)
    WebhookRegistry(r, keys).add(rec.url, secret="s" * 16)
    short_lease = DeliveryOptions(backoff_initial_s=0.01, timeout_s=0.2, claim_idle_ms=300)
    publish(r, keys.alerts, alert("a1"))
    dead = DeliveryService(r, keys, short_lease, consumer_name="dead")
    dead.fan_out(block_ms=0)  # a1 scheduled and acked, then the worker dies before delivering
    publish(r, keys.alerts, alert("a2"))
    dead.fan_out(block_ms=0)

    def killed(*args: object) -> None:
        raise RuntimeError("worker killed mid-delivery")

    dead._deliver_one = killed  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        dead.deliver_due()  # both leased, neither sent
    dead.close()
    assert r.zcard(keys.deliveries) == 2

    fresh = DeliveryService(r, keys, short_lease, consumer_name="fresh")
    try:
        drive(fresh, lambda: len(rec.ok) == 2)
    finally:
        fresh.close()
    assert sorted(json.loads(q.body)["alert_id"] for q in rec.ok) == ["a1", "a2"]
