"""The watchlist matcher: detections -> per-camera tracklets -> consensus against the watchlist -> alerts.

It reads the detections stream in its own consumer group (``watchlist``), links each camera's detections into
tracklets with the same linker as the tracker (index/tracker.py), and scores every detection against every photo of
every watchlist person (cosine of unit embeddings; a person's score is their best photo). A frame *votes* for the
person it matches best when that score reaches the person's threshold and beats the runner-up by ``margin``. The
person's rejections (detections an operator marked as someone else, ``watchlist.feedback``) compete as runners-up
too: a detection about as close to a rejected look-alike as to the person's photos does not vote.

An alert needs consensus: ``consensus_frames`` votes for one person among a tracklet's last ``window_frames`` frames,
so one look-alike frame never pages anyone. A tracklet alerts at most once per person, and (person, camera) then
cools down for ``cooldown_s`` (kept in Redis, so it holds across matcher restarts; ``raise_alert`` checks it and
publishes in one script, so a frame handled twice after a crash raises nothing twice). Detection entries are acked
after their alerts are published; a killed matcher's pending entries are reclaimed by the next one.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import redis
from prometheus_client import Counter, Gauge, Histogram

from index.tracker import TrackerOptions, TrackletLinker
from personsearch.streams import (
    AlertMessage,
    DetectionMessage,
    Groups,
    Keys,
    StreamConsumer,
    default_consumer_name,
)
from watchlist.alerts import AlertLog, raise_alert
from watchlist.store import Person, Watchlist

logger = logging.getLogger(__name__)

ALERTS = Counter("personsearch_alerts_total", "Alerts raised", ["camera"])
SUPPRESSED = Counter("personsearch_alerts_suppressed_total", "Consensus reached during a cooldown", ["camera"])
MATCH_LAG = Histogram(
    "personsearch_alert_latency_seconds",
    "Capture-to-alert time of raised alerts",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
)
FAILED = Counter("personsearch_matcher_failed_messages_total", "Detection messages the matcher could not handle")
PERSONS = Gauge("personsearch_watchlist_persons", "Persons on the watchlist (as the matcher sees it)")
MATCHER_LAG = Gauge("personsearch_matcher_lag_seconds", "Capture-to-matched time of the last detection message")


@dataclass(frozen=True)
class MatcherOptions:
    """How detections become alerts."""

    default_threshold: float = 0.6  # cosine; a person's own threshold overrides it
    margin: float = 0.05  # the best person must beat the runner-up by this to get the frame's vote
    consensus_frames: int = 3  # votes for one person needed ...
    window_frames: int = 6  # ... among the tracklet's last this many frames
    cooldown_s: float = 60.0  # per (person, camera), after an alert
    min_det_score: float = 0.5  # detections below this do not vote
    reload_period_s: float = 0.5  # how often the watchlist version is checked
    claim_idle_ms: int = 10_000
    retention_s: float = 30 * 24 * 3600.0  # the audit log keeps alerts this long
    alerts_maxlen: int = 100_000
    tracker: TrackerOptions = field(default_factory=lambda: TrackerOptions(max_gap_s=2.0, update_every=10**9))


def vote(
    scores: np.ndarray, rejected: np.ndarray, det_score: float, thresholds: np.ndarray, opt: MatcherOptions
) -> int:
    """The person one detection votes for, or -1.

    ``scores``: its cosine to each person's best photo; ``rejected``: to each person's closest rejection (-inf: none);
    ``thresholds``: each person's threshold.
    """
    if det_score < opt.min_det_score or len(scores) == 0:
        return -1
    order = np.argsort(-scores)
    best = int(order[0])
    if not scores[best] >= thresholds[best]:
        return -1
    runner_up = max(float(scores[int(order[1])]) if len(order) > 1 else -np.inf, float(rejected[best]))
    if scores[best] - runner_up < opt.margin:
        return -1
    return best


@dataclass
class _Vote:
    seq: int
    capture_ts: float
    media_ts: float | None
    person: int  # index into the loaded persons, -1: no vote
    score: float
    box: tuple[float, float, float, float]
    crop: bytes
    embedding: np.ndarray


@dataclass
class _TrackState:
    first_ts: float
    votes: deque[_Vote]
    alerted: set[str] = field(default_factory=set)


class MatcherService:
    """Consensus matching of every camera's detections against the watchlist."""

    def __init__(
        self, r: redis.Redis, keys: Keys, options: MatcherOptions | None = None, consumer_name: str | None = None
    ) -> None:
        self.r, self.keys = r, keys
        self.opt = options or MatcherOptions()
        if self.opt.consensus_frames > self.opt.window_frames:
            raise ValueError("consensus_frames cannot exceed window_frames")
        self.consumer = StreamConsumer(
            r, Groups.WATCHLIST, [keys.detections], consumer_name or default_consumer_name("matcher"),
            self.opt.claim_idle_ms,
        )  # fmt: skip
        self.consumer.ensure_groups()
        self.watchlist = Watchlist(r, keys)
        self.log = AlertLog(r, keys)
        self.linkers: dict[str, TrackletLinker] = {}
        self.tracks: dict[str, _TrackState] = {}
        self._heard: dict[str, float] = {}
        self._version = -1
        self._checked = 0.0
        self._trimmed = 0.0
        self._warned_models: set[tuple[str, str]] = set()
        self.persons: list[Person] = []
        self.matrix = np.zeros((0, 0), np.float32)
        self.owner = np.zeros(0, np.int64)
        self.rejections = np.zeros((0, 0), np.float32)
        self.rejection_owner = np.zeros(0, np.int64)
        self.thresholds = np.zeros(0, np.float32)

    # -- watchlist --

    def reload(self, force: bool = False) -> None:
        """Re-read the watchlist when it changed (every ``reload_period_s`` at most)."""
        now = time.monotonic()
        if not force and now - self._checked < self.opt.reload_period_s:
            return
        self._checked = now
        version = self.watchlist.version()
        if version == self._version and not force:
            return
        wl = self.watchlist.embeddings()
        persons = wl.persons
        self.persons, self.matrix, self.owner, self._version = persons, wl.photos, wl.photo_owner, version
        self.rejections, self.rejection_owner = wl.rejections, wl.rejection_owner
        self.thresholds = np.array(
            [p.threshold if p.threshold is not None else self.opt.default_threshold for p in persons], np.float32
        )
        # Votes refer to person indices of the old list: start the consensus over.
        for state in self.tracks.values():
            state.votes.clear()
        PERSONS.set(len(persons))
        logger.info(
            "watchlist v%d: %d persons, %d photos, %d rejections", version, len(persons), len(self.matrix),
            len(self.rejections),
        )  # fmt: skip

    def person_scores(self, embeddings: np.ndarray, model: str) -> np.ndarray:
        """(N, D) detection embeddings -> (N, P) best-photo cosine per person (-inf for another model's person)."""
        scores = self._best_per_person(embeddings, self.matrix, self.owner, model)
        for i, person in enumerate(self.persons):
            if person.model and model and person.model != model:
                self._warn_model(model, f"{person.person_id} was embedded with {person.model}")
                scores[:, i] = -np.inf
        return scores

    def rejection_scores(self, embeddings: np.ndarray, model: str) -> np.ndarray:
        """(N, D) detection embeddings -> (N, P) cosine to each person's closest rejection (-inf: none)."""
        return self._best_per_person(embeddings, self.rejections, self.rejection_owner, model)

    def _best_per_person(self, embeddings: np.ndarray, matrix: np.ndarray, owner: np.ndarray, model: str) -> np.ndarray:
        n, p = len(embeddings), len(self.persons)
        scores = np.full((n, p), -np.inf, np.float32)
        if n == 0 or p == 0 or matrix.size == 0:
            return scores
        if embeddings.shape[1] != matrix.shape[1]:
            self._warn_model(model, f"embedding size {embeddings.shape[1]} != watchlist {matrix.shape[1]}")
            return scores
        sims = embeddings.astype(np.float32) @ matrix.T  # (N, M)
        np.maximum.at(scores.T, owner, sims.T)
        return scores

    def _warn_model(self, model: str, why: str) -> None:
        if (model, why) not in self._warned_models:
            self._warned_models.add((model, why))
            logger.warning("detections of model %s cannot be matched: %s; re-embed the watchlist", model, why)

    # -- detections --

    def handle(self, msg: DetectionMessage) -> list[AlertMessage]:
        """Link one frame's detections, vote, and return the alerts that reached consensus (not yet published)."""
        linker = self.linkers.get(msg.camera)
        if linker is None:
            linker = self.linkers[msg.camera] = TrackletLinker(msg.camera, self.opt.tracker, msg.model)
        for ev in linker.update(msg):
            if ev.event == "close":
                self.tracks.pop(ev.tracklet_id, None)
        self._heard[msg.camera] = time.monotonic()
        if not self.persons or not msg.boxes:
            return []
        emb = np.asarray(msg.embeddings, np.float32).reshape(len(msg.boxes), -1)
        scores = self.person_scores(emb, msg.model)
        rejected = self.rejection_scores(emb, msg.model)
        alerts = []
        for j, tid in enumerate(linker.assigned):
            if tid is None:
                continue
            state = self.tracks.get(tid)
            if state is None:
                state = self.tracks[tid] = _TrackState(msg.capture_ts, deque(maxlen=self.opt.window_frames))
            choice = vote(scores[j], rejected[j], msg.scores[j], self.thresholds, self.opt)
            crop = msg.crops[j] if j < len(msg.crops) else b""
            state.votes.append(
                _Vote(msg.seq, msg.capture_ts, msg.media_ts, choice, float(scores[j][choice]) if choice >= 0 else 0.0,
                      msg.boxes[j], crop, emb[j])
            )  # fmt: skip
            if choice < 0:
                continue
            person = self.persons[choice]
            if person.person_id in state.alerted:
                continue
            mine = [v for v in state.votes if v.person == choice]
            if len(mine) >= self.opt.consensus_frames:
                state.alerted.add(person.person_id)
                best = max(mine, key=lambda v: v.score)
                alerts.append(
                    AlertMessage(
                        alert_id=_alert_id(msg.camera, msg.seq, person.person_id),
                        person_id=person.person_id, person_name=person.name, camera=msg.camera, seq=msg.seq,
                        capture_ts=msg.capture_ts, media_ts=msg.media_ts, first_seen_ts=state.first_ts,
                        alerted_ts=time.time(), score=float(np.mean([v.score for v in mine])), frames=len(mine),
                        box=tuple(map(float, msg.boxes[j])), tracklet_id=tid, model=msg.model,  # type: ignore[arg-type]
                        snapshot=best.crop or crop, embedding=np.asarray(best.embedding, "<f4").tobytes(),
                    )
                )  # fmt: skip
        return alerts

    def publish(self, alert: AlertMessage) -> bool:
        """Raise ``alert`` unless its (person, camera) is cooling down; True if raised."""
        raised = raise_alert(self.r, self.keys, alert, self.opt.cooldown_s, self.opt.alerts_maxlen)
        if raised:
            ALERTS.labels(alert.camera).inc()
            MATCH_LAG.observe(max(0.0, alert.alerted_ts - alert.capture_ts))
            logger.info(
                "ALERT %s (%s) on %s score %.3f over %d frames", alert.person_id, alert.person_name, alert.camera,
                alert.score, alert.frames,
            )  # fmt: skip
        else:
            SUPPRESSED.labels(alert.camera).inc()
        return raised

    def step(self, block_ms: int = 500) -> int:
        """Handle one read of detection messages; returns how many were handled."""
        self.reload()
        read = self.consumer.consume(DetectionMessage, self._match, block_ms=block_ms)
        self._expire()
        return read

    def _match(self, msg: DetectionMessage) -> None:
        try:
            for alert in self.handle(msg):
                self.publish(alert)
        except redis.ConnectionError:
            raise  # not acked: handled again (by this worker or another) once Redis is back
        except Exception:
            # A message this code cannot handle would crash every matcher that reclaims it: skip it, loudly.
            FAILED.inc()
            logger.exception("matcher: detection message seq %d of %s failed; skipped", msg.seq, msg.camera)
        MATCHER_LAG.set(max(0.0, time.time() - msg.capture_ts))

    def _expire(self) -> None:
        """Forget the tracklets of cameras quiet for longer than the linker's gap; trim the audit log hourly."""
        now = time.monotonic()
        for camera, linker in self.linkers.items():
            if linker.open and now - self._heard.get(camera, now) > self.opt.tracker.max_gap_s:
                for ev in linker.close_all():
                    self.tracks.pop(ev.tracklet_id, None)
        if now - self._trimmed > 3600:
            self._trimmed = now
            removed = self.log.trim(time.time() - self.opt.retention_s)
            if removed:
                logger.info("alert log: %d alerts older than the retention window deleted", removed)

    def run(self, stop: threading.Event) -> None:
        logger.info("matcher %s started", self.consumer.consumer)
        self.reload(force=True)
        while not stop.is_set():
            try:
                self.step()
            except redis.ConnectionError as e:
                logger.warning("matcher: redis unavailable (%s); retrying", e)
                stop.wait(1.0)
        logger.info("matcher stopped")


def _alert_id(camera: str, seq: int, person_id: str) -> str:
    """The same frame and person always give the same id (a re-handled frame is recognised as raised)."""
    return "al-" + hashlib.sha1(f"{camera}\0{seq}\0{person_id}".encode()).hexdigest()[:16]


__all__ = ["MatcherOptions", "MatcherService", "vote"]
