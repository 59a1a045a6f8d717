"""The two workers of index/: the tracker (detections -> tracklet events) and the indexer (tracklet events -> FAISS).

The tracker consumes the detections stream in its consumer group and publishes tracklet events, acking each detection
message after its events are published (each event once per key, so a re-delivered message publishes nothing twice).
Linking needs every frame of a camera in order, so one tracker worker serves all cameras.

The indexer is the single owner of the on-disk index. It reads the tracklets stream from the position its snapshot
covers, applies each event (upsert by tracklet id, so applying one twice changes nothing), and saves the snapshot with
the new position every ``save_every`` events or ``save_period_s``. After a restart, or a kill -9, it loads the last
snapshot and replays the stream from there: nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from prometheus_client import Counter, Gauge

from index.store import MANIFEST, IvfOptions, TrackletIndex, TrackletRecord
from index.tracker import TrackerOptions, TrackletLinker
from personsearch.streams import (
    DetectionMessage,
    Groups,
    Keys,
    SchemaError,
    StreamConsumer,
    TrackletEvent,
    decode,
    default_consumer_name,
    publish_and_ack,
)

logger = logging.getLogger(__name__)

TRACKLET_EVENTS = Counter("personsearch_tracklet_events_total", "Tracklet events published", ["camera", "event"])
INDEXED = Gauge("personsearch_index_tracklets", "Tracklets in the search index")
INDEX_LAG = Gauge("personsearch_index_lag_seconds", "Capture-to-indexed time of the last tracklet event")


class TrackerService:
    """Links detections into tracklets for every camera and publishes their events."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        options: TrackerOptions | None = None,
        consumer_name: str | None = None,
        claim_idle_ms: int = 10_000,
        tracklets_maxlen: int = 1_000_000,
    ) -> None:
        self.r, self.keys = r, keys
        self.opt = options or TrackerOptions()
        self.consumer = StreamConsumer(
            r, Groups.INDEXER, [keys.detections], consumer_name or default_consumer_name("tracker"), claim_idle_ms
        )
        self.consumer.ensure_groups()
        self.linkers: dict[str, TrackletLinker] = {}
        self.tracklets_maxlen = tracklets_maxlen
        self._last_expire = 0.0
        self._heard: dict[str, float] = {}  # camera -> time.monotonic() of its last detection message

    def _emit(self, events: list[TrackletEvent]) -> None:
        for ev in events:
            publish_and_ack(
                self.r, self.keys, "track", ev, self.keys.tracklets, self.keys.detections, Groups.INDEXER, [],
                maxlen=self.tracklets_maxlen,
            )  # fmt: skip
            TRACKLET_EVENTS.labels(ev.camera, ev.event).inc()

    def step(self, block_ms: int = 500) -> int:
        """Handle one read of detection messages; returns how many were handled."""
        read = self.consumer.consume(DetectionMessage, self._link, block_ms=block_ms)
        self.expire(time.monotonic())
        return read

    def _link(self, msg: DetectionMessage) -> None:
        linker = self.linkers.get(msg.camera)
        if linker is None:
            linker = self.linkers[msg.camera] = TrackletLinker(msg.camera, self.opt, msg.model)
        self._emit(linker.update(msg))
        self._heard[msg.camera] = time.monotonic()

    def expire(self, now: float, every_s: float = 0.5) -> None:
        """Close the tracklets of cameras that sent nothing for ``max_gap_s`` (``now``: time.monotonic()).

        While a camera's frames keep coming, its linker closes tracklets in the camera's own (capture) time; only a
        camera gone quiet needs the wall clock. Comparing capture times with the wall clock instead would close every
        tracklet whenever the detector lags by more than ``max_gap_s``.
        """
        if now - self._last_expire < every_s:
            return
        self._last_expire = now
        for camera, linker in self.linkers.items():
            if linker.open and now - self._heard.get(camera, now) > self.opt.max_gap_s:
                self._emit(linker.close_all())

    def run(self, stop: threading.Event) -> None:
        """Link until ``stop``, then close every open tracklet."""
        logger.info("tracker %s started", self.consumer.consumer)
        while not stop.is_set():
            try:
                self.step()
            except redis.ConnectionError as e:
                logger.warning("tracker: redis unavailable (%s); retrying", e)
                stop.wait(1.0)
        for linker in self.linkers.values():
            self._emit(linker.close_all())
        logger.info("tracker stopped")


