"""Camera ingest against real encoded video: registry, sampling, resizing, bounded streams, corrupt data, reconnects."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import redis
from PIL import Image

from ingest.cameras import CameraConfig, CameraExists, CameraRegistry, CameraState, UnknownCamera
from ingest.decoder import CameraDecoder, IngestOptions, backoff_delay, fit_size
from ingest.service import IngestService
from personsearch.streams import FrameMessage, Groups, Keys, StreamConsumer, decode
from tests.support.rtsp import RtspServer, rtsp_available, write_h264_mp4

FAST = IngestOptions(
    frame_stream_maxlen=500, open_timeout_s=2, read_timeout_s=2, backoff_initial_s=0.1, backoff_cap_s=0.4
)


def make_h264(path: Path, frames: int = 40, fps: int = 10, size: tuple[int, int] = (320, 240)) -> Path:
    """A real H.264 video of a red block moving over blue (MP4, or raw Annex B for a .h264 name)."""
    w, h = size
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"g": str(fps)}
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 2] = 80
            x = (i * 5) % (w - 40)
            img[h // 4 : 3 * h // 4, x : x + 40] = (200, 50, 50)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_h264(tmp_path_factory.mktemp("video") / "walk.mp4")


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    """A decoder running in a thread for the duration of a test."""

    def __init__(self, cfg: CameraConfig, r: redis.Redis, keys: Keys, options: IngestOptions = FAST) -> None:
        self.stop = threading.Event()
        self.decoder = CameraDecoder(cfg, r, keys, options, self.stop, seed=0)
        self.thread = threading.Thread(target=self.decoder.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def frames_of(r: redis.Redis, keys: Keys, camera: str) -> list[FrameMessage]:
    return [decode(FrameMessage, f) for _, f in r.xrange(keys.frames(camera))]


@pytest.fixture
def registry(r: redis.Redis, keys: Keys) -> Iterator[CameraRegistry]:
    yield CameraRegistry(r, keys)


def test_registry_adds_lists_updates_and_removes_cameras_with_validation(registry: CameraRegistry) -> None:
    registry.add(CameraConfig(id="gate", url="rtsp://10.0.0.5/stream1", fps=4))
    registry.add(CameraConfig(id="hall", url="/videos/hall.mp4", loop=True))
    with pytest.raises(CameraExists):
        registry.add(CameraConfig(id="gate", url="rtsp://elsewhere/x"))
    assert [c.id for c in registry.list()] == ["gate", "hall"]
    assert registry.update("gate", fps=2.5).fps == 2.5
    with pytest.raises(ValueError, match="fps"):
        registry.update("gate", fps=0)
    assert registry.status("gate").state is CameraState.STARTING
    registry.update("hall", enabled=False)
    assert registry.status("hall").state is CameraState.DISABLED
    registry.remove("gate")
    with pytest.raises(UnknownCamera):
        registry.get("gate")
    with pytest.raises(ValueError, match="unsupported camera URL scheme 'ftp'"):
        CameraConfig(id="x", url="ftp://host/v.mp4")
    with pytest.raises(ValueError, match="camera id"):
        CameraConfig(id="bad id", url="/v.mp4")
    assert CameraConfig(id="c", url="rtsp://u:secret@h/s").describe() == "rtsp://u:***@h/s"


@pytest.mark.parametrize("decode_threads", [1, 0], ids=["one-decode-thread", "ffmpeg-threads"])
def test_file_camera_is_sampled_to_its_fps_resized_and_published_as_jpeg(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, video: Path, decode_threads: int
) -> None:
    cfg = registry.add(CameraConfig(id="cam", url=f"file://{video}", fps=5, max_size=160))
    with Running(cfg, r, keys, IngestOptions(**{**FAST.__dict__, "decode_threads": decode_threads})):
        wait_for(lambda: registry.status("cam").state is CameraState.DOWN, 20, "the file to end")
    frames = frames_of(r, keys, "cam")
    # 40 frames at 10 fps = 4 s of video sampled at 5 fps: 20 frames.
    assert 19 <= len(frames) <= 21
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert all((f.width, f.height) == (160, 120) for f in frames)
    img = Image.open(io.BytesIO(frames[0].jpeg))
    assert img.format == "JPEG" and img.size == (160, 120)
    # Played at the file's pace, as a camera would deliver it: 4 s of video took about 4 s.
    span = frames[-1].capture_ts - frames[0].capture_ts
    assert 3.0 <= span <= 5.5
    status = registry.status("cam")
    assert status.frames == len(frames) and "end of file" in status.last_error


def test_looping_file_keeps_the_camera_live(r: redis.Redis, keys: Keys, registry: CameraRegistry, video: Path) -> None:
    cfg = registry.add(CameraConfig(id="loop", url=str(video), fps=10, loop=True))
    with Running(cfg, r, keys):
        wait_for(lambda: r.xlen(keys.frames("loop")) > 50, 20, "more frames than the file holds")
        status = registry.status("loop")
        assert status.state is CameraState.LIVE and status.reconnects == 0
        assert 6.0 <= status.fps <= 14.0


def test_unreachable_camera_is_shown_reconnecting_then_down_and_keeps_retrying(
    r: redis.Redis, keys: Keys, registry: CameraRegistry
) -> None:
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = registry.add(CameraConfig(id="gone", url=f"rtsp://127.0.0.1:{port}/live"))
    with Running(cfg, r, keys):
        wait_for(lambda: registry.status("gone").state is CameraState.RECONNECTING, 10, "reconnecting")
        wait_for(lambda: registry.status("gone").state is CameraState.DOWN, 10, "down")
        wait_for(lambda: registry.status("gone").reconnects >= 5, 10, "more retries while down")
    status = registry.status("gone")
    assert "refused" in status.last_error.lower() or "error" in status.last_error.lower()


def test_corrupt_frames_are_skipped_and_counted_while_good_ones_flow(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, tmp_path: Path
) -> None:
    raw = make_h264(tmp_path / "cam.h264", frames=50)
    data = bytearray(raw.read_bytes())
    rng = np.random.default_rng(0)
    for off in range(2000, len(data) - 100, len(data) // 8):
        data[off : off + 60] = rng.integers(0, 256, 60, dtype=np.uint8).tobytes()
    raw.write_bytes(bytes(data))
    cfg = registry.add(CameraConfig(id="noisy", url=str(raw), fps=25))
    with Running(cfg, r, keys):
        wait_for(lambda: registry.status("noisy").state is CameraState.DOWN, 20, "the file to end")
    status = registry.status("noisy")
    assert status.corrupt > 0
    assert status.frames == len(frames_of(r, keys, "noisy")) >= 50 - status.corrupt - 2


def test_a_slow_detector_makes_the_stream_drop_oldest_frames_counted_not_grow(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, video: Path
) -> None:
    StreamConsumer(r, Groups.DETECTOR, [keys.frames("busy")], "slow").ensure_groups()  # a detector that never reads
    cfg = registry.add(CameraConfig(id="busy", url=str(video), fps=10))
    opts = IngestOptions(**{**FAST.__dict__, "frame_stream_maxlen": 8})
    with Running(cfg, r, keys, opts):
        wait_for(lambda: registry.status("busy").state is CameraState.DOWN, 20, "the file to end")
    status = registry.status("busy")
    assert r.xlen(keys.frames("busy")) == 8
    assert status.dropped == status.frames - 8 > 20


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 8.0, rng) for a in range(1, 9)]
    windows = [min(8.0, 0.5 * 2 ** (a - 1)) for a in range(1, 9)]
    assert all(w / 2 <= d <= w for d, w in zip(delays, windows))
    assert max(delays) <= 8.0 and len(set(delays)) == len(delays)
    assert fit_size(1920, 1080, 640) == (640, 360) and fit_size(320, 240, 640) == (320, 240)


def test_service_follows_the_registry_starting_and_stopping_decoders(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, video: Path
) -> None:
    service = IngestService(r, keys, FAST, poll_s=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        registry.add(CameraConfig(id="a", url=str(video), fps=5, loop=True))
        registry.add(CameraConfig(id="b", url=str(video), fps=5, loop=True, enabled=False))
        wait_for(lambda: registry.status("a").state is CameraState.LIVE, 10, "camera a live")
        assert set(service.running) == {"a"} and registry.status("b").state is CameraState.DISABLED
        registry.update("b", enabled=True)
        wait_for(lambda: registry.status("b").state is CameraState.LIVE, 10, "camera b live")
        registry.remove("a")
        wait_for(lambda: set(service.running) == {"b"}, 10, "camera a stopped")
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive() and service.running == {}


# -- over a real RTSP server (GStreamer's, from Debian's packages) --------------------------------------------------

rtsp = pytest.mark.skipif(rtsp_available() is not None, reason=str(rtsp_available()))


@rtsp
def test_rtsp_camera_goes_live_survives_a_server_restart_and_counts_the_reconnect(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, tmp_path: Path
) -> None:
    clip = write_h264_mp4(tmp_path / "clip.mp4", seconds=3.0, size=(320, 240), fps=15)
    with RtspServer({"cam": clip}) as server:
        cfg = registry.add(CameraConfig(id="street", url=server.url("cam"), fps=5, max_size=160))
        with Running(cfg, r, keys):
            wait_for(lambda: registry.status("street").state is CameraState.LIVE, 20, "live over RTSP")
            wait_for(lambda: r.xlen(keys.frames("street")) >= 10, 20, "frames over RTSP")
            frame = frames_of(r, keys, "street")[-1]
            assert (frame.width, frame.height) == (160, 120)
            assert 3.0 <= registry.status("street").fps <= 7.0  # sampled to 5 fps from 15
            server.stop()
            wait_for(lambda: registry.status("street").state is not CameraState.LIVE, 20, "the loss to be noticed")
            before = r.xlen(keys.frames("street"))
            server.restart()
            wait_for(lambda: registry.status("street").state is CameraState.LIVE, 30, "live again after restart")
            wait_for(lambda: r.xlen(keys.frames("street")) > before + 5, 20, "frames after the restart")
    status = registry.status("street")
    assert status.reconnects >= 1


@rtsp
def test_a_hung_rtsp_server_is_detected_by_the_read_timeout(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, tmp_path: Path
) -> None:
    clip = write_h264_mp4(tmp_path / "clip.mp4", seconds=3.0, size=(320, 240), fps=15)
    with RtspServer({"cam": clip}) as server:
        cfg = registry.add(CameraConfig(id="hung", url=server.url("cam"), fps=5))
        with Running(cfg, r, keys):
            wait_for(lambda: registry.status("hung").state is CameraState.LIVE, 20, "live over RTSP")
            server.pause()  # the process is frozen: the TCP connection stays open, no data comes
            try:
                wait_for(lambda: registry.status("hung").state is not CameraState.LIVE, 30, "the time-out")
            finally:
                server.resume()
            wait_for(lambda: registry.status("hung").state is CameraState.LIVE, 30, "live again")


def test_http_camera_is_decoded_and_an_ended_stream_is_retried(
    r: redis.Redis, keys: Keys, registry: CameraRegistry, video: Path
) -> None:
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{video.name}"
        cfg = registry.add(CameraConfig(id="web", url=url, fps=30))
        with Running(cfg, r, keys):
            wait_for(lambda: r.xlen(keys.frames("web")) > 0, 20, "frames over HTTP")
            # An HTTP stream that ends is a lost live stream: shown and retried, not a finished file.
            wait_for(lambda: registry.status("web").reconnects >= 1, 20, "a retry after the end")
    finally:
        server.shutdown()
