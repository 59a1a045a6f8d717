"""The HTTP API against a real redis-server: authentication, every endpoint, the refusals a client can act on, the
live alert stream served by uvicorn, and search over a real tracklet index."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import torch
from fastapi.testclient import TestClient
from PIL import Image

from detector.config import ModelConfig, get_model_config
from detector.engine import Detections, Engine, TorchEngine
from detector.model import build_model
from index.search import IndexReader, query_embedding
from index.store import TrackletIndex, TrackletRecord
from ingest.cameras import CameraRegistry
from personsearch.api import create_app
from personsearch.api.context import SSE_CLIENT_NAME
from personsearch.api.server import serving
from personsearch.auth import ApiKeyStore
from personsearch.settings import ApiSettings, Settings, WatchlistSettings
from personsearch.streams import AlertMessage, Keys
from watchlist.alerts import AlertLog, raise_alert
from watchlist.store import decode_photo

Box = tuple[float, float, float, float]
PERSON_BOX: Box = (30.0, 20.0, 110.0, 220.0)


@pytest.fixture(scope="module")
def network() -> Engine:
    """A seeded random network (its detections are arbitrary; its embeddings are deterministic)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "min_size": 240, "max_size": 320})
    return TorchEngine(build_model(cfg))


class FixedPersons(Engine):
    """Test double for the detector: every photo shows the persons at ``boxes``; embeddings come from the network."""

    name = "fixed-persons"

    def __init__(self, network: Engine, boxes: Sequence[Box] = (PERSON_BOX,)) -> None:
        self.network, self.model_name, self.boxes = network, network.model_name, list(boxes)
        self.calls = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        self.calls += 1
        n = len(self.boxes)
        boxes = np.array(self.boxes, np.float32).reshape(n, 4)
        return [Detections(boxes, np.full(n, 0.9, np.float32), np.zeros((n, 256), np.float32)) for _ in images]

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.network.embed(image, boxes)