@dataclass(frozen=True)
class IndexerOptions:
    """Where the index lives and how it is kept."""

    directory: Path = Path("data/index")
    dim: int = 256
    kind: str = "flat"
    device: str = "auto"
    save_every: int = 200  # events between snapshots
    save_period_s: float = 10.0
    retention_s: float = 7 * 24 * 3600.0  # tracklets that ended longer ago are deleted
    retention_check_s: float = 60.0
    ivf: IvfOptions | None = None  # kind "ivf": lists, lists probed per search, training size


class IndexerService:
    """Applies tracklet events to the FAISS index, with snapshots that record the stream position they cover."""

    def __init__(self, r: redis.Redis, keys: Keys, options: IndexerOptions | None = None, model: str = "") -> None:
        self.r, self.keys = r, keys
        self.opt = options or IndexerOptions()
        import faiss

        # One OpenMP thread: single-vector upserts and searches gain nothing from more, and on cores busy with the
        # detector faiss's spinning threads made a 20k search 25x and an IVF add 1000x slower (measured).
        faiss.omp_set_num_threads(1)
        self.index = TrackletIndex(
            self.opt.directory, self.opt.dim, model, self.opt.kind, self.opt.device, ivf=self.opt.ivf
        )
        self.position = self.index.position
        self.unsaved = 0
        self._last_save = time.monotonic()
        self._last_retention = 0.0
        if self.position != "0-0":
            logger.info("index loaded: %d tracklets up to stream entry %s", len(self.index), self.position)

    def apply(self, event: TrackletEvent) -> None:
        """Upsert the event's tracklet into the index (idempotent)."""
        record = TrackletRecord(
            tracklet_id=event.tracklet_id,
            camera=event.camera,
            start_ts=event.start_ts,
            end_ts=event.end_ts,
            frames=event.frames,
            best_box=event.best_box,
            best_score=event.best_score,
            best_seq=event.best_seq,
        )
        self.index.upsert(record, np.asarray(event.embedding, np.float32), event.snapshot or None)
        if event.event != "close":  # a close comes max_gap_s after the last frame by design
            INDEX_LAG.set(max(0.0, time.time() - event.end_ts))

    def step(self, block_ms: int = 500) -> int:
        """Apply the next events after ``position``; save when due; returns how many were applied."""
        res: Any = self.r.xread({self.keys.tracklets: self.position}, count=256, block=block_ms or None)
        n = 0
        for _, items in res or []:
            for entry_id, fields in items:
                try:
                    self.apply(decode(TrackletEvent, fields))
                except SchemaError as e:
                    logger.warning("skipping unreadable tracklet event %s: %s", entry_id, e)
                self.position = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                self.unsaved += 1
                n += 1
        now = time.monotonic()
        if self.unsaved and (self.unsaved >= self.opt.save_every or now - self._last_save >= self.opt.save_period_s):
            self.save()
        if now - self._last_retention >= self.opt.retention_check_s:
            self._last_retention = now
            removed = self.index.delete_older_than(time.time() - self.opt.retention_s)
            if removed:
                logger.info("retention: deleted %d tracklets", removed)
        INDEXED.set(len(self.index))
        return n

    def save(self) -> None:
        """Persist the index with the stream position it covers."""
        self.index.save(self.position)
        self.unsaved = 0
        self._last_save = time.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Index until ``stop``; saves a final snapshot."""
        logger.info("indexer started at stream position %s", self.position)
        if not (self.opt.directory / MANIFEST).exists():
            self.save()  # an empty snapshot: searches (and the API's readiness) find an index from the start
        while not stop.is_set():
            try:
                self.step()
            except redis.ConnectionError as e:
                logger.warning("indexer: redis unavailable (%s); retrying", e)
                stop.wait(1.0)
        self.save()
        logger.info("indexer stopped at %s with %d tracklets", self.position, len(self.index))
