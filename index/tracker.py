"""Per-camera tracklets: link each frame's detections to the people already in view by box overlap and appearance.

A tracklet is one person's continuous presence on one camera. Each frame's detections are assigned to open
tracklets by the Hungarian algorithm on a cost mixing IoU with the last box and cosine similarity with the tracklet's
embedding; a pair is allowed only if it overlaps enough or looks alike enough. A tracklet's embedding summarises its
best frames (the ``keep_best`` highest detection scores), since a sharp, unoccluded view identifies a person better
than the average of every view. Tracklets emit events: ``open`` on the first frame, ``update`` every
``update_every`` frames, ``close`` when unseen for ``max_gap_s`` of the camera's own time.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from personsearch.streams import DetectionMessage, TrackletEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackerOptions:
    """Association and lifetime settings of the tracklet linker."""

    iou_weight: float = 0.5  # cost = 1 - (w * IoU + (1 - w) * cosine)
    min_iou: float = 0.2  # a pair must overlap this much ...
    min_similarity: float = 0.7  # ... or look this alike (a person who moved fast between sampled frames)
    max_gap_s: float = 2.0  # close a tracklet unseen this long
    keep_best: int = 5  # frames whose embeddings form the summary
    update_every: int = 5  # frames between update events
    min_frames: int = 1  # tracklets shorter than this are closed silently (flicker)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a: (N, 4), b: (M, 4) x1y1x2y2 -> (N, M) IoU."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return (inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)).astype(np.float32)


@dataclass
class Tracklet:
    """One person's continuous presence on one camera, as linked so far."""

    tracklet_id: str
    camera: str
    start_ts: float
    end_ts: float
    box: np.ndarray  # (4,) last box
    frames: int = 0
    best: list[tuple[float, int, np.ndarray]] = field(default_factory=list)  # min-heap of (score, seq, embedding)
    best_score: float = -1.0
    best_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    best_seq: int = -1
    best_crop: bytes = b""

    def add(self, ts: float, seq: int, box: np.ndarray, score: float, emb: np.ndarray, crop: bytes, keep: int) -> None:
        """Extend the tracklet with one detection."""
        self.end_ts, self.box, self.frames = ts, box, self.frames + 1
        item = (score, seq, emb)
        if len(self.best) < keep:
            heapq.heappush(self.best, item)
        elif score > self.best[0][0]:
            heapq.heapreplace(self.best, item)
        if score > self.best_score:
            self.best_score, self.best_box, self.best_seq, self.best_crop = score, tuple(map(float, box)), seq, crop  # type: ignore[assignment]

    @property
    def embedding(self) -> np.ndarray:
        """(D,) unit-norm mean of the best frames' embeddings, weighted by their scores."""
        embs = np.stack([e for _, _, e in self.best])
        weights = np.array([s for s, _, _ in self.best], np.float32)[:, None]
        v = (embs * weights).sum(0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def event(self, kind: str, model: str = "") -> TrackletEvent:
        """The tracklet's current state as an event of ``kind`` (open, update, close)."""
        return TrackletEvent(
            event=kind,  # type: ignore[arg-type]
            tracklet_id=self.tracklet_id,
            camera=self.camera,
            model=model,
            start_ts=self.start_ts,
            end_ts=self.end_ts,
            frames=self.frames,
            best_box=self.best_box,
            best_score=self.best_score,
            best_seq=self.best_seq,
            embedding=[float(x) for x in self.embedding],
            snapshot=self.best_crop,
        )


class TrackletLinker:
    """Links one camera's detections, frame by frame, into tracklets and emits their events."""

    def __init__(self, camera: str, options: TrackerOptions | None = None, model: str = "") -> None:
        self.camera, self.model = camera, model
        self.opt = options or TrackerOptions()
        self.open: dict[str, Tracklet] = {}
        self.last_ts = float("-inf")
        self.assigned: list[str | None] = []  # tracklet id of each detection of the last update (None: not linked)

    def update(self, msg: DetectionMessage) -> list[TrackletEvent]:
        """Add one frame's detections; returns the events it causes (closes first, then opens and updates)."""
        if msg.camera != self.camera:
            raise ValueError(f"linker of camera {self.camera} got a frame of {msg.camera}")
        if msg.capture_ts < self.last_ts:
            logger.debug("camera %s: frame %d older than the last one; ignored for linking", self.camera, msg.seq)
            self.assigned = [None] * len(msg.boxes)
            return []
        events = self.expire(msg.capture_ts)
        self.last_ts = msg.capture_ts
        boxes = np.asarray(msg.boxes, np.float32).reshape(-1, 4)
        embs = np.asarray(msg.embeddings, np.float32)
        tracks = list(self.open.values())
        matched: dict[int, Tracklet] = {}
        if tracks and len(boxes):
            iou = box_iou(np.stack([t.box for t in tracks]), boxes)
            sim = np.stack([t.embedding for t in tracks]) @ embs.T
            w = self.opt.iou_weight
            cost = 1.0 - (w * iou + (1 - w) * sim)
            allowed = (iou >= self.opt.min_iou) | (sim >= self.opt.min_similarity)
            cost = np.where(allowed, cost, 1e6)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if allowed[r, c]:
                    matched[int(c)] = tracks[r]
        self.assigned = []
        for j in range(len(boxes)):
            crop = msg.crops[j] if j < len(msg.crops) else b""
            track = matched.get(j)
            if track is None:
                track = Tracklet(f"{self.camera}:{msg.seq}:{j}", self.camera, msg.capture_ts, msg.capture_ts, boxes[j])
                self.open[track.tracklet_id] = track
                self.assigned.append(track.tracklet_id)
                track.add(msg.capture_ts, msg.seq, boxes[j], msg.scores[j], embs[j], crop, self.opt.keep_best)
                if self.opt.min_frames <= 1:
                    events.append(track.event("open", self.model))
                continue
            self.assigned.append(track.tracklet_id)
            track.add(msg.capture_ts, msg.seq, boxes[j], msg.scores[j], embs[j], crop, self.opt.keep_best)
            if track.frames == self.opt.min_frames > 1:
                events.append(track.event("open", self.model))
            elif track.frames > self.opt.min_frames and track.frames % self.opt.update_every == 0:
                events.append(track.event("update", self.model))
        return events

    def expire(self, now_ts: float) -> list[TrackletEvent]:
        """Close tracklets not seen since ``now_ts - max_gap_s`` (camera time)."""
        events = []
        for tid, track in list(self.open.items()):
            if now_ts - track.end_ts > self.opt.max_gap_s:
                del self.open[tid]
                if track.frames >= self.opt.min_frames:
                    events.append(track.event("close", self.model))
        return events

    def close_all(self) -> list[TrackletEvent]:
        """Close every open tracklet (shutdown, or the camera went away)."""
        return self.expire(float("inf"))
