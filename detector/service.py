"""The batched detector service: frames from every camera stream in, detections out, acked only after publishing.

``FrameBatcher`` forms batches across cameras like DeepStream's stream muxer: at most ``max_batch`` frames, waiting
at most ``max_wait_ms`` for a batch to fill, taking frames round-robin so one busy camera cannot starve the others.
Several services can run at once (one consumer group, one consumer each): a frame is delivered to one of them, and
frames a killed worker held are reclaimed by the others after ``claim_idle_ms``. Publishing is idempotent per frame
(``publish_and_ack``), so a frame handled twice after a crash yields one detection message.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import redis
from PIL import Image
from prometheus_client import Counter, Gauge, Histogram

from detector.engine import Detections, Engine
from ingest.cameras import CameraRegistry
from personsearch.streams import (
    DetectionMessage,
    Entry,
    FrameMessage,
    Groups,
    Keys,
    SchemaError,
    StreamConsumer,
    decode,
    default_consumer_name,
    publish_and_ack,
)

logger = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "personsearch_detector_batch_size", "Frames per inference batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
)
INFERENCE_SECONDS = Histogram(
    "personsearch_detector_inference_seconds",
    "Engine time per batch",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_LAG = Gauge("personsearch_detector_queue_lag_seconds", "Capture-to-inference lag of the last frame", ["camera"])
FRAMES_DONE = Counter("personsearch_detector_frames_total", "Frames run through the detector", ["camera"])
FRAMES_LOST = Counter(
    "personsearch_detector_dropped_frames_total",
    "Frames the detector could not use (trimmed before it read them, or unreadable)",
    ["camera", "reason"],
)


@dataclass(frozen=True)
class DetectorOptions:
    """Batching and publishing settings of a detector service."""

    max_batch: int = 4
    max_wait_ms: int = 50
    claim_idle_ms: int = 10_000  # frames pending this long on a silent worker are taken over
    det_thresh: float = 0.5  # detections below this score are not published
    crop_max_side: int = 160  # snapshot crops are resized to at most this many pixels
    crop_quality: int = 80
    detections_maxlen: int = 100_000  # the detections stream is trimmed (approximately) to this many entries
    registry_poll_s: float = 1.0
    # Frames captured longer ago than this when the detector reaches them are skipped (acked, counted as dropped,
    # reason "stale") so that an overloaded detector stays live instead of alerting minutes late; 0: never.
    max_frame_age_s: float = 0.0


@dataclass
class PendingFrame:
    """A frame delivered to this worker, not yet acked."""

    entry: Entry
    frame: FrameMessage | None  # None: trimmed before it was read, or unreadable


class FrameBatcher:
    """Reads every camera's frame stream in one consumer group and hands out fair batches."""

    def __init__(self, consumer: StreamConsumer, max_batch: int, max_wait_ms: int) -> None:
        self.consumer, self.max_batch, self.max_wait_ms = consumer, max_batch, max_wait_ms
        self.queues: dict[str, deque[PendingFrame]] = {}
        self._held: set[tuple[str, str]] = set()  # (stream, id) buffered here; a reclaim may hand them back to us
        self._turn = 0  # rotates the camera that is served first

    def _buffered(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def _fill(self, block_ms: int) -> None:
        # Up to max_batch per stream per read: enough to fill a batch from one camera, bounded for the others.
        for entry in self.consumer.read(count=self.max_batch, block_ms=block_ms):
            if (entry.stream, entry.id) in self._held:
                continue
            self._held.add((entry.stream, entry.id))
            frame = None
            if entry.fields is not None:
                try:
                    frame = decode(FrameMessage, entry.fields)
                except SchemaError as e:
                    logger.warning("unreadable frame %s on %s: %s", entry.id, entry.stream, e)
            self.queues.setdefault(entry.stream, deque()).append(PendingFrame(entry, frame))

    def _take(self) -> list[PendingFrame]:
        batch: list[PendingFrame] = []
        streams = sorted(s for s, q in self.queues.items() if q)
        if not streams:
            return batch
        self._turn = (self._turn + 1) % len(streams)
        order = streams[self._turn :] + streams[: self._turn]
        while len(batch) < self.max_batch and any(self.queues[s] for s in order):
            for s in order:
                if self.queues[s] and len(batch) < self.max_batch:
                    batch.append(self.queues[s].popleft())
        self._held.difference_update((p.entry.stream, p.entry.id) for p in batch)
        return batch

    def next_batch(self) -> list[PendingFrame]:
        """Up to ``max_batch`` frames, round-robin over cameras; waits at most ``max_wait_ms`` once one has arrived.

        Returns an empty list after blocking ``max_wait_ms`` with nothing to do.
        """
        if self._buffered() < self.max_batch:
            self._fill(block_ms=self.max_wait_ms if self._buffered() == 0 else 1)
        if 0 < self._buffered() < self.max_batch:
            deadline = time.monotonic() + self.max_wait_ms / 1000
            while self._buffered() < self.max_batch:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    break
                self._fill(block_ms=left_ms)
        return self._take()


def _crop_jpeg(image: Image.Image, box: np.ndarray, max_side: int, quality: int) -> bytes:
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    crop = image.crop((max(0, x1), max(0, y1), max(x1 + 1, x2), max(y1 + 1, y2)))
    crop.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    crop.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class DetectorService:
    """Runs the engine on batches of frames and publishes one DetectionMessage per frame, then acks it."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        engine: Engine,
        options: DetectorOptions | None = None,
        consumer_name: str | None = None,
    ) -> None:
        self.r, self.keys, self.engine = r, keys, engine
        self.opt = options or DetectorOptions()
        self.registry = CameraRegistry(r, keys)
        self.consumer = StreamConsumer(
            r, Groups.DETECTOR, [], consumer_name or default_consumer_name("detector"), self.opt.claim_idle_ms
        )
        self.batcher = FrameBatcher(self.consumer, self.opt.max_batch, self.opt.max_wait_ms)
        self._version = -1
        self._last_poll = 0.0
        self.frames_done = 0
        self.frames_stale = 0

    def follow_cameras(self) -> None:
        """Consume the frame stream of every registered camera (new ones included)."""
        now = time.monotonic()
        if now - self._last_poll < self.opt.registry_poll_s and self._version >= 0:
            return
        self._last_poll = now
        version = self.registry.version()
        if version != self._version:
            self._version = version
            self.consumer.add_streams(self.keys.frames(c.id) for c in self.registry.list())

    def step(self) -> int:
        """Run one batch; returns the number of frames handled (0 when idle)."""
        self.follow_cameras()
        batch = self.batcher.next_batch()
        if not batch:
            return 0
        usable: list[tuple[PendingFrame, Image.Image]] = []
        for item in batch:
            camera = self.keys.camera_of_frames(item.entry.stream)
            if item.frame is None:
                FRAMES_LOST.labels(camera, "trimmed" if item.entry.fields is None else "unreadable").inc()
                self.consumer.ack(item.entry.stream, [item.entry.id])  # nothing to publish for it
                continue
            if self.opt.max_frame_age_s and time.time() - item.frame.capture_ts > self.opt.max_frame_age_s:
                FRAMES_LOST.labels(camera, "stale").inc()
                self.consumer.ack(item.entry.stream, [item.entry.id])
                self.frames_stale += 1
                continue
            try:
                image = Image.open(io.BytesIO(item.frame.jpeg)).convert("RGB")
            except OSError as e:
                logger.warning("camera %s frame %d: not a decodable JPEG (%s)", camera, item.frame.seq, e)
                FRAMES_LOST.labels(camera, "unreadable").inc()
                self.consumer.ack(item.entry.stream, [item.entry.id])  # nothing to publish for it
                continue
            usable.append((item, image))
        if not usable:
            return len(batch)
        arrays = [np.array(img) for _, img in usable]
        t0 = time.perf_counter()
        results = self.engine.detect(arrays)
        INFERENCE_SECONDS.observe(time.perf_counter() - t0)
        BATCH_SIZE.observe(len(usable))
        for (item, image), det in zip(usable, results):
            self._publish(item, image, det)
        return len(batch)

    def _publish(self, item: PendingFrame, image: Image.Image, det: Detections) -> None:
        frame = item.frame
        assert frame is not None
        keep = det.scores >= self.opt.det_thresh
        boxes, scores, embeddings = det.boxes[keep], det.scores[keep], det.embeddings[keep]
        msg = DetectionMessage(
            camera=frame.camera,
            seq=frame.seq,
            capture_ts=frame.capture_ts,
            media_ts=frame.media_ts,
            detected_ts=time.time(),
            width=frame.width,
            height=frame.height,
            model=self.engine.model_name,
            boxes=[tuple(float(v) for v in b) for b in boxes],  # type: ignore[misc]
            scores=[float(s) for s in scores],
            embeddings=embeddings.astype(np.float32),
            crops=[_crop_jpeg(image, b, self.opt.crop_max_side, self.opt.crop_quality) for b in boxes],
        )
        publish_and_ack(
            self.r,
            self.keys,
            "detect",
            msg,
            self.keys.detections,
            item.entry.stream,
            Groups.DETECTOR,
            [item.entry.id],
            maxlen=self.opt.detections_maxlen,
        )
        QUEUE_LAG.labels(frame.camera).set(max(0.0, time.time() - frame.capture_ts))
        FRAMES_DONE.labels(frame.camera).inc()
        self.frames_done += 1

    def run(self, stop: threading.Event) -> None:
        """Serve batches until ``stop``; a Redis outage is waited out, not fatal."""
        logger.info("detector service %s started (engine %s)", self.consumer.consumer, self.engine.name)
        while not stop.is_set():
            try:
                self.step()
            except redis.ConnectionError as e:
                logger.warning("detector: redis unavailable (%s); retrying", e)
                stop.wait(1.0)
        logger.info("detector service %s stopped after %d frames", self.consumer.consumer, self.frames_done)
