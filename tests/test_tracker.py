"""Tracklet linking: box overlap and appearance, best-frame summaries, open/update/close events, the tracker worker."""

from __future__ import annotations

import time

import numpy as np
import redis

from index.service import TrackerService
from index.tracker import TrackerOptions, TrackletLinker, box_iou
from personsearch.streams import DetectionMessage, Keys, TrackletEvent, decode, publish

D = 16


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


def frame(
    seq: int, people: list[tuple[tuple[float, float, float, float], np.ndarray, float]], camera: str = "c"
) -> DetectionMessage:
    return DetectionMessage(
        camera=camera,
        seq=seq,
        capture_ts=100.0 + seq * 0.2,
        detected_ts=0.0,
        width=640,
        height=480,
        model="m",
        boxes=[p[0] for p in people],
        scores=[p[2] for p in people],
        embeddings=np.stack([p[1] for p in people]) if people else np.zeros((0, D), np.float32),
        crops=[b"crop%d" % seq for _ in people],
    )


def walk(x0: float, step: float, seq: int) -> tuple[float, float, float, float]:
    x = x0 + step * seq
    return (x, 100.0, x + 40.0, 220.0)


def test_box_iou_matches_hand_computed_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0]], atol=1e-6)


def test_two_people_walking_past_each_other_keep_their_own_tracklets() -> None:
    alice, bob = unit(1), unit(2)
    linker = TrackletLinker("c", TrackerOptions(update_every=100))
    ids: dict[str, set[str]] = {"alice": set(), "bob": set()}
    for seq in range(12):
        # They cross mid-way: boxes overlap heavily around seq 6, appearance tells them apart.
        noise = np.random.default_rng(seq).standard_normal(D).astype(np.float32) * 0.05
        people = [(walk(100, 20, seq), alice + noise, 0.9), (walk(340, -20, seq), bob - noise, 0.8)]
        for ev in linker.update(frame(seq, people)):
            assert ev.event == "open"
        for t in linker.open.values():
            name = "alice" if float(t.embedding @ alice) > float(t.embedding @ bob) else "bob"
            ids[name].add(t.tracklet_id)
    assert len(ids["alice"]) == 1 and len(ids["bob"]) == 1 and len(linker.open) == 2
    assert all(t.frames == 12 for t in linker.open.values())


def test_a_person_is_closed_after_the_gap_and_a_returning_one_opens_a_new_tracklet() -> None:
    p = unit(3)
    linker = TrackletLinker("c", TrackerOptions(max_gap_s=1.0, update_every=3))
    events: list[TrackletEvent] = []
    for seq in range(6):
        events += linker.update(frame(seq, [(walk(0, 5, seq), p, 0.9)]))
    for seq in range(6, 12):  # empty frames: 1.2 s pass
        events += linker.update(frame(seq, []))
    events += linker.update(frame(12, [(walk(0, 5, 12), p, 0.9)]))
    kinds = [(e.event, e.frames) for e in events]
    assert kinds == [("open", 1), ("update", 3), ("update", 6), ("close", 6), ("open", 1)]
    assert events[0].tracklet_id != events[-1].tracklet_id


def test_the_summary_embedding_comes_from_the_best_scored_frames() -> None:
    good, blurred = unit(4), unit(5)
    linker = TrackletLinker("c", TrackerOptions(keep_best=3, min_similarity=-1.0))
    for seq in range(10):
        sharp = seq in (2, 5, 7)
        linker.update(frame(seq, [(walk(0, 2, seq), good if sharp else blurred, 0.95 if sharp else 0.55)]))
    (track,) = linker.open.values()
    assert float(track.embedding @ good) > 0.999
    assert track.best_score == 0.95 and track.best_seq == 2 and track.best_crop == b"crop2"


def test_tracker_worker_turns_detection_messages_into_events_once(r: redis.Redis, keys: Keys) -> None:
    p = unit(6)
    for seq in range(10):
        publish(r, keys.detections, frame(seq, [(walk(0, 5, seq), p, 0.9)], camera="gate"))
    tracker = TrackerService(r, keys, TrackerOptions(update_every=5), consumer_name="t1")
    while tracker.step(block_ms=50):
        pass
    events = [decode(TrackletEvent, f) for _, f in r.xrange(keys.tracklets)]
    assert [(e.event, e.frames) for e in events] == [("open", 1), ("update", 5), ("update", 10)]
    assert events[0].camera == "gate" and events[0].model == "m" and len(events[0].embedding) == D
    # A second worker re-handling the same messages (e.g. after a crash before the acks) publishes nothing new.
    again = TrackerService(r, Keys(keys.prefix), TrackerOptions(update_every=5), consumer_name="t2")
    r.xgroup_setid(keys.detections, "indexer", "0")
    while again.step(block_ms=50):
        pass
    assert r.xlen(keys.tracklets) == 3
    # Once the camera has been quiet for max_gap_s, its open tracklet closes.
    tracker.expire(time.monotonic() + 10)
    assert decode(TrackletEvent, r.xrange(keys.tracklets)[-1][1]).event == "close"
