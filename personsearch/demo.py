"""`personsearch demo`: the product's main job on embedded defaults, scored against ground truth.

It renders synthetic cameras (people walking, with per-frame ground truth; one of them is put on the watchlist from
a generated photo that is no frame of the videos, the others, look-alikes included, are distractors), starts a
private Redis and every worker of `personsearch up` plus the HTTP API, registers the cameras (files played at their
own pace), prints alerts live as they arrive, and ends after the videos (or ``--duration``, or Ctrl-C) with a
summary measured against the ground truth: true and false alerts, appearances missed, capture-to-alert latency,
frames per second per camera and how many of each camera's frames the detector analysed (an overloaded detector
drops frames to stay live; below 90% analysed, the summary warns that the figures reflect the machine's load).
Unless ``--fps`` says otherwise, the demo times the engine on a few frames first and samples each camera at the rate
the detector keeps up with on this machine (``auto_sampling_fps``), so that it analyses every frame it is sent.

An *appearance* is one walk of the watchlist person through one camera. It counts as alertable when the person is
visible enough, long enough, for the matcher to reach its consensus: at least ``consensus_frames + 2`` sampled
frames with at least ``MIN_VISIBLE`` of the body showing and a box of at least ``MIN_HEIGHT_PX`` pixels. An alert is
true when it names the person of an appearance on that camera, at a time inside it, with a box on that person.
Appearances that start within the cooldown of a true alert on the same camera are not expected to alert again.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MIN_VISIBLE = 0.6
MIN_HEIGHT_PX = 48
MAX_AUTO_FPS = 5.0  # the sampling rate per camera when the detector is fast enough for it
MIN_AUTO_FPS = 1.0  # below this, too few frames of a walk past the camera for the matcher's consensus
# Share of the engine's measured rate the cameras may ask for together: the pipeline's workers, the API, Redis and
# the demo itself need the rest of the CPU, and the engine's speed varies by a fifth between measurements (on 2
# cores, asked for 4 frames/s, the detector analysed 76% of them).
AUTO_FPS_HEADROOM = 0.6
DEMO_WORKERS = ["ingest", "detector", "tracker", "indexer", "matcher", "delivery", "api"]


@dataclass
class DemoOptions:
    out: Path = Path("data/demo")
    seed: int = 0
    cameras: int = 2
    seconds: float = 40.0  # length of each camera's video
    width: int = 640
    height: int = 480
    fps: float | None = None  # frames per second sampled from each camera; None: what the detector keeps up with
    duration_s: float | None = None  # stop after this long even if the videos go on
    json_path: Path | None = None
    config: Path | None = None  # a settings YAML (engine, thresholds, ...); the demo sets its own data_dir and Redis
    api_port: int = 8080
    quiet: bool = False
    video: dict[str, Any] = field(default_factory=dict)  # CameraVideoConfig overrides for the generated cameras
    on_start: Callable[[dict[str, Any]], None] | None = None  # called with {"api", "api_key", "redis_url"} once live


@dataclass
class Appearance:
    camera: str
    identity: str
    track: int
    start: float  # media seconds
    end: float
    alertable: bool
    alert_ids: list[str] = field(default_factory=list)
    suppressed: bool = False  # began within the cooldown of an earlier true alert on this camera


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def appearances(truth: Any, identities: set[str], sample_fps: float, consensus_frames: int) -> list[Appearance]:
    """Every walk of a watched identity through this camera (a CameraGroundTruth), with whether it is alertable."""
    out = []
    step = max(1, round(truth.fps / sample_fps))
    for t in truth.tracks:
        if t.identity not in identities or t.first_frame is None or t.last_frame is None:
            continue
        good = 0
        for f in truth.frames[t.first_frame : t.last_frame + 1 : step]:
            p = next((q for q in f.people if q.track == t.track), None)
            if p is not None and p.visible >= MIN_VISIBLE and p.box[3] - p.box[1] >= MIN_HEIGHT_PX:
                good += 1
        out.append(
            Appearance(
                truth.camera, t.identity, t.track, t.first_frame / truth.fps, t.last_frame / truth.fps,
                alertable=good >= consensus_frames + 2,
            )
        )  # fmt: skip
    return out


def score_alerts(
    alerts: list[Any], truths: dict[str, Any], watch: dict[str, str], sample_fps: float, consensus: int, cooldown: float
) -> dict[str, Any]:
    """Alerts (AlertRecord-like: person_id, camera, media_ts, box, capture_ts, alerted_ts) against the ground truth.

    ``watch`` maps watchlist person ids to the identities of the synthetic world.
    """
    apps = [a for cam, truth in truths.items() for a in appearances(truth, set(watch.values()), sample_fps, consensus)]
    true_ids, false_alerts = set(), []
    false_detail: list[dict[str, Any]] = []
    for al in sorted(alerts, key=lambda a: a.capture_ts):
        identity = watch.get(al.person_id)
        truth = truths.get(al.camera)
        hit = None
        if identity is not None and truth is not None and al.media_ts is not None:
            idx = min(len(truth.frames) - 1, max(0, round(al.media_ts * truth.fps)))
            for app in apps:
                if app.camera != al.camera or app.identity != identity:
                    continue
                if not app.start - 0.5 <= al.media_ts <= app.end + 0.5:
                    continue
                person = next((q for q in truth.frames[idx].people if q.track == app.track), None)
                if person is not None and _iou(tuple(al.box), tuple(person.box)) >= 0.3:
                    hit = app
                    break
        if hit is None:
            false_alerts.append(al.alert_id)
            false_detail.append(_who(al, truth))
        else:
            hit.alert_ids.append(al.alert_id)
            true_ids.add(al.alert_id)
    # An appearance that began within the cooldown of a true alert of the same person on the same camera is not
    # expected to alert (that is what the cooldown is for).
    for app in sorted(apps, key=lambda a: a.start):
        if app.alert_ids:
            continue
        earlier = [
            b for b in apps
            if b is not app and b.camera == app.camera and b.identity == app.identity and b.alert_ids
            and b.start <= app.start <= b.start + cooldown + (b.end - b.start)
        ]  # fmt: skip
        app.suppressed = bool(earlier)
    alertable = [a for a in apps if a.alertable and not a.suppressed]
    latencies = [1000.0 * (al.alerted_ts - al.capture_ts) for al in alerts if al.alert_id in true_ids]
    return {
        "appearances": len(apps),
        "alertable_appearances": len(alertable),
        "true_alerts": len(true_ids),
        "false_alerts": len(false_alerts),
        "missed": sum(1 for a in alertable if not a.alert_ids),
        "duplicate_alerts": sum(max(0, len(a.alert_ids) - 1) for a in apps),
        "alerted_not_alertable": sum(1 for a in apps if a.alert_ids and not a.alertable),
        "latency_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "latency_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "false_alert_ids": false_alerts,
        "false_alert_detail": false_detail,
        "appearance_detail": [
            {**asdict(a), "start": round(a.start, 2), "end": round(a.end, 2)}
            for a in sorted(apps, key=lambda a: a.start)
        ],
    }


def _who(al: Any, truth: Any) -> dict[str, Any]:
    """Who a (false) alert's box was really on, from the ground truth."""
    out: dict[str, Any] = {"alert_id": al.alert_id, "camera": al.camera, "media_ts": al.media_ts, "on": "no person"}
    if truth is None or al.media_ts is None:
        return out
    frame = truth.frames[min(len(truth.frames) - 1, max(0, round(al.media_ts * truth.fps)))]
    best = max(frame.people, key=lambda q: _iou(tuple(al.box), tuple(q.box)), default=None)
    if best is not None and _iou(tuple(al.box), tuple(best.box)) >= 0.3:
        track = next((t for t in truth.tracks if t.track == best.track), None)
        if best.identity is not None:
            out["on"] = best.identity
        elif track is not None and track.lookalike_of:
            out["on"] = f"a look-alike of {track.lookalike_of}"
        else:
            out["on"] = "a passer-by"
    return out


