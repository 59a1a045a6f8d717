"""The demo's summary: alerts scored against the synthetic cameras' ground truth."""

from __future__ import annotations

from types import SimpleNamespace

from personsearch.demo import appearances, score_alerts
from training.synth.video import CameraGroundTruth, FrameTruth, PersonTruth, TrackTruth

FPS = 10


def truth() -> CameraGroundTruth:
    """10 s of cam0: p1 walks through twice (frames 10-40 and 45-80), once for 3 frames (60-62 is a brief glimpse
    of a third walk); p2 is there all along."""
    walks = {1: ("p1", 10, 40), 2: ("p1", 92, 94), 3: ("p2", 0, 99), 4: ("p1", 45, 80)}
    frames = []
    for i in range(100):
        people = [
            PersonTruth(track=t, identity=who, box=(100 * t + i, 100, 100 * t + i + 50, 250), visible=1.0)
            for t, (who, a, b) in walks.items()
            if a <= i <= b
        ]
        frames.append(FrameTruth(index=i, time=i / FPS, people=people))
    tracks = [
        TrackTruth(track=t, identity=w, lookalike_of=None, first_frame=a, last_frame=b)
        for t, (w, a, b) in walks.items()
    ]
    return CameraGroundTruth(
        camera="cam0", video="cam0.mp4", background="bg.png", width=640, height=480, fps=FPS, num_frames=100,
        tracks=tracks, frames=frames,
    )  # fmt: skip


def alert(alert_id: str, person: str, media_ts: float, track: int, latency: float = 0.5) -> SimpleNamespace:
    i = round(media_ts * FPS)
    return SimpleNamespace(
        alert_id=alert_id, person_id=person, camera="cam0", media_ts=media_ts, capture_ts=1000.0 + media_ts,
        alerted_ts=1000.0 + media_ts + latency, box=(100 * track + i, 100, 100 * track + i + 50, 250),
    )  # fmt: skip


def test_appearances_are_alertable_only_when_long_and_visible_enough() -> None:
    apps = appearances(truth(), {"p1"}, sample_fps=5, consensus_frames=3)
    assert [(a.track, a.alertable) for a in apps] == [(1, True), (2, False), (4, True)]
    assert apps[0].start == 1.0 and apps[0].end == 4.0


def test_true_false_missed_and_latency() -> None:
    alerts = [
        alert("a1", "person-1", 2.0, track=1, latency=0.4),  # p1 during walk 1, on p1: true
        alert("a2", "person-1", 9.0, track=3),  # p1 named while only p2 ... is in the box: false
        alert("a3", "person-1", 3.0, track=3),  # during walk 1 but the box is on p2: false
    ]
    s = score_alerts(alerts, {"cam0": truth()}, {"person-1": "p1"}, sample_fps=5, consensus=3, cooldown=60)
    assert (s["true_alerts"], s["false_alerts"], s["missed"]) == (1, 2, 0)
    # Walk 4 began within the cooldown of walk 1's alert: not expected to alert, so not missed.
    assert s["appearances"] == 3 and s["alertable_appearances"] == 1
    assert round(s["latency_p50_ms"]) == round(s["latency_p95_ms"]) == 400
    assert s["false_alert_ids"] == ["a3", "a2"]  # in capture order


def test_a_walk_outside_any_cooldown_without_an_alert_is_missed() -> None:
    s = score_alerts([], {"cam0": truth()}, {"person-1": "p1"}, sample_fps=5, consensus=3, cooldown=1)
    assert (s["true_alerts"], s["false_alerts"], s["missed"], s["alertable_appearances"]) == (0, 0, 2, 2)
    assert s["latency_p50_ms"] is None
    both = [
        alert("a1", "person-1", 2.0, track=1),
        alert("a4", "person-1", 6.0, track=4),
        alert("a5", "person-1", 6.5, track=4),
    ]
    s = score_alerts(both, {"cam0": truth()}, {"person-1": "p1"}, sample_fps=5, consensus=3, cooldown=1)
    assert (s["true_alerts"], s["missed"], s["duplicate_alerts"]) == (3, 0, 1)
