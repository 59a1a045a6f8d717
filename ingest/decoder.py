"""One camera's decoder: PyAV in, sampled + resized + JPEG-encoded frames out to the camera's bounded frame stream.

Losing the stream is normal. The decoder reconnects with exponential back-off and full jitter up to a cap, shows the
camera as ``reconnecting`` and, after a few failed attempts in a row, as ``down`` (still retrying), with the last
error. Corrupt packets and frames are skipped and counted. Files are played at their own pace (so a file behaves
like a camera) and can loop.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import av
import av.error
import numpy as np
import redis
from PIL import Image
from prometheus_client import Counter, Gauge

from ingest.cameras import CameraConfig, CameraRegistry, CameraState
from personsearch.streams import FrameMessage, FramePublisher, Keys

logger = logging.getLogger(__name__)

FRAMES = Counter("personsearch_ingest_frames_total", "Frames published to the frame stream", ["camera"])
DROPPED = Counter("personsearch_ingest_dropped_frames_total", "Unread frames dropped by the bounded stream", ["camera"])
CORRUPT = Counter("personsearch_ingest_corrupt_total", "Corrupt packets or frames skipped", ["camera"])
RECONNECTS = Counter("personsearch_ingest_reconnects_total", "Reconnect attempts", ["camera"])
FPS = Gauge("personsearch_ingest_fps", "Measured published frames per second", ["camera"])
FPS_WINDOW_S = 5.0  # measured fps is taken over this many seconds of publishing

STATE = Gauge("personsearch_camera_state", "1 for the camera's current state, 0 for the others", ["camera", "state"])


@dataclass(frozen=True)
class IngestOptions:
    """How decoders behave; one set for every camera of an ingest service."""

    frame_stream_maxlen: int = 50  # frames kept per camera; older unread ones are dropped (and counted)
    jpeg_quality: int = 85
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_cap_s: float = 30.0
    down_after: int = 3  # consecutive failed attempts before the camera is shown as down
    # FFmpeg decoding threads per camera. 1 is the cheapest per frame (frame threading cost 1.9x the CPU per
    # 640x480 H.264 frame here, docs/benchmarks.md) and cameras already decode in parallel; 0 lets FFmpeg choose
    # (frame + slice threads, one per core) for a source too large for one core to decode in real time.
    decode_threads: int = 1
    status_period_s: float = 1.0


def backoff_delay(attempt: int, initial_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): full jitter over an exponentially growing window."""
    window = min(cap_s, initial_s * 2 ** (attempt - 1))
    return rng.uniform(window / 2, window)