def run_demo(opt: DemoOptions) -> dict[str, Any]:
    """Run the demo end to end; returns the summary (also written to ``opt.json_path``)."""
    from ingest.cameras import CameraConfig, CameraRegistry, CameraState
    from personsearch.auth import ApiKeyStore
    from personsearch.runtime import Supervisor, connect, match_threshold
    from personsearch.settings import load_settings
    from personsearch.streams import AlertMessage, Groups, Keys, decode
    from training.synth.video import CameraVideoConfig, load_ground_truth, render_camera_set
    from watchlist.alerts import AlertLog
    from watchlist.store import PhotoInput, Watchlist

    out = Path(opt.out)
    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)  # every demo run starts from an empty Redis and index
    variant = "".join(f"-{k}{v}" for k, v in sorted(opt.video.items()))
    cams_dir = out / f"cameras-s{opt.seed}-c{opt.cameras}-{opt.seconds:g}s-{opt.width}x{opt.height}{variant}"
    if not (cams_dir / "cameras.json").is_file():
        _say(opt, f"rendering {opt.cameras} synthetic cameras ({opt.seconds:g} s each) into {cams_dir} ...")
        config = CameraVideoConfig(**{"width": opt.width, "height": opt.height, "fps": 10, "seconds": opt.seconds,
                                      **opt.video})  # fmt: skip
        render_camera_set(cams_dir, opt.seed, cameras=opt.cameras, watch_identities=2, config=config, progress=True)
    meta = json.loads((cams_dir / "cameras.json").read_text())
    watched = meta["identities"][0]  # on the watchlist; the other named identity and the look-alikes are distractors
    truths = {c["camera"]: load_ground_truth(cams_dir / Path(c["ground_truth"]).name) for c in meta["cameras"]}

    settings = load_settings(
        opt.config,
        data_dir=state,
        metrics_port=None,
        api={"port": opt.api_port},
        ingest={"frame_stream_maxlen": 1000},  # the detector worker's start-up must not drop the first frames
        # ... but on a CPU too slow for both cameras, frames are skipped rather than alerted on minutes late.
        detector={"max_frame_age_s": 5.0},
    )
    sup = Supervisor(settings, workers=DEMO_WORKERS)
    url = sup.start_redis()
    r = connect(url)
    keys = Keys(settings.key_prefix)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.time()
    try:
        _, api_key = ApiKeyStore(r, keys).create("demo")
        _say(opt, "loading the model (the first run exports it to ONNX) ...")
        engine = settings.engine.load()
        photo = Path(cams_dir / "photos" / f"{watched['name']}.jpg")
        person = Watchlist(r, keys).add(
            engine, "person-1", [PhotoInput(photo.read_bytes(), watched.get("photo_box"))], name=watched["name"]
        )
        _say(opt, f"watchlist: {person.person_id} ({person.name}) from {photo} (a photo, not a video frame)")
        fps = opt.fps
        if fps is None:
            engine_fps = measure_engine_fps(engine, cams_dir / Path(meta["cameras"][0]["video"]).name)
            fps = auto_sampling_fps(engine_fps, len(meta["cameras"]))
            _say(
                opt,
                f"sampling {fps:g} frames/s per camera: the detector runs {engine_fps:.1f} frames/s on this machine "
                f"(at most {MAX_AUTO_FPS:g}; --fps sets it)",
            )
        del engine
        sup.start_workers()
        _wait_for_workers(r, keys, sup, stop, timeout_s=180)
        _wait_for_api(f"http://{settings.api.host}:{settings.api.port}/health", stop, timeout_s=60)
        registry = CameraRegistry(r, keys)
        for c in meta["cameras"]:
            registry.add(CameraConfig(id=c["camera"], url=f"file://{(cams_dir / Path(c['video']).name).resolve()}",
                                      fps=fps, loop=False))  # fmt: skip
        t0 = time.time()
        api = f"http://{settings.api.host}:{settings.api.port}"
        _say(opt, f"API: {api}/docs  (X-API-Key: {api_key})")
        _say(opt, f"cameras: {', '.join(truths)} playing; alerts appear below as they arrive\n")
        if opt.on_start is not None:
            opt.on_start({"api": api, "api_key": api_key, "redis_url": url})
        last_id = "0-0"
        deadline = t0 + (opt.duration_s if opt.duration_s is not None else opt.seconds + 120)
        ended_at: float | None = None
        fps_seen: dict[str, list[float]] = {c: [] for c in truths}
        while not stop.is_set() and time.time() < deadline:
            sup.check()
            res: Any = r.xread({keys.alerts: last_id}, count=50, block=500)
            for _, entries in res or []:
                for entry_id, fields in entries:
                    last_id = entry_id.decode()
                    a = decode(AlertMessage, fields)
                    _say(
                        opt,
                        f"{time.strftime('%H:%M:%S')}  ALERT  {a.person_id} ({a.person_name}) on {a.camera}  "
                        f"score {a.score:.2f} over {a.frames} frames  capture-to-alert "
                        f"{1000 * (a.alerted_ts - a.capture_ts):.0f} ms  snapshot {api}/alerts/{a.alert_id}/snapshot",
                    )
            statuses = {c: registry.status(c) for c in truths}
            for c, st in statuses.items():
                if st.state is CameraState.LIVE and st.fps > 0:
                    fps_seen[c].append(st.fps)
            if opt.duration_s is None and all(st.state is CameraState.DOWN for st in statuses.values()):
                ended_at = ended_at or time.time()
                if _drained(r, keys, list(truths), Groups) or time.time() - ended_at > 60:
                    time.sleep(1.0)
                    break
        elapsed = time.time() - t0
        alerts = AlertLog(r, keys).list(limit=100_000, newest_first=False)
        summary = score_alerts(
            alerts, truths, {person.person_id: watched["name"]}, fps, settings.watchlist.consensus_frames,
            settings.watchlist.cooldown_s,
        )  # fmt: skip
        frames = {c: registry.status(c).frames for c in truths}
        detected = _frames_detected(r, keys, list(truths))
        summary = {
            **{k: v for k, v in summary.items() if k != "appearance_detail"},
            "fps_per_camera": {c: round(float(np.median(v)), 2) if v else 0.0 for c, v in fps_seen.items()},
            "frames_per_camera": frames,
            "frames_detected_per_camera": detected,
            "sampling_fps": fps,
            "cameras": len(truths),
            "video_seconds": opt.seconds,
            "run_seconds": round(elapsed, 1),
            "setup_seconds": round(t0 - started, 1),
            "engine": settings.engine.kind,
            "threshold": match_threshold(settings),
            "consensus": f"{settings.watchlist.consensus_frames} of {settings.watchlist.window_frames} frames",
            "appearance_detail": summary["appearance_detail"],
        }
        _print_summary(opt, summary)
        if opt.json_path is not None:
            Path(opt.json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(opt.json_path).write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        r.close()
        sup.stop()


def measure_engine_fps(engine: Any, video: Path, frames: int = 6) -> float:
    """Frames per second the engine detects on this machine, one frame at a time, on frames of ``video`` (after one
    warm-up frame)."""
    import av

    images = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            images.append(frame.to_ndarray(format="rgb24"))
            if len(images) > frames:
                break
    engine.detect(images[:1])
    start = time.perf_counter()
    for image in images[1:]:
        engine.detect([image])
    return (len(images) - 1) / (time.perf_counter() - start)


def auto_sampling_fps(engine_fps: float, cameras: int) -> float:
    """The frames per second to sample from each camera so that the detector keeps up with all of them, with
    headroom for the rest of the pipeline: at most MAX_AUTO_FPS, at least MIN_AUTO_FPS, rounded down to 0.1."""
    share = AUTO_FPS_HEADROOM * engine_fps / max(1, cameras)
    return float(max(MIN_AUTO_FPS, min(MAX_AUTO_FPS, np.floor(share * 10 + 1e-6) / 10)))


def _wait_for_workers(r: Any, keys: Any, sup: Any, stop: threading.Event, timeout_s: float) -> None:
    """Until every worker process has registered (the detector registers after its engine loaded)."""
    deadline = time.time() + timeout_s
    want = {c.name.split(".")[0] for c in sup.children}
    while not stop.is_set() and time.time() < deadline:
        sup.check()
        up = {k.decode().split(":")[0] for k in r.hkeys(keys.workers)}
        if want <= up:
            return
        time.sleep(0.3)
    if not stop.is_set():
        raise RuntimeError(f"workers not up after {timeout_s:.0f} s: {sorted(want - up)}")


def _wait_for_api(url: str, stop: threading.Event, timeout_s: float) -> None:
    """Until the API answers (its worker registers before uvicorn has bound the port)."""
    import urllib.request

    deadline = time.time() + timeout_s
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"the API did not answer at {url} within {timeout_s:.0f} s") from None
            time.sleep(0.2)


