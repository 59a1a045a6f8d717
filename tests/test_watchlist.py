"""The watchlist store, the consensus matcher and the alert log, on a real redis-server."""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import numpy as np
import pytest
from PIL import Image

from detector.engine import Detections, Engine
from personsearch.streams import AlertMessage, DetectionMessage, Groups, Keys, decode, publish
from watchlist.alerts import AlertLog, raise_alert
from watchlist.feedback import acknowledge_alert
from watchlist.matcher import MatcherOptions, MatcherService
from watchlist.store import PhotoError, PhotoInput, Watchlist, WatchlistError, decode_photo

D = 8


def unit(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(D, np.float32)
    v[i] = 1.0
    if noise:
        v += np.random.default_rng(seed).normal(0, noise, D).astype(np.float32)
    return v / np.linalg.norm(v)


class ColourEngine(Engine):
    """A stand-in for the network where the test is about the watchlist's rules, not about the model: a photo's
    embedding is chosen by the red of its top-left corner, and the "persons found" are whatever the test sets."""

    name = "test"
    model_name = "test-model"

    def __init__(self, found: Sequence[tuple[float, float, float, float]] = ((10, 10, 50, 90),)) -> None:
        self.found = [tuple(map(float, b)) for b in found]

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        n = len(self.found)
        boxes = np.asarray(self.found, np.float32).reshape(n, 4)
        return [Detections(boxes, np.full(n, 0.9, np.float32), np.zeros((n, D), np.float32)) for _ in images]

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return np.stack([unit(int(image[4:12, 4:12, 0].mean()) // 32 % D) for _ in range(len(boxes))])


def photo(red: int, fmt: str = "JPEG", size: tuple[int, int] = (64, 128)) -> bytes:
    """A noisy image (so that it compresses to some kilobytes) whose top-left corner encodes ``red`` (0-7)."""
    pixels = np.random.default_rng(red).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:16, :16] = (red * 32 + 16, 40, 40)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, quality=100)
    return buf.getvalue()


# -- photos and the store ------------------------------------------------------------------------------------------


def test_bad_photos_are_refused_with_the_reason_and_status() -> None:
    with pytest.raises(PhotoError, match="not an image") as e:
        decode_photo(b"%PDF-1.4 hello")
    assert e.value.status == 415
    with pytest.raises(PhotoError, match="limit") as e:
        decode_photo(photo(1), max_bytes=100)
    assert e.value.status == 413
    with pytest.raises(PhotoError, match="corrupt or truncated") as e:
        decode_photo(photo(1, "PNG")[:2000])
    assert e.value.status == 422
    with pytest.raises(PhotoError, match="empty"):
        decode_photo(b"")
    with pytest.raises(PhotoError, match="at least 16x16"):
        decode_photo(photo(1, size=(8, 8)))
    rgb, mime = decode_photo(photo(3, "PNG"))
    assert rgb.shape == (128, 64, 3) and mime == "image/png"


def test_add_get_update_and_delete_a_person(r, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    wl = Watchlist(r, keys)
    engine = ColourEngine()
    p = wl.add(engine, "alice", [PhotoInput(photo(1), (5, 5, 40, 100)), PhotoInput(photo(2))], name="Alice")
    assert [ph.box for ph in p.photos] == [(5.0, 5.0, 40.0, 100.0), (10.0, 10.0, 50.0, 90.0)]
    assert wl.get("alice") == p and [x.person_id for x in wl.list()] == ["alice"] and p.model == "test-model"
    emb = wl.embeddings()
    assert emb.photos.shape == (2, D) and emb.photo_owner.tolist() == [0, 0] and np.allclose(emb.photos[0], unit(1))
    assert emb.rejections.size == 0
    data, mime = wl.photo("alice", p.photos[0].photo_id)
    assert data == photo(1) and mime == "image/jpeg"

    v0 = wl.version()
    assert wl.update("alice", threshold=0.8).threshold == 0.8 and wl.version() > v0
    assert wl.update("alice", clear_threshold=True).threshold is None
    with pytest.raises(WatchlistError, match="cosine"):
        wl.update("alice", threshold=3.0)

    p = wl.remove_photo("alice", p.photos[1].photo_id)
    assert len(p.photos) == 1 and wl.embeddings().photos.shape == (1, D)
    with pytest.raises(WatchlistError, match="only photo") as e:
        wl.remove_photo("alice", p.photos[0].photo_id)
    assert e.value.status == 409

    class Rotated(ColourEngine):  # another model: every photo embeds one dimension further on
        model_name = "other-model"

        def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
            return np.roll(super().embed(image, boxes), 1, axis=1)

    # A rejection (a detection marked as not alice) is kept beside the photos; re-embedding drops it (old model).
    p = wl.reject("alice", "a1", unit(3), camera="cam0", score=0.8, model="test-model", by="ops")
    assert wl.reject("alice", "a1", unit(3), camera="cam0", score=0.8, model="test-model") == p  # idempotent
    emb = wl.embeddings()
    assert [x.alert_id for x in p.rejections] == ["a1"] and np.allclose(emb.rejections, [unit(3)])
    assert emb.rejection_owner.tolist() == [0]
    with pytest.raises(WatchlistError, match="embedded with") as e:
        wl.reject("alice", "a2", unit(3), camera="cam0", score=0.8, model="other-model")
    assert e.value.status == 409
    (p,) = wl.reembed(Rotated())
    assert p.model == "other-model" and np.allclose(wl.embeddings().photos[0], unit(2))
    assert p.rejections == [] and wl.embeddings().rejections.size == 0 and r.hlen(keys.watchlist_embeddings) == 1
    wl.reject("alice", "a3", unit(4), camera="cam0", score=0.8, model="other-model")

    wl.delete("alice")
    assert wl.list() == [] and not r.hlen(keys.watchlist_embeddings) and not r.hlen(keys.watchlist_photos)
    with pytest.raises(WatchlistError) as e:
        wl.get("alice")
    assert e.value.status == 404


def test_a_duplicate_id_or_one_bad_photo_writes_nothing(r, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    wl = Watchlist(r, keys)
    engine = ColourEngine()
    wl.add(engine, "bob", [PhotoInput(photo(1))])
    with pytest.raises(WatchlistError, match="already") as e:
        wl.add(engine, "bob", [PhotoInput(photo(2))])
    assert e.value.status == 409
    with pytest.raises(PhotoError, match=r"photo 2: .*corrupt"):
        wl.add(engine, "carol", [PhotoInput(photo(1)), PhotoInput(photo(2, "PNG")[:300])])
    with pytest.raises(WatchlistError, match="person id"):
        wl.add(engine, "no spaces allowed", [PhotoInput(photo(1))])
    assert [p.person_id for p in wl.list()] == ["bob"]
    assert r.hlen(keys.watchlist_embeddings) == 1 and r.hlen(keys.watchlist_photos) == 1


def test_without_a_box_the_photo_must_show_exactly_one_person(r, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    wl = Watchlist(r, keys)
    with pytest.raises(PhotoError, match="no person") as e:
        wl.add(ColourEngine(found=()), "dan", [PhotoInput(photo(1))])
    assert e.value.boxes == []
    two = ((0, 0, 30, 60), (32, 0, 62, 60))
    with pytest.raises(PhotoError, match="2 persons") as e:
        wl.add(ColourEngine(found=two), "dan", [PhotoInput(photo(1))])
    assert e.value.boxes == [tuple(map(float, b)) for b in two]
    # With a box the same photo is fine.
    assert wl.add(ColourEngine(found=two), "dan", [PhotoInput(photo(1), two[1])]).photos[0].box == two[1]
    with pytest.raises(PhotoError, match="does not cover"):
        wl.add(ColourEngine(), "erin", [PhotoInput(photo(1), (500, 500, 600, 700))])


# -- the matcher -----------------------------------------------------------------------------------------------------


def detection(
    camera: str, seq: int, people: list[tuple[tuple[float, float, float, float], np.ndarray]]
) -> DetectionMessage:
    return DetectionMessage(
        camera=camera, seq=seq, capture_ts=time.time() - 0.5 + seq * 1e-3, media_ts=seq / 5, detected_ts=time.time(),
        width=640, height=480, model="test-model", boxes=[b for b, _ in people], scores=[0.95] * len(people),
        embeddings=np.stack([e for _, e in people]) if people else np.zeros((0, D), np.float32),
        crops=[b"jpeg-%d" % seq] * len(people),
    )  # fmt: skip


def walk(x: float, i: int) -> tuple[float, float, float, float]:
    """A person walking right a few pixels per frame (boxes of consecutive frames overlap)."""
    return (x + 4 * i, 100.0, x + 4 * i + 60, 260.0)


@pytest.fixture
def matcher(r, keys: Keys):  # type: ignore[no-untyped-def]
    wl = Watchlist(r, keys)
    wl.add(ColourEngine(), "alice", [PhotoInput(photo(1))], name="Alice")
    wl.add(ColourEngine(), "bob", [PhotoInput(photo(2))], threshold=0.9)
    m = MatcherService(
        r, keys, MatcherOptions(default_threshold=0.7, consensus_frames=3, window_frames=5, cooldown_s=30), "m1"
    )
    m.reload(force=True)
    return m


def feed(r, keys: Keys, m: MatcherService, msgs: list[DetectionMessage]) -> list[AlertMessage]:  # type: ignore[no-untyped-def]
    for msg in msgs:
        publish(r, keys.detections, msg)
    while m.step(block_ms=50):
        pass
    return [decode(AlertMessage, f) for _, f in r.xrange(keys.alerts)]


def test_consensus_over_a_tracklet_raises_exactly_one_alert(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    frames = [detection("cam0", i, [(walk(0, i), unit(1, 0.1, i))]) for i in range(1, 3)]
    assert feed(r, keys, matcher, frames) == []  # two frames are not a consensus
    frames = [detection("cam0", i, [(walk(0, i), unit(1, 0.1, i))]) for i in range(3, 12)]
    alerts = feed(r, keys, matcher, frames)
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.person_id, a.person_name, a.camera, a.seq, a.frames) == ("alice", "Alice", "cam0", 3, 3)
    assert a.box == walk(0, 3) and a.snapshot.startswith(b"jpeg-") and a.first_seen_ts is not None
    assert 0.7 <= a.score <= 1.0 and a.alerted_ts >= a.capture_ts
    log = AlertLog(r, keys)
    assert [x.alert_id for x in log.list()] == [a.alert_id] and log.snapshot(a.alert_id) == a.snapshot
    assert log.get(a.alert_id).stream_id == r.xrange(keys.alerts)[0][0].decode()
    assert r.xpending(keys.detections, Groups.WATCHLIST)["pending"] == 0


def test_frames_without_people_and_unreadable_messages_are_skipped(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    r.xadd(keys.detections, {"v": "1", "kind": "detections", "meta": "{not json"})
    frames = [detection("cam0", 1, [])] + [detection("cam0", i, [(walk(0, i), unit(1))]) for i in range(2, 6)]
    assert [a.seq for a in feed(r, keys, matcher, frames)] == [4]
    assert r.xpending(keys.detections, Groups.WATCHLIST)["pending"] == 0


def test_one_look_alike_frame_pages_nobody(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    # Frame 3 looks like alice, the rest of the tracklet like nobody on the list; bob's own threshold (0.9) is not met.
    frames = [
        detection("cam0", i, [(walk(0, i), unit(1) if i == 3 else unit(5)), (walk(300, i), unit(2, 0.6, i))])
        for i in range(1, 10)
    ]
    assert feed(r, keys, matcher, frames) == []


def test_cooldown_per_person_and_camera(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    first = [detection("cam0", i, [(walk(0, i), unit(1))]) for i in range(1, 5)]
    # A new tracklet of alice on cam0 (the first one ended: a gap of > max_gap_s in capture time) ...
    later = [
        detection("cam0", i, [(walk(400, i), unit(1))]).model_copy(update={"capture_ts": time.time() + 5 + i * 0.2})
        for i in range(5, 10)
    ]
    # ... and alice on cam1.
    other = [detection("cam1", i, [(walk(0, i), unit(1))]) for i in range(1, 5)]
    alerts = feed(r, keys, matcher, first + later + other)
    assert sorted((a.camera, a.person_id) for a in alerts) == [("cam0", "alice"), ("cam1", "alice")]


def test_a_re_handled_frame_raises_nothing_twice_and_a_killed_matchers_frames_are_reclaimed(  # type: ignore[no-untyped-def]
    r, keys: Keys, matcher: MatcherService
) -> None:
    frames = [detection("cam0", i, [(walk(0, i), unit(1))]) for i in range(1, 6)]
    for msg in frames:
        publish(r, keys.detections, msg)
    # A matcher reads every frame and dies before handling them (kill -9 mid-batch): they stay pending ...
    dead = MatcherService(r, keys, MatcherOptions(default_threshold=0.7), "dead")
    assert len(dead.consumer.read(count=64, block_ms=50)) == 5
    assert r.xpending(keys.detections, Groups.WATCHLIST)["pending"] == 5
    # ... and the next matcher takes them over once they have been idle for claim_idle_ms.
    survivor = MatcherService(r, keys, MatcherOptions(default_threshold=0.7, claim_idle_ms=100), "survivor")
    survivor.reload(force=True)
    time.sleep(0.2)
    while survivor.step(block_ms=50):
        pass
    alerts = [decode(AlertMessage, f) for _, f in r.xrange(keys.alerts)]
    assert len(alerts) == 1 and r.xpending(keys.detections, Groups.WATCHLIST)["pending"] == 0
    # Publishing the same alert again (a frame handled twice) raises nothing.
    assert not raise_alert(r, keys, alerts[0], cooldown_s=0.001)
    assert AlertLog(r, keys).count() == 1


def test_deleting_a_person_stops_their_alerts(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    Watchlist(r, keys).delete("alice")
    time.sleep(0.6)  # the matcher re-reads the watchlist version every reload_period_s
    frames = [detection("cam0", i, [(walk(0, i), unit(1))]) for i in range(1, 8)]
    assert feed(r, keys, matcher, frames) == []
    assert [p.person_id for p in matcher.persons] == ["bob"]


def test_a_false_match_stops_that_look_alike_but_not_the_person(r, keys: Keys, matcher: MatcherService) -> None:  # type: ignore[no-untyped-def]
    # Someone who looks like alice (cosine 0.86 to her photo, over her threshold 0.7) pages on cam0.
    lookalike = unit(1) + 0.6 * unit(6)
    lookalike /= np.linalg.norm(lookalike)

    def walker(camera: str, who: np.ndarray) -> list[DetectionMessage]:
        return [detection(camera, i, [(walk(0, i), who)]) for i in range(1, 6)]

    (a,) = feed(r, keys, matcher, walker("cam0", lookalike))
    assert a.person_id == "alice" and np.allclose(np.frombuffer(a.embedding, "<f4"), lookalike)
    assert np.allclose(AlertLog(r, keys).embedding(a.alert_id), lookalike)
    # The operator says it was someone else: the detection becomes a rejection of alice.
    rec = acknowledge_alert(r, keys, a.alert_id, by="ops", note="her sister", false_match=True)
    assert rec.false_match and rec.acknowledged and rec.note == "her sister"
    (rej,) = Watchlist(r, keys).get("alice").rejections
    assert (rej.alert_id, rej.camera, rej.added_by) == (a.alert_id, "cam0", "ops")
    matcher.reload(force=True)
    # The look-alike on another camera now matches the rejection better than alice's photo: no alert ...
    assert len(feed(r, keys, matcher, walker("cam1", lookalike))) == 1
    # ... while alice herself still pages (cosine 1.0 to her photo, 0.86 to the rejection: beyond the margin).
    alerts = feed(r, keys, matcher, walker("cam2", unit(1)))
    assert [(x.camera, x.person_id) for x in alerts] == [("cam0", "alice"), ("cam2", "alice")]
    # Acknowledging again without the flag takes the rejection back: the look-alike pages again.
    assert not acknowledge_alert(r, keys, a.alert_id, by="ops").false_match
    assert Watchlist(r, keys).get("alice").rejections == []
    matcher.reload(force=True)
    assert [x.camera for x in feed(r, keys, matcher, walker("cam3", lookalike))][-1] == "cam3"
    # An alert without a stored embedding cannot be rejected; a deleted person's alert is simply acknowledged.
    raise_alert(r, keys, AlertMessage(alert_id="old", person_id="bob", camera="c", capture_ts=1, score=0.9,
                                      box=(0, 0, 1, 2)), cooldown_s=1)  # fmt: skip
    with pytest.raises(WatchlistError, match="no stored embedding") as e:
        acknowledge_alert(r, keys, "old", false_match=True)
    assert e.value.status == 409 and not AlertLog(r, keys).get("old").acknowledged
    Watchlist(r, keys).delete("alice")
    assert acknowledge_alert(r, keys, a.alert_id, false_match=True).false_match
    assert r.hlen(keys.watchlist_embeddings) == 1  # bob's photo


def test_alert_log_filters_acknowledges_and_trims(r, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    now = time.time()

    def alert(i: int, person: str, camera: str) -> AlertMessage:
        return AlertMessage(
            alert_id=f"a{i}", person_id=person, camera=camera, capture_ts=now - 100 + i, score=0.8,
            box=(0, 0, 10, 20), snapshot=b"x" if i % 2 else b"",
        )  # fmt: skip

    for i, (p, c) in enumerate([("alice", "c0"), ("bob", "c0"), ("alice", "c1"), ("alice", "c0")]):
        assert raise_alert(r, keys, alert(i, p, c), cooldown_s=0.01)
        time.sleep(0.02)
    log = AlertLog(r, keys)
    assert [a.alert_id for a in log.list()] == ["a3", "a2", "a1", "a0"]
    assert [a.alert_id for a in log.list(person_id="alice", camera="c0")] == ["a3", "a0"]
    assert [a.alert_id for a in log.list(since=now - 99, until=now - 98)] == ["a2", "a1"]
    assert [a.alert_id for a in log.list(limit=1, newest_first=False)] == ["a0"]
    rec = log.acknowledge("a1", by="ops", note="checked")
    assert rec.acknowledged and rec.acknowledged_by == "ops" and rec.acknowledged_at is not None
    assert [a.alert_id for a in log.list(acknowledged=False)] == ["a3", "a2", "a0"]
    assert log.get("a1").has_snapshot and not log.get("a0").has_snapshot
    with pytest.raises(KeyError):
        log.acknowledge("nope")
    assert log.trim(now - 98) == 2 and log.count() == 2


# -- threshold calibration -------------------------------------------------------------------------------------------


def test_calibration_picks_the_lowest_threshold_within_the_false_match_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from watchlist.calibrate import calibrate, plot

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)).astype(np.float32)
    labels = np.repeat(np.arange(20), 4)
    emb = centres[labels] + rng.normal(0, 0.5, (80, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    images = np.arange(80)  # every box in its own image
    cal = calibrate(emb, labels, images, target_fmr=0.01)
    sims = emb @ emb.T
    iu = np.triu_indices(80, 1)
    impostor = sims[iu][labels[iu[0]] != labels[iu[1]]]
    genuine = sims[iu][labels[iu[0]] == labels[iu[1]]]
    assert (impostor >= cal.threshold).mean() <= 0.01 < (impostor >= cal.threshold - 0.02).mean()
    assert (
        abs(cal.fmr - (impostor >= cal.threshold).mean()) < 1e-9
        and abs(cal.gar - (genuine >= cal.threshold).mean()) < 1e-9
    )
    assert cal.genuine_pairs == 20 * 6 and cal.identities == 20 and "recommended" in cal.table()
    assert plot(cal, tmp_path / "cal.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="at least two"):
        calibrate(emb[:4], np.zeros(4, int), np.arange(4))