class StreamEnded(Exception):
    """The source stopped delivering (end of a non-looping file or a live stream that closed)."""


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_size``, even numbers, aspect kept."""
    scale = min(1.0, max_size / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class CameraDecoder:
    """Decodes one camera until ``stop`` is set, reconnecting as needed; run it in its own thread."""

    def __init__(
        self,
        cfg: CameraConfig,
        r: redis.Redis,
        keys: Keys,
        options: IngestOptions,
        stop: threading.Event,
        seed: int | None = None,
    ) -> None:
        self.cfg, self.r, self.keys, self.opt, self.stop = cfg, r, keys, options, stop
        self.registry = CameraRegistry(r, keys)
        self.publisher = FramePublisher(r, keys, cfg.id, options.frame_stream_maxlen)
        self.rng = random.Random(seed)
        self.state: CameraState | None = None
        self._fps = 0.0
        self._pub_times: deque[float] = deque()
        self._last_status = 0.0

    # -- status ---------------------------------------------------------------------------------------------------

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        fields: dict[str, object] = {"state": state}
        if error is not None:
            fields["last_error"] = error[:500]
        if state is not CameraState.LIVE:
            fields["fps"] = 0.0
            FPS.labels(self.cfg.id).set(0.0)
            self._pub_times.clear()  # a rate measured across an outage would be too low
        self.registry.set_status(self.cfg.id, **fields)
        if state is not self.state:
            logger.info("camera %s: %s%s", self.cfg.id, state.value, f" ({error})" if error else "")
            for s in CameraState:
                STATE.labels(self.cfg.id, s.value).set(1.0 if s is state else 0.0)
        self.state = state

    def _count(self, field: str, n: int = 1) -> None:
        self.r.hincrby(self.keys.camera_counters(self.cfg.id), field, n)

    # -- main loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Decode, publish, reconnect; returns when ``stop`` is set (or a non-looping file has ended)."""
        attempt = 0
        self._set_state(CameraState.STARTING)
        while not self.stop.is_set():
            published = 0
            try:
                published = self._stream_once()
                if self.stop.is_set():
                    break
                raise StreamEnded("end of stream")
            except StreamEnded as e:
                if self.cfg.is_file and self.cfg.loop and published > 0:
                    self.stop.wait(1.0 / self.cfg.fps)  # start the file again, one frame period after its last frame
                    continue
                if self.cfg.is_file and not self.cfg.loop:
                    self._set_state(CameraState.DOWN, "end of file (the camera does not loop)")
                    return
                error = str(e)
            except (av.error.FFmpegError, OSError, ValueError, IndexError) as e:
                error = f"{type(e).__name__}: {e}"
            if published > 0:
                attempt = 0  # it worked for a while: start the back-off over
            attempt += 1
            self._count("reconnects")
            RECONNECTS.labels(self.cfg.id).inc()
            state = CameraState.DOWN if attempt >= self.opt.down_after else CameraState.RECONNECTING
            self._set_state(state, error)
            delay = backoff_delay(attempt, self.opt.backoff_initial_s, self.opt.backoff_cap_s, self.rng)
            logger.warning("camera %s: %s; retry %d in %.1f s", self.cfg.id, error, attempt, delay)
            self.stop.wait(delay)

    def _open(self) -> av.container.InputContainer:
        options = {}
        if self.cfg.source.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
        # PyAV's timeout is enforced by an interrupt callback, for every protocol: (open, read) seconds.
        return av.open(self.cfg.source, options=options, timeout=(self.opt.open_timeout_s, self.opt.read_timeout_s))  # type: ignore[return-value]

    def _stream_once(self) -> int:
        """Open the source and publish sampled frames until it ends, fails or ``stop``; returns frames published."""
        published = 0
        with self._open() as container:
            if not container.streams.video:
                raise ValueError("the source has no video stream")
            stream = container.streams.video[0]
            if self.opt.decode_threads != 1:
                stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.opt.decode_threads
            period = 1.0 / self.cfg.fps
            next_due: float | None = None
            wall0: float | None = None
            media0: float | None = None
            decoded = 0
            rate = float(stream.guessed_rate or stream.average_rate or 25)
            for packet in container.demux(stream):
                if self.stop.is_set():
                    break
                if packet.is_corrupt:
                    self._corrupt("corrupt packet")
                    continue
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as e:
                    self._corrupt(f"undecodable packet: {e}")
                    continue
                for frame in frames:
                    if frame.is_corrupt:
                        self._corrupt("corrupt frame")
                        continue
                    now = time.monotonic()
                    decoded += 1
                    # Files: media time (a raw elementary stream has none: count frames at the stream's rate).
                    # Live sources: arrival time (their first frames may lack timestamps).
                    media_t = frame.time if frame.time is not None else decoded / rate
                    t = media_t if self.cfg.is_file else now
                    if wall0 is None or media0 is None:
                        wall0, media0 = now, t
                    if self.cfg.is_file:  # play a file at its own pace, as a camera would deliver it
                        ahead = (t - media0) - (now - wall0)
                        if ahead > 0 and self.stop.wait(ahead):
                            return published
                    if next_due is not None and t < next_due:
                        continue
                    next_due = t + period if next_due is None or t - next_due > period else next_due + period
                    self._publish(
                        frame, frame.time if frame.time is not None else (media_t if self.cfg.is_file else None)
                    )
                    published += 1
        return published

    def _corrupt(self, what: str) -> None:
        self._count("corrupt")
        CORRUPT.labels(self.cfg.id).inc()
        logger.debug("camera %s: skipped %s", self.cfg.id, what)

    def _publish(self, frame: av.VideoFrame, media_ts: float | None) -> None:
        width, height = fit_size(frame.width, frame.height, self.cfg.max_size)
        rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
        msg = FrameMessage(
            camera=self.cfg.id,
            seq=self.publisher.next_seq(),
            capture_ts=time.time(),
            media_ts=media_ts,
            width=width,
            height=height,
            jpeg=encode_jpeg(rgb, self.opt.jpeg_quality),
        )
        dropped = self.publisher.publish(msg)
        FRAMES.labels(self.cfg.id).inc()
        if dropped:
            DROPPED.labels(self.cfg.id).inc(dropped)
        now = time.monotonic()
        # Frames per second over the last few seconds of publishing (robust to one short or long gap).
        self._pub_times.append(now)
        while len(self._pub_times) > 2 and now - self._pub_times[0] > FPS_WINDOW_S:
            self._pub_times.popleft()
        span = self._pub_times[-1] - self._pub_times[0]
        self._fps = (len(self._pub_times) - 1) / span if span > 0 else 0.0
        if self.state is not CameraState.LIVE:
            self._set_state(CameraState.LIVE, "")
        if now - self._last_status >= self.opt.status_period_s:
            self.registry.set_status(self.cfg.id, fps=round(self._fps, 2))
            FPS.labels(self.cfg.id).set(self._fps)
            self._last_status = now