def _frames_detected(r: Any, keys: Any, cameras: list[str]) -> dict[str, int]:
    """Frames the detector analysed per camera: one detections message each. The rest were dropped (trimmed from a
    full frame stream or skipped as stale) because the detector could not keep up with the cameras."""
    from personsearch.streams import DetectionMessage, decode

    counts = dict.fromkeys(cameras, 0)
    start = "-"
    while True:
        entries: Any = r.xrange(keys.detections, min=start, max="+", count=500)
        for _, fields in entries:
            camera = decode(DetectionMessage, fields).camera
            if camera in counts:
                counts[camera] += 1
        if len(entries) < 500:
            return counts
        start = "(" + entries[-1][0].decode()


def _drained(r: Any, keys: Any, cameras: list[str], groups: Any) -> bool:
    """Every frame detected and every detection matched."""
    for c in cameras:
        info = r.xinfo_groups(keys.frames(c))
        if any(g["pending"] or g.get("lag") for g in info):
            return False
    for g in r.xinfo_groups(keys.detections):
        if g["name"].decode() == groups.WATCHLIST and (g["pending"] or g.get("lag")):
            return False
    return True


def _say(opt: DemoOptions, line: str) -> None:
    if not opt.quiet:
        print(line, flush=True)


def _print_summary(opt: DemoOptions, s: dict[str, Any]) -> None:
    lat = (
        f"{s['latency_p50_ms']:.0f} / {s['latency_p95_ms']:.0f} ms"
        if s["latency_p50_ms"] is not None
        else "n/a (no true alert)"
    )
    fps = ", ".join(f"{c} {v:.1f}" for c, v in s["fps_per_camera"].items())
    read, done = s["frames_per_camera"], s["frames_detected_per_camera"]
    analysed = ", ".join(f"{c} {done[c]} of {n}" for c, n in read.items())
    share = sum(done.values()) / max(1, sum(read.values()))
    warning = (
        [
            f"  WARNING: the detector analysed only {share:.0%} of the frames (the rest were dropped because it could",
            "  not keep up on this machine): misses and alerts above reflect the machine's load, not only the model",
        ]
        if share < 0.9
        else []
    )
    _say(
        opt,
        "\n".join(
            [
                "",
                "demo summary (against the ground truth)",
                f"  appearances of the watchlist person   {s['appearances']} ({s['alertable_appearances']} alertable)",
                f"  true alerts                           {s['true_alerts']}",
                f"  false alerts                          {s['false_alerts']}",
                *[
                    f"      {d['alert_id']} on {d['camera']} at {d['media_ts']:.1f} s: {d['on']}"
                    for d in s.get("false_alert_detail", [])
                    if d.get("media_ts") is not None
                ],
                f"  appearances missed                    {s['missed']}",
                f"  duplicate alerts                      {s['duplicate_alerts']}",
                f"  capture-to-alert latency p50 / p95    {lat}",
                f"  frames/s per camera (sampling {s['sampling_fps']:g})  {fps}",
                f"  frames analysed by the detector       {analysed}",
                *warning,
            ]
        ),
    )


__all__ = ["DemoOptions", "appearances", "auto_sampling_fps", "measure_engine_fps", "run_demo", "score_alerts"]