def jpeg(seed: int = 0, size: tuple[int, int] = (140, 240), quality: int = 90) -> bytes:
    """A photo-sized JPEG of smooth random colour (some kilobytes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Api:
    client: TestClient
    r: redis.Redis
    keys: Keys
    secret: str
    key_name: str
    engine: FixedPersons


@pytest.fixture
def make_api(r: redis.Redis, keys: Keys, network: Engine, tmp_path: Path) -> Callable[..., Api]:
    """An API over the test's keys with a valid key sent on every request; keyword arguments go to create_app."""

    def make(auth: bool = True, max_photo_bytes: int = 10 * 1024 * 1024, keep_key: bool = True, **kwargs: Any) -> Api:
        settings = Settings(
            data_dir=tmp_path / "data",
            api=ApiSettings(auth=auth),
            watchlist=WatchlistSettings(max_photo_bytes=max_photo_bytes),
        )
        engine = kwargs.pop("engine", None)
        if engine is None and "engine_factory" not in kwargs:
            engine = FixedPersons(network)
        _, secret = ApiKeyStore(r, keys).create("ops-console")
        kwargs.setdefault("warm_up_engine", False)
        app = create_app(r, keys, settings, engine=engine, **kwargs)
        client = TestClient(app, headers={"X-API-Key": secret} if keep_key else {})
        return Api(client, r, keys, secret, "ops-console", engine)

    return make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def add_person(api: Api, person_id: str, photos: Sequence[bytes], boxes: Sequence[Any] | None = None, **fields: Any):
    files = [("photos", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    data = {"person_id": person_id, **{k: str(v) for k, v in fields.items()}}
    if boxes is not None:
        data["boxes"] = json.dumps(list(boxes))
    return api.client.post("/watchlist", data=data, files=files)


# -- authentication and the contract -----------------------------------------------------------------------------


def test_health_is_open_and_every_other_endpoint_needs_a_valid_key(make_api: Callable[..., Api]) -> None:
    api = make_api(keep_key=False)
    c = api.client
    assert c.get("/health").json() == {"status": "ok"}

    missing = c.get("/cameras")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "API key" in missing.json()["detail"]
    wrong = "ps_000000000000_" + "x" * 43
    for headers in ({"X-API-Key": wrong}, {"Authorization": f"Bearer {wrong}"}, {"X-API-Key": "nonsense"}):
        refused = c.get("/watchlist", headers=headers)
        assert refused.status_code == 401 and "not valid" in refused.json()["detail"]
    assert c.post("/webhooks", json={"url": "http://x.test/h"}).status_code == 401
    assert c.get("/metrics").status_code == 401

    assert c.get("/cameras", headers={"X-API-Key": api.secret}).status_code == 200
    assert c.get("/cameras", headers={"Authorization": f"Bearer {api.secret}"}).status_code == 200

    ApiKeyStore(api.r, api.keys).revoke(api.secret.split("_")[1])
    assert c.get("/cameras", headers={"X-API-Key": api.secret}).status_code == 401


def test_auth_off_lets_anyone_in(make_api: Callable[..., Api]) -> None:
    api = make_api(auth=False, keep_key=False)
    assert api.client.get("/cameras").status_code == 200


def test_openapi_documents_every_endpoint_with_models_and_errors(api: Api) -> None:
    doc = api.client.get("/openapi.json").json()
    assert set(doc["paths"]) == {
        "/health", "/ready", "/metrics",
        "/cameras", "/cameras/{camera_id}",
        "/watchlist", "/watchlist/{person_id}", "/watchlist/{person_id}/photos",
        "/watchlist/{person_id}/photos/{photo_id}", "/watchlist/{person_id}/rejections/{alert_id}",
        "/alerts", "/alerts/stream", "/alerts/{alert_id}", "/alerts/{alert_id}/ack", "/alerts/{alert_id}/snapshot",
        "/search", "/tracklets/{tracklet_id}/snapshot",
        "/webhooks", "/webhooks/{webhook_id}",
    }  # fmt: skip
    assert {"ApiKey", "Bearer"} <= set(doc["components"]["securitySchemes"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op.get("summary") and op.get("tags"), f"{method} {path}"
            if path != "/health":
                assert "401" in op["responses"] and op.get("security"), f"{method} {path}"
            for status, response in op["responses"].items():
                if status.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]["$ref"]
                    assert schema.endswith("/ErrorBody"), f"{method} {path} {status}"
    assert "HTTPValidationError" not in json.dumps(doc)
    person = doc["paths"]["/watchlist"]["post"]
    assert "multipart/form-data" in person["requestBody"]["content"]
    assert person["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/Person")


# -- cameras -----------------------------------------------------------------------------------------------------


def test_cameras_can_be_added_listed_changed_and_removed(api: Api) -> None:
    c = api.client
    created = c.post("/cameras", json={"id": "gate", "url": "rtsp://op:hunter2@10.0.0.5/live", "fps": 4})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["url"] == "rtsp://op:***@10.0.0.5/live"  # the password never leaves the server
    assert body["status"]["state"] == "starting"

    duplicate = c.post("/cameras", json={"id": "gate", "url": "rtsp://10.0.0.6/live"})
    assert duplicate.status_code == 409 and "already registered" in duplicate.json()["detail"]
    scheme = c.post("/cameras", json={"id": "lobby", "url": "ftp://10.0.0.7/x"})
    assert scheme.status_code == 422 and "unsupported camera URL scheme 'ftp'" in scheme.json()["detail"]
    assert scheme.json()["errors"][0]["loc"] == ["body", "url"]
    bad_id = c.post("/cameras", json={"id": "no spaces", "url": "rtsp://10.0.0.7/x"})
    assert bad_id.status_code == 422 and "camera id" in bad_id.json()["detail"]

    CameraRegistry(api.r, api.keys).set_status("gate", state="live", fps=3.9, last_error="")
    api.r.hset(api.keys.camera_counters("gate"), mapping={"frames": 120, "dropped": 3, "corrupt": 1, "reconnects": 2})
    (listed,) = c.get("/cameras").json()
    assert listed["id"] == "gate"
    assert {k: listed["status"][k] for k in ("state", "fps", "frames", "dropped", "corrupt", "reconnects")} == {
        "state": "live", "fps": 3.9, "frames": 120, "dropped": 3, "corrupt": 1, "reconnects": 2,
    }  # fmt: skip
    assert listed["status"]["last_error"] == ""

    changed = c.patch("/cameras/gate", json={"fps": 2, "enabled": False})
    assert changed.status_code == 200
    assert changed.json()["fps"] == 2 and changed.json()["enabled"] is False
    assert changed.json()["max_size"] == 1280  # untouched
    cfg = CameraRegistry(api.r, api.keys).get("gate")
    assert cfg.fps == 2 and cfg.url == "rtsp://op:hunter2@10.0.0.5/live"
    assert c.get("/cameras/gate").json()["status"]["state"] == "disabled"
    assert c.patch("/cameras/gate", json={"url": "gopher://x"}).status_code == 422
    assert c.patch("/cameras/gate", json={"id": "other"}).status_code == 422  # not a changeable field
    assert c.patch("/cameras/nope", json={"fps": 1}).status_code == 404

    assert c.delete("/cameras/gate").status_code == 204
    assert c.get("/cameras/gate").status_code == 404
    assert c.delete("/cameras/gate").status_code == 404
    assert c.get("/cameras").json() == []


# -- watchlist ---------------------------------------------------------------------------------------------------


def test_watchlist_person_lifecycle(api: Api) -> None:
    c = api.client
    photos = [jpeg(1), jpeg(2)]
    created = add_person(api, "case-17", photos, boxes=[None, [10, 10, 100, 200]], name="Ann", threshold=0.7)
    assert created.status_code == 201, created.text
    person = created.json()
    assert person["name"] == "Ann" and person["threshold"] == 0.7 and person["model"] == api.engine.model_name
    assert [p["box"] for p in person["photos"]] == [list(PERSON_BOX), [10, 10, 100, 200]]
    assert add_person(api, "case-17", [jpeg(3)]).status_code == 409

    assert [p["person_id"] for p in c.get("/watchlist").json()] == ["case-17"]
    assert c.get("/watchlist/case-17").json() == person
    assert c.get("/watchlist/nobody").status_code == 404

    first = person["photos"][0]["photo_id"]
    image = c.get(f"/watchlist/case-17/photos/{first}")
    assert image.status_code == 200 and image.content == photos[0] and image.headers["content-type"] == "image/jpeg"
    assert c.get("/watchlist/case-17/photos/ph-nothere").status_code == 404

    more = c.post(
        "/watchlist/case-17/photos",
        files=[("photos", ("p.jpg", jpeg(4), "image/jpeg"))],
        data={"boxes": json.dumps([[5, 5, 80, 150]])},
    )
    assert more.status_code == 200, more.text
    assert len(more.json()["photos"]) == 3

    renamed = c.patch("/watchlist/case-17", json={"name": "Ann B.", "notes": "seen near gate"})
    assert renamed.json()["name"] == "Ann B." and renamed.json()["threshold"] == 0.7
    assert c.patch("/watchlist/case-17", json={"threshold": None}).json()["threshold"] is None
    assert c.patch("/watchlist/case-17", json={"threshold": 2}).status_code == 422
    assert c.patch("/watchlist/nobody", json={"name": "x"}).status_code == 404

    assert c.delete(f"/watchlist/case-17/photos/{first}").status_code == 204
    remaining = [p["photo_id"] for p in c.get("/watchlist/case-17").json()["photos"]]
    assert len(remaining) == 2 and first not in remaining
    assert not api.r.hexists(api.keys.watchlist_photos, first)
    assert not api.r.hexists(api.keys.watchlist_embeddings, f"case-17/{first}")
    assert c.delete(f"/watchlist/case-17/photos/{remaining[0]}").status_code == 204
    last = c.delete(f"/watchlist/case-17/photos/{remaining[1]}")
    assert last.status_code == 409 and "only photo" in last.json()["detail"]

    assert c.delete("/watchlist/case-17").status_code == 204
    assert c.get("/watchlist/case-17").status_code == 404
    assert api.r.hlen(api.keys.watchlist_photos) == 0
    assert api.r.hlen(api.keys.watchlist_embeddings) == 0
    assert c.delete("/watchlist/case-17").status_code == 404


def test_bad_photos_are_refused_with_a_reason_a_client_can_act_on(api: Api) -> None:
    not_image = add_person(api, "p1", [b"GIF? no, just text " * 20])
    assert not_image.status_code == 415 and "not an image" in not_image.json()["detail"]

    whole = jpeg(5)
    truncated = add_person(api, "p1", [whole[: len(whole) // 2]])
    assert truncated.status_code == 422 and "corrupt or truncated" in truncated.json()["detail"]

    api.engine.boxes = []
    nobody = add_person(api, "p1", [jpeg(6)])
    assert nobody.status_code == 422
    assert "no person" in nobody.json()["detail"] and nobody.json()["boxes"] == []

    api.engine.boxes = [(0, 0, 60, 200), (70, 10, 135, 230)]
    crowd = add_person(api, "p1", [jpeg(6)])
    assert crowd.status_code == 422 and "2 persons" in crowd.json()["detail"]
    assert crowd.json()["boxes"] == [[0, 0, 60, 200], [70, 10, 135, 230]]
    assert crowd.json()["photo"] == 0

    picked = add_person(api, "p1", [jpeg(6)], boxes=[crowd.json()["boxes"][1]])  # the client picks one
    assert picked.status_code == 201, picked.text

    assert add_person(api, "p2", [jpeg(6)], boxes=[[1, 2, 3]]).status_code == 422
    assert add_person(api, "p2", [jpeg(6)], boxes=[None, None]).status_code == 422  # one entry per photo
    assert add_person(api, "not valid!", [jpeg(6)], boxes=[PERSON_BOX]).status_code == 422


def test_a_photo_over_the_size_limit_is_refused(make_api: Callable[..., Api]) -> None:
    api = make_api(max_photo_bytes=2048)
    big = jpeg(7, size=(200, 300))
    assert len(big) > 2048
    refused = add_person(api, "p1", [big])
    assert refused.status_code == 413 and "limit is 2048" in refused.json()["detail"]
    # A body far over every photo's worth is refused from its Content-Length, before it is parsed.
    huge = api.client.post("/search", files={"photo": ("p.jpg", b"\xff" * 200_000, "image/jpeg")})
    assert huge.status_code == 413 and "request body is larger" in huge.json()["detail"]
    assert not api.r.exists(api.keys.watchlist)


def test_a_bad_second_photo_leaves_nothing_written(api: Api) -> None:
    refused = add_person(api, "p1", [jpeg(1), b"definitely not an image"], boxes=[PERSON_BOX, None])
    assert refused.status_code == 415 and refused.json()["photo"] == 1
    assert "photo 2" in refused.json()["detail"]
    assert api.client.get("/watchlist/p1").status_code == 404
    for key in (api.keys.watchlist, api.keys.watchlist_photos, api.keys.watchlist_embeddings):
        assert api.r.hlen(key) == 0
    assert api.r.get(api.keys.watchlist_version) is None

    add_person(api, "p2", [jpeg(1)])
    before = api.r.hgetall(api.keys.watchlist_photos)
    more = api.client.post("/watchlist/p2/photos", files=[("photos", ("a.jpg", jpeg(2))), ("photos", ("b.jpg", b"x"))])
    assert more.status_code in (415, 422)
    assert api.r.hgetall(api.keys.watchlist_photos) == before
    assert len(api.client.get("/watchlist/p2").json()["photos"]) == 1


def test_the_engine_is_loaded_on_first_need_and_a_failure_is_a_503(make_api: Callable[..., Api], network) -> None:
    built: list[Engine] = []

    def factory() -> Engine:
        built.append(FixedPersons(network))
        return built[-1]

    api = make_api(engine_factory=factory)
    assert api.client.get("/watchlist").status_code == 200 and not built
    assert add_person(api, "p1", [jpeg(1)]).status_code == 201
    assert add_person(api, "p2", [jpeg(2)]).status_code == 201
    assert len(built) == 1
    assert api.client.get("/ready").json()["checks"]["engine"]["ok"] is True

    def broken() -> Engine:
        raise FileNotFoundError("no weights at /models/x.pt")

    api = make_api(engine_factory=broken)
    failed = add_person(api, "p3", [jpeg(1)])
    assert failed.status_code == 503 and "no weights at /models/x.pt" in failed.json()["detail"]
    engine_check = api.client.get("/ready").json()["checks"]["engine"]
    assert not engine_check["ok"] and "no weights" in engine_check["detail"]


# -- alerts ------------------------------------------------------------------------------------------------------


def alert(alert_id: str, person: str, camera: str, ts: float, snapshot: bytes = b"") -> AlertMessage:
    return AlertMessage(
        alert_id=alert_id, person_id=person, camera=camera, capture_ts=ts, alerted_ts=ts + 0.5, score=0.81,
        box=(10, 20, 60, 180), snapshot=snapshot,
    )  # fmt: skip


def test_alerts_can_be_listed_filtered_acknowledged_and_their_snapshots_fetched(api: Api) -> None:
    c = api.client
    snap = jpeg(9)
    for a in (
        alert("a1", "ann", "gate", 1000.0, snap),
        alert("a2", "ann", "lobby", 2000.0),
        alert("a3", "bob", "gate", 3000.0, snap),
    ):
        assert raise_alert(api.r, api.keys, a, cooldown_s=60)

    listed = c.get("/alerts").json()
    assert [a["alert_id"] for a in listed] == ["a3", "a2", "a1"]
    assert listed[0]["snapshot_url"] == "/alerts/a3/snapshot" and listed[1]["snapshot_url"] is None
    assert listed[0]["stream_id"]
    ids = lambda **q: [a["alert_id"] for a in c.get("/alerts", params=q).json()]
    assert ids(person_id="ann") == ["a2", "a1"]
    assert ids(camera="gate") == ["a3", "a1"]
    assert ids(since=1500, until=2500) == ["a2"]
    assert ids(limit=1) == ["a3"]
    assert c.get("/alerts", params={"limit": 0}).status_code == 422

    acked = c.post("/alerts/a1/ack", json={"note": "security informed"})
    assert acked.status_code == 200
    assert acked.json()["acknowledged"] is True and acked.json()["acknowledged_by"] == api.key_name
    assert acked.json()["note"] == "security informed"
    assert c.post("/alerts/a2/ack").json()["acknowledged"] is True  # a note is optional
    assert ids(acknowledged=True) == ["a2", "a1"]
    assert ids(acknowledged=False) == ["a3"]
    assert c.get("/alerts/a1").json()["acknowledged_at"] is not None
    assert c.post("/alerts/nope/ack", json={}).status_code == 404
    assert c.get("/alerts/nope").status_code == 404

    shot = c.get("/alerts/a1/snapshot")
    assert shot.status_code == 200 and shot.content == snap and shot.headers["content-type"] == "image/jpeg"
    assert c.get("/alerts/a2/snapshot").status_code == 404


def test_a_false_match_acknowledgement_becomes_a_rejection_of_the_person(api: Api) -> None:
    c = api.client
    assert add_person(api, "case-9", [jpeg(1)], boxes=[[10, 10, 100, 200]]).status_code == 201
    (stored,) = api.r.hvals(api.keys.watchlist_embeddings)
    lookalike = np.frombuffer(stored, "<f4")[::-1].copy()  # some other unit vector of the same model
    msg = alert("f1", "case-9", "gate", 1000.0).model_copy(
        update={"model": api.engine.model_name, "embedding": lookalike.tobytes()}
    )
    assert raise_alert(api.r, api.keys, msg, cooldown_s=60)
    assert raise_alert(api.r, api.keys, alert("f2", "case-9", "lobby", 1001.0), cooldown_s=60)  # no embedding

    acked = c.post("/alerts/f1/ack", json={"note": "not her", "false_match": True})
    assert acked.status_code == 200, acked.text
    assert acked.json()["false_match"] is True and acked.json()["acknowledged"] is True
    (rejection,) = c.get("/watchlist/case-9").json()["rejections"]
    assert rejection["alert_id"] == "f1" and rejection["camera"] == "gate" and rejection["added_by"] == api.key_name
    assert np.allclose(np.frombuffer(api.r.hget(api.keys.watchlist_embeddings, "case-9/rejected:f1"), "<f4"), lookalike)
    refused = c.post("/alerts/f2/ack", json={"false_match": True})
    assert refused.status_code == 409 and "no stored embedding" in refused.json()["detail"]
    assert c.post("/alerts/f1/ack", json={"false_match": "maybe"}).status_code == 422

    taken_back = c.delete("/watchlist/case-9/rejections/f1")
    assert taken_back.status_code == 200 and taken_back.json()["rejections"] == []
    assert not api.r.hexists(api.keys.watchlist_embeddings, "case-9/rejected:f1")
    assert c.delete("/watchlist/case-9/rejections/f1").status_code == 404


def read_event(lines: Iterator[str]) -> dict[str, str]:
    """The next SSE block: its fields, with a comment line as ``comment``."""
    event: dict[str, str] = {}
    for line in lines:
        if line == "":
            if event:
                return event
            continue
        if line.startswith(":"):
            event["comment"] = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        event[name] = value.removeprefix(" ")
    raise AssertionError("the stream ended")


def sse_clients(r: redis.Redis) -> int:
    return sum(1 for client in r.client_list() if client.get("name") == SSE_CLIENT_NAME)


def test_live_alert_stream_sends_new_alerts_resumes_and_keeps_alive(make_api: Callable[..., Api]) -> None:
    api = make_api(sse_keepalive_s=0.3)
    raise_alert(api.r, api.keys, alert("old", "ann", "gate", 100.0), cooldown_s=60)
    log = AlertLog(api.r, api.keys)
    headers = {"Authorization": f"Bearer {api.secret}"}
    with serving(api.client.app, "127.0.0.1", 0) as server, httpx.Client(timeout=10) as http:  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{server.port}/alerts/stream"
        assert http.get(url).status_code == 401
        with http.stream("GET", url, headers=headers) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            assert read_event(lines) == {"comment": "connected"}  # from here on every alert is sent
            assert raise_alert(api.r, api.keys, alert("new", "bob", "lobby", 200.0, jpeg(1)), cooldown_s=60)
            event = read_event(lines)
            while event.get("comment") == "keep-alive":
                event = read_event(lines)
            assert event["event"] == "alert"
            assert event["id"] == log.get("new").stream_id  # the old alert is not replayed
            data = json.loads(event["data"])
            assert data["alert_id"] == "new" and data["person_id"] == "bob" and data["camera"] == "lobby"
            assert data["snapshot_url"] == "/alerts/new/snapshot" and data["stream_id"] == event["id"]
            assert read_event(lines) == {"comment": "keep-alive"}  # nothing happened for sse_keepalive_s
            assert sse_clients(api.r) == 1

        # The client is gone: the server stops reading for it.
        deadline = time.monotonic() + 5
        while sse_clients(api.r) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sse_clients(api.r) == 0

        resume = {**headers, "Last-Event-ID": log.get("old").stream_id}
        with http.stream("GET", url, headers=resume) as resp:
            lines = resp.iter_lines()
            assert read_event(lines) == {"comment": "connected"}
            assert json.loads(read_event(lines)["data"])["alert_id"] == "new"
        with http.stream("GET", url, headers=headers, params={"since_id": "0"}) as resp:
            lines = resp.iter_lines()
            read_event(lines)
            assert [json.loads(read_event(lines)["data"])["alert_id"] for _ in range(2)] == ["old", "new"]
        assert http.get(url, headers=headers, params={"since_id": "yesterday"}).status_code == 422


# -- search ------------------------------------------------------------------------------------------------------


def search(api: Api, photo: bytes, box: Sequence[float] | None = None, **form: str) -> httpx.Response:
    data = {**form, **({"box": json.dumps(list(box))} if box is not None else {})}
    return api.client.post("/search", files={"photo": ("q.jpg", photo, "image/jpeg")}, data=data)


def test_search_ranks_the_tracklet_of_the_photographed_person_first(make_api, network, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    photo = jpeg(11)
    box = (20.0, 15.0, 120.0, 230.0)
    target, _ = query_embedding(network, decode_photo(photo)[0], box)  # what the API computes for this photo
    dim = int(target.shape[0])
    api = make_api(index=IndexReader(tmp_path / "index", dim, network.model_name, check_period_s=0.0))
    no_index = search(api, photo, box)
    assert no_index.status_code == 503 and "no snapshot" in no_index.json()["detail"]

    index = TrackletIndex(tmp_path / "index", dim, network.model_name)
    index.upsert(TrackletRecord("t-target", "gate", 100.0, 140.0, 40, (1, 2, 30, 90), 0.95, 7), target, jpeg(12))
    rng = np.random.default_rng(3)
    for i in range(6):
        other = target + rng.normal(0, 0.05 * 2**i, dim).astype(np.float32)  # ever less like the target
        record = TrackletRecord(f"t-{i}", ("gate", "lobby")[i % 2], 200.0 + i, 210.0 + i, 5, (0, 0, 9, 9), 0.9, 1)
        index.upsert(record, other)
    index.save(position="1-0")

    found = search(api, photo, box, k="4")
    assert found.status_code == 200, found.text
    assert found.json()["box"] == list(box)
    hits = found.json()["hits"]
    assert [h["tracklet_id"] for h in hits] == ["t-target", "t-0", "t-1", "t-2"]
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[1]["score"] < hits[0]["score"]
    assert hits[0]["camera"] == "gate" and hits[0]["frames"] == 40 and hits[0]["best_box"] == [1, 2, 30, 90]
    assert hits[0]["snapshot_url"] == "/tracklets/t-target/snapshot" and hits[1]["snapshot_url"] is None

    ids = lambda **form: [h["tracklet_id"] for h in search(api, photo, box, **form).json()["hits"]]
    assert ids(cameras="lobby") == ["t-1", "t-3", "t-5"]
    assert set(ids(cameras="lobby, gate")) == {"t-target", *(f"t-{i}" for i in range(6))}
    assert ids(since="213.5") == ["t-4", "t-5"]  # tracklets overlapping [since, until]
    assert ids(until="150") == ["t-target"]

    api.engine.boxes = [box]  # no box given: the one person in the photo is the query
    assert search(api, photo).json()["hits"][0]["tracklet_id"] == "t-target"
    api.engine.boxes = [(0, 0, 50, 100), (60, 0, 130, 200)]
    crowd = search(api, photo)
    assert crowd.status_code == 422 and crowd.json()["boxes"] == [[0, 0, 50, 100], [60, 0, 130, 200]]
    assert search(api, b"plain text, not a photo").status_code == 415
    assert search(api, photo, box, k="101").status_code == 422
    assert search(api, photo, [1, 2]).status_code == 422

    snap = api.client.get("/tracklets/t-target/snapshot")
    assert snap.status_code == 200 and snap.content == jpeg(12) and snap.headers["content-type"] == "image/jpeg"
    assert api.client.get("/tracklets/t-0/snapshot").status_code == 404  # indexed without a snapshot
    assert api.client.get("/tracklets/nope/snapshot").status_code == 404


# -- webhooks ----------------------------------------------------------------------------------------------------


def test_webhooks_show_their_secret_once(api: Api) -> None:
    c = api.client
    created = c.post("/webhooks", json={"url": "https://hooks.example.test/ps", "description": "SOC"})
    assert created.status_code == 201
    hook = created.json()
    assert len(hook["secret"]) >= 32
    given = c.post("/webhooks", json={"url": "http://10.0.0.9:8000/x", "secret": "s" * 20}).json()
    assert given["secret"] == "s" * 20

    listed = c.get("/webhooks").json()
    assert [h["webhook_id"] for h in listed] == [hook["webhook_id"], given["webhook_id"]]
    assert all("secret" not in h and h["status"]["delivered"] == 0 for h in listed)
    one = c.get(f"/webhooks/{hook['webhook_id']}").json()
    assert one["description"] == "SOC" and "secret" not in one

    assert c.post("/webhooks", json={"url": "ftp://x.test/"}).status_code == 422
    paused = c.patch(f"/webhooks/{given['webhook_id']}", json={"enabled": False, "description": "paused"})
    assert paused.status_code == 200 and paused.json()["enabled"] is False and paused.json()["description"] == "paused"
    assert "secret" not in paused.json()
    assert c.patch(f"/webhooks/{given['webhook_id']}", json={"url": "ftp://x.test/"}).status_code == 422
    assert c.patch(f"/webhooks/{given['webhook_id']}", json={"secret": "x" * 20}).status_code == 422
    assert c.patch("/webhooks/nope", json={"enabled": True}).status_code == 404
    assert c.get(f"/webhooks/{given['webhook_id']}").json()["enabled"] is False
    assert c.post("/webhooks", json={"url": "https://x.test/", "secret": "short"}).status_code == 422
    assert c.delete(f"/webhooks/{hook['webhook_id']}").status_code == 204
    assert c.delete(f"/webhooks/{hook['webhook_id']}").status_code == 404
    assert c.get(f"/webhooks/{hook['webhook_id']}").status_code == 404
    assert [h["webhook_id"] for h in c.get("/webhooks").json()] == [given["webhook_id"]]


# -- service -----------------------------------------------------------------------------------------------------


def test_ready_says_which_check_fails_until_everything_is_up(make_api, network, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    index_dir = tmp_path / "ready-index"
    api = make_api(index=IndexReader(index_dir, 256, network.model_name, check_period_s=0.0))
    not_ready = api.client.get("/ready")
    assert not_ready.status_code == 503
    checks = not_ready.json()["checks"]
    assert checks["redis"]["ok"] and checks["engine"]["ok"]
    assert not checks["index"]["ok"] and "no snapshot" in checks["index"]["detail"]
    assert not checks["workers"]["ok"]

    TrackletIndex(index_dir, 256, network.model_name).save(position="0-0")
    api.r.hset(api.keys.workers, "indexer:host:1", repr(time.time()))
    partial = api.client.get("/ready")
    assert partial.status_code == 503
    detail = partial.json()["checks"]["workers"]["detail"]
    assert "no live ingest, detector, tracker, matcher, delivery workers" in detail and "indexer:host:1" in detail
    for role in ("ingest", "detector", "tracker", "matcher", "delivery"):
        api.r.hset(api.keys.workers, f"{role}:other-host:7", repr(time.time()))
    ready = api.client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True and "indexer:host:1" in ready.json()["checks"]["workers"]["detail"]
    api.r.hset(api.keys.workers, "matcher:other-host:7", repr(time.time() - 60))  # its heartbeat went stale
    assert "no live matcher worker;" in api.client.get("/ready").json()["checks"]["workers"]["detail"]

    api.client.get("/cameras")
    metrics = api.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'personsearch_api_requests_total{method="GET",route="/cameras",status="200"}' in metrics.text


def test_the_engine_warms_up_at_start_up(make_api: Callable[..., Api], network) -> None:  # type: ignore[no-untyped-def]
    started = threading.Event()

    def factory() -> Engine:
        started.set()
        return FixedPersons(network)

    api = make_api(engine_factory=factory, warm_up_engine=True)
    with TestClient(api.client.app, headers={"X-API-Key": api.secret}) as client:  # type: ignore[arg-type]
        assert started.wait(5)
        deadline = time.monotonic() + 5
        while not client.get("/ready").json()["checks"]["engine"]["ok"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/ready").json()["checks"]["engine"]["ok"]
