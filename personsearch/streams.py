"""The stream contracts: every Redis key, stream name and versioned message schema of the pipeline lives here.

No other module spells a key. Packages talk to each other only through these streams:

    frames:<camera>  (ingest -> detector)        FrameMessage, bounded; trimmed frames never read are counted
    detections       (detector -> index, watchlist)  DetectionMessage
    tracklets        (index -> watchlist, API)   TrackletEvent
    alerts           (watchlist -> API, webhooks) AlertMessage

Delivery is at-least-once through consumer groups: a consumer reads, publishes its result, and only then acks
(``publish_and_ack`` does both atomically, once per message key, so a message handled twice after a crash publishes
once). Messages a dead consumer left pending are reclaimed with XAUTOCLAIM after ``claim_idle_ms``.

A message on the wire is a flat Redis hash: ``v`` (schema version), ``meta`` (the pydantic model as JSON) and binary
blobs (JPEG bytes, float32 arrays) as separate fields, so large payloads are never base64-encoded.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CAMERA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SchemaError(ValueError):
    """A stream entry that does not follow its schema (unknown version, missing field, wrong blob size)."""


# -- keys --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one deployment, under one prefix (tests and several deployments can share a server)."""

    prefix: str = "ps"

    def frames(self, camera_id: str) -> str:
        """The camera's bounded frame stream."""
        return f"{self.prefix}:frames:{camera_id}"

    @property
    def frames_pattern(self) -> str:
        """SCAN pattern matching every camera's frame stream."""
        return f"{self.prefix}:frames:*"

    def camera_of_frames(self, stream: str) -> str:
        """Camera id of a frame stream name."""
        return stream.removeprefix(f"{self.prefix}:frames:")

    @property
    def detections(self) -> str:
        return f"{self.prefix}:detections"

    @property
    def tracklets(self) -> str:
        return f"{self.prefix}:tracklets"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}:alerts"

    @property
    def cameras(self) -> str:
        """Hash: camera id -> CameraConfig JSON (the registry)."""
        return f"{self.prefix}:cameras"

    @property
    def cameras_version(self) -> str:
        """Counter bumped on every registry change, so services notice new, changed or removed cameras."""
        return f"{self.prefix}:cameras:version"

    def camera_status(self, camera_id: str) -> str:
        """Hash of the camera's live status fields, written by its decoder."""
        return f"{self.prefix}:camera:{camera_id}:status"

    def camera_seq(self, camera_id: str) -> str:
        """Counter giving every frame of the camera a unique, increasing sequence number across restarts."""
        return f"{self.prefix}:camera:{camera_id}:seq"

    def camera_counters(self, camera_id: str) -> str:
        """Hash of the camera's monotonic counters (frames, dropped, corrupt, reconnects)."""
        return f"{self.prefix}:camera:{camera_id}:counters"

    @property
    def workers(self) -> str:
        """Hash: "<worker>:<host>:<pid>" -> last heartbeat (Unix seconds) of every worker process that is up."""
        return f"{self.prefix}:workers"

    def done(self, stage: str, key: str) -> str:
        """Marker that ``stage`` already published its result for message ``key`` (idempotent consumers)."""
        return f"{self.prefix}:done:{stage}:{key}"

    def index_snapshot_position(self, name: str) -> str:
        return f"{self.prefix}:index:{name}:position"

    # -- watchlist, alerts, delivery, API keys --

    @property
    def watchlist(self) -> str:
        """Hash: person id -> Person JSON (name, threshold, photos)."""
        return f"{self.prefix}:watchlist:persons"

    @property
    def watchlist_embeddings(self) -> str:
        """Hash: "<person>/<photo>" -> float32 unit embedding of that photo."""
        return f"{self.prefix}:watchlist:embeddings"

    @property
    def watchlist_photos(self) -> str:
        """Hash: photo id -> the uploaded JPEG/PNG bytes."""
        return f"{self.prefix}:watchlist:photos"

    @property
    def watchlist_version(self) -> str:
        """Counter bumped on every watchlist change, so matchers reload."""
        return f"{self.prefix}:watchlist:version"

    @property
    def alert_log(self) -> str:
        """Hash: alert id -> AlertRecord JSON (the audit log, with acknowledgement)."""
        return f"{self.prefix}:alerts:log"

    @property
    def alert_times(self) -> str:
        """Sorted set: alert id scored by capture time (listing and retention)."""
        return f"{self.prefix}:alerts:by_time"

    @property
    def alert_snapshots(self) -> str:
        """Hash: alert id -> JPEG snapshot."""
        return f"{self.prefix}:alerts:snapshots"

    @property
    def alert_embeddings(self) -> str:
        """Hash: alert id -> float32 unit embedding of the snapshot's detection (for "not this person" feedback)."""
        return f"{self.prefix}:alerts:embeddings"

    def alert_cooldown(self, person_id: str, camera_id: str) -> str:
        """Set with a TTL while (person, camera) is cooling down after an alert."""
        return f"{self.prefix}:alerts:cooldown:{person_id}:{camera_id}"

    @property
    def webhooks(self) -> str:
        """Hash: webhook id -> Webhook JSON (url, secret)."""
        return f"{self.prefix}:webhooks"

    def webhook_status(self, webhook_id: str) -> str:
        """Hash of the webhook's delivery counters and last error."""
        return f"{self.prefix}:webhook:{webhook_id}:status"

    @property
    def deliveries(self) -> str:
        """Sorted set: "<webhook>|<alert stream id>" scored by the time of the next attempt."""
        return f"{self.prefix}:deliveries:due"

    @property
    def delivery_attempts(self) -> str:
        """Hash: "<webhook>|<alert stream id>" -> attempts made so far."""
        return f"{self.prefix}:deliveries:attempts"

    @property
    def deliveries_failed(self) -> str:
        """Stream of deliveries given up after the last retry (webhook, alert, error)."""
        return f"{self.prefix}:deliveries:failed"

    @property
    def api_keys(self) -> str:
        """Hash: key id -> ApiKey JSON (name, SHA-256 of the secret, created)."""
        return f"{self.prefix}:apikeys"


class Groups:
    """Consumer-group names, one per consuming stage."""

    DETECTOR = "detector"
    INDEXER = "indexer"
    WATCHLIST = "watchlist"
    ALERT_DELIVERY = "delivery"


def check_camera_id(camera_id: str) -> str:
    """Return ``camera_id`` if it can be part of a key, else raise ValueError with the rule."""
    if not CAMERA_ID.match(camera_id):
        raise ValueError(
            f"camera id {camera_id!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return camera_id


# -- messages ----------------------------------------------------------------------------------------------------


class Message(BaseModel):
    """Base of every stream message: versioned JSON metadata plus named binary blobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[str]
    v: int = SCHEMA_VERSION

    def blobs(self) -> dict[str, bytes]:
        """Binary fields sent beside the JSON: by default each of ``blob_fields``, a bytes attribute."""
        return {name: getattr(self, name) for name in self.blob_fields()}

    def to_fields(self) -> dict[str, bytes | str]:
        """The flat Redis hash of this message."""
        meta = self.model_dump_json(exclude=set(self.blob_fields()))
        return {"v": str(self.v), "kind": self.kind, "meta": meta, **self.blobs()}

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        return ()

    @property
    def key(self) -> str:
        """Idempotency key: the same logical message always has the same key."""
        raise NotImplementedError

    @classmethod
    def _from_parts(cls, meta: bytes, fields: dict[bytes, bytes]) -> Message:
        """The message from its JSON and its blob fields (a missing blob reads as empty)."""
        try:
            base = cls.model_validate_json(meta)
        except ValueError as e:
            raise SchemaError(f"bad {cls.kind} message: {e}") from e
        return base.model_copy(update={name: fields.get(name.encode(), b"") for name in cls.blob_fields()})


M = TypeVar("M", bound=Message)


def decode(cls: type[M], fields: dict[bytes, bytes]) -> M:
    """Parse a stream entry into ``cls``; SchemaError on an unknown version, kind or a malformed body."""
    try:
        version = int(fields[b"v"])
        kind = fields[b"kind"].decode()
        meta = fields[b"meta"]
    except (KeyError, ValueError) as e:
        raise SchemaError(f"stream entry lacks v/kind/meta: {sorted(fields)[:6]}") from e
    if version != SCHEMA_VERSION:
        raise SchemaError(f"{kind} schema version {version} is not supported (this build reads {SCHEMA_VERSION})")
    if kind != cls.kind:
        raise SchemaError(f"expected a {cls.kind} message, got {kind}")
    return cls._from_parts(meta, fields)  # type: ignore[return-value]


class FrameMessage(Message):
    """One sampled, resized, JPEG-encoded camera frame."""

    kind: ClassVar[str] = "frame"
    camera: str
    seq: int = Field(ge=0, description="per-camera sequence number, unique across decoder restarts")
    capture_ts: float = Field(description="wall-clock capture time, Unix seconds")
    media_ts: float | None = Field(default=None, description="the frame's time within its source (files: position)")
    width: int
    height: int
    jpeg: bytes = b""

    @property
    def key(self) -> str:
        return f"{self.camera}:{self.seq}"

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        return ("jpeg",)


class DetectionMessage(Message):
    """The detector's output for one frame: every person's box, score, unit embedding and a JPEG crop."""

    kind: ClassVar[str] = "detections"
    camera: str
    seq: int
    capture_ts: float
    media_ts: float | None = None
    detected_ts: float = Field(description="when the detector published, Unix seconds")
    width: int
    height: int
    model: str = Field(description="model name, so index and watchlist never mix embedding spaces")
    boxes: list[tuple[float, float, float, float]] = Field(description="(N, 4) x1y1x2y2 frame pixels")
    scores: list[float]
    embeddings: np.ndarray = Field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (N, D) float32
    crops: list[bytes] = Field(default_factory=list)  # N JPEG crops for snapshots

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @property
    def key(self) -> str:
        return f"{self.camera}:{self.seq}"

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        return ("embeddings", "crops")

    def blobs(self) -> dict[str, bytes]:
        emb = np.ascontiguousarray(self.embeddings, dtype="<f4")
        out = {"embeddings": emb.tobytes(), "embedding_shape": f"{emb.shape[0]},{emb.shape[1]}".encode()}
        for i, crop in enumerate(self.crops):
            out[f"crop{i}"] = crop
        return out

    @classmethod
    def _from_parts(cls, meta: bytes, fields: dict[bytes, bytes]) -> DetectionMessage:
        try:
            base = cls.model_validate_json(meta)
            n, d = (int(x) for x in fields[b"embedding_shape"].split(b","))
            emb = np.frombuffer(fields[b"embeddings"], dtype="<f4")
            if emb.size != n * d:
                raise SchemaError(f"embedding blob holds {emb.size} floats, shape says {n}x{d}")
            crops = [fields[f"crop{i}".encode()] for i in range(n) if f"crop{i}".encode() in fields]
        except (KeyError, ValueError) as e:
            raise SchemaError(f"bad detection message: {e}") from e
        if len(base.boxes) != n or len(base.scores) != n:
            raise SchemaError(f"{len(base.boxes)} boxes and {len(base.scores)} scores for {n} embeddings")
        return base.model_copy(update={"embeddings": emb.reshape(n, d).copy(), "crops": crops})


class TrackletEvent(Message):
    """A tracklet opened, updated or closed on one camera."""

    kind: ClassVar[str] = "tracklet"
    event: Literal["open", "update", "close"]
    tracklet_id: str
    camera: str
    model: str = ""  # the network whose embedding this is
    start_ts: float
    end_ts: float
    frames: int
    best_box: tuple[float, float, float, float]
    best_score: float
    best_seq: int
    embedding: list[float] = Field(description="unit-norm summary embedding")
    snapshot: bytes = b""

    @property
    def key(self) -> str:
        return f"{self.tracklet_id}:{self.event}:{self.frames}"

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        return ("snapshot",)


class AlertMessage(Message):
    """A watchlist person seen on a camera."""

    kind: ClassVar[str] = "alert"
    alert_id: str
    person_id: str
    person_name: str = ""
    camera: str
    seq: int = Field(default=-1, description="frame sequence number of the frame that completed the consensus")
    capture_ts: float = Field(description="wall-clock capture time of that frame, Unix seconds")
    media_ts: float | None = Field(default=None, description="that frame's time within its source")
    first_seen_ts: float | None = Field(default=None, description="capture time of the tracklet's first frame")
    alerted_ts: float = Field(default=0.0, description="when the matcher raised the alert, Unix seconds")
    score: float = Field(description="mean cosine similarity over the consensus frames")
    frames: int = Field(default=1, description="frames of the tracklet that matched (the consensus)")
    box: tuple[float, float, float, float]
    tracklet_id: str | None = None
    model: str = ""
    snapshot: bytes = b""
    embedding: bytes = b""  # float32 unit embedding of the snapshot's detection (little-endian)

    @property
    def key(self) -> str:
        return self.alert_id

    @classmethod
    def blob_fields(cls) -> tuple[str, ...]:
        return ("snapshot", "embedding")


# -- producing ---------------------------------------------------------------------------------------------------

# Append a frame to a bounded stream. Entries the trim removes that the detector group never received are counted as
# dropped (KEYS: stream, counters hash; ARGV: maxlen, group, field/value pairs...). Returns {entry id, dropped}.
_APPEND_BOUNDED = """
local function older(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq <= bseq)
end
local maxlen = tonumber(ARGV[1])
local dropped = 0
local len = redis.call('XLEN', KEYS[1])
if len >= maxlen then
  local delivered = '0-0'
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
  if ok then
    for _, g in ipairs(groups) do
      local name, last
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then last = g[i + 1] end
      end
      if name == ARGV[2] then delivered = last end
    end
  end
  local victims = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - maxlen + 1)
  for _, e in ipairs(victims) do
    if not older(e[1], delivered) then dropped = dropped + 1 end
  end
end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, '*', unpack(fields))
redis.call('HINCRBY', KEYS[2], 'frames', 1)
if dropped > 0 then redis.call('HINCRBY', KEYS[2], 'dropped', dropped) end
return {id, dropped}
"""

# Publish a result once per idempotency key and ack its inputs, atomically (KEYS: done marker, output stream,
# input stream; ARGV: ttl seconds, group, maxlen or 0, n_ids, ids..., field/value pairs...). Returns 1 if published.
_PUBLISH_AND_ACK = """
local ttl, group, maxlen, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local published = 0
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl) then
  local fields = {}
  for i = 5 + n, #ARGV do fields[#fields + 1] = ARGV[i] end
  if #fields > 0 then
    if maxlen > 0 then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    else
      redis.call('XADD', KEYS[2], '*', unpack(fields))
    end
  end
  published = 1
end
if n > 0 then
  local ids = {}
  for i = 5, 4 + n do ids[#ids + 1] = ARGV[i] end
  redis.call('XACK', KEYS[3], group, unpack(ids))
end
return published
"""


def _flatten(fields: dict[str, bytes | str]) -> list[bytes | str]:
    out: list[bytes | str] = []
    for k, v in fields.items():
        out += [k, v]
    return out


class FramePublisher:
    """Appends frames to a camera's bounded stream; the trim of frames nobody read is counted, never silent."""

    def __init__(self, r: redis.Redis, keys: Keys, camera_id: str, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.r, self.keys, self.camera_id, self.maxlen = r, keys, check_camera_id(camera_id), maxlen
        self._script = r.register_script(_APPEND_BOUNDED)

    def next_seq(self) -> int:
        """A fresh sequence number for this camera's next frame."""
        return int(self.r.incr(self.keys.camera_seq(self.camera_id)))

    def publish(self, frame: FrameMessage) -> int:
        """Append ``frame``; returns how many unread frames the bound dropped to make room."""
        keys = [self.keys.frames(self.camera_id), self.keys.camera_counters(self.camera_id)]
        args: list[Any] = [self.maxlen, Groups.DETECTOR, *_flatten(frame.to_fields())]
        _, dropped = self._script(keys=keys, args=args)
        if dropped:
            logger.warning("camera %s: frame stream full, dropped %d unread frame(s)", self.camera_id, dropped)
        return int(dropped)


def publish_and_ack(
    r: redis.Redis,
    keys: Keys,
    stage: str,
    message: Message | None,
    output_stream: str,
    input_stream: str,
    group: str,
    ids: Sequence[bytes | str],
    *,
    key: str | None = None,
    maxlen: int = 0,
    ttl_s: int = 24 * 3600,
) -> bool:
    """Publish ``message`` on ``output_stream`` unless its key was already published by ``stage``; ack ``ids``.

    One atomic script: a consumer that crashes after publishing but before acking re-handles the input and this call
    publishes nothing the second time. ``message=None`` only acks (and marks ``key`` done). Returns True if published.
    """
    mkey = key if key is not None else (message.key if message is not None else None)
    if mkey is None:
        raise ValueError("publish_and_ack needs a message or a key")
    fields = _flatten(message.to_fields()) if message is not None else []
    script = r.register_script(_PUBLISH_AND_ACK)
    done = script(
        keys=[keys.done(stage, mkey), output_stream, input_stream],
        args=[ttl_s, group, maxlen, len(ids), *ids, *fields],
    )
    return bool(done)


def publish(r: redis.Redis, stream: str, message: Message, maxlen: int = 0) -> str:
    """Append ``message`` to ``stream`` (approximately trimmed to ``maxlen`` when > 0); returns the entry id."""
    fields = message.to_fields()
    entry = r.xadd(stream, fields, maxlen=maxlen or None, approximate=True)  # type: ignore[arg-type]
    return entry.decode() if isinstance(entry, bytes) else str(entry)


# -- consuming ---------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One stream entry delivered to a consumer. ``fields`` is None when the entry was trimmed before it was read."""

    stream: str
    id: str
    fields: dict[bytes, bytes] | None
    reclaimed: bool = False


def default_consumer_name(stage: str) -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    import os

    return f"{stage}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class StreamConsumer:
    """A consumer in a group over one or more streams: reclaims entries dead consumers left pending, then reads new.

    At-least-once: nothing is acked here; the caller acks after it has published its result.
    """

    r: redis.Redis
    group: str
    streams: list[str]
    consumer: str
    claim_idle_ms: int = 30_000
    start_id: str = "0"  # where a newly created group starts: "0" = the whole stream, "$" = only new entries
    _claim_cursor: dict[str, str] = field(default_factory=dict)

    def ensure_groups(self, streams: Iterable[str] | None = None) -> None:
        """Create the group on every stream (and the stream itself) if missing."""
        for s in streams if streams is not None else self.streams:
            try:
                self.r.xgroup_create(s, self.group, id=self.start_id, mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    def add_streams(self, streams: Iterable[str]) -> None:
        """Start consuming more streams (e.g. a camera registered after start-up)."""
        new = [s for s in streams if s not in self.streams]
        if new:
            self.ensure_groups(new)
            self.streams.extend(new)

    def reclaim(self, count: int) -> list[Entry]:
        """Take over entries pending longer than ``claim_idle_ms`` on any stream (their consumer is presumed dead)."""
        out: list[Entry] = []
        for s in self.streams:
            cursor = self._claim_cursor.get(s, "0-0")
            try:
                res: Any = self.r.xautoclaim(s, self.group, self.consumer, self.claim_idle_ms, cursor, count=count)
            except redis.ResponseError as e:
                if "NOGROUP" in str(e):
                    self.ensure_groups([s])
                    continue
                raise
            next_cursor, claimed = res[0], res[1]
            self._claim_cursor[s] = next_cursor.decode() if isinstance(next_cursor, bytes) else str(next_cursor)
            for entry_id, fields in claimed:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out.append(Entry(s, eid, fields or None, reclaimed=True))
            if len(out) >= count:
                break
        return out

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Reclaimed entries first, else up to ``count`` new entries across the streams, blocking up to ``block_ms``."""
        entries = self.reclaim(count)
        if entries:
            return entries
        if not self.streams:
            time.sleep(block_ms / 1000)
            return []
        try:
            res: Any = self.r.xreadgroup(
                self.group, self.consumer, {s: ">" for s in self.streams}, count=count, block=block_ms or None
            )
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):
                self.ensure_groups()
                return []
            raise
        out = []
        for stream, items in res or []:
            name = stream.decode() if isinstance(stream, bytes) else str(stream)
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                out.append(Entry(name, eid, fields or None))
        return out

    def consume(self, schema: type[M], handle: Callable[[M], None], count: int = 64, block_ms: int = 500) -> int:
        """Read up to ``count`` entries; decode each as ``schema``, pass it to ``handle``, then ack it. Returns how
        many entries were read.

        An unreadable entry (or one trimmed before it was read) is logged and acked without ``handle``: it would fail
        the same way on every consumer that reclaims it. An exception from ``handle`` propagates and leaves that entry
        and the rest of the read pending, so they are handled again (by this consumer or another) later.
        """
        entries = self.read(count=count, block_ms=block_ms)
        for entry in entries:
            if entry.fields is None:
                logger.warning("%s: entry %s was trimmed before it was read; skipped", entry.stream, entry.id)
            else:
                try:
                    msg = decode(schema, entry.fields)
                except SchemaError as e:
                    logger.warning("%s: skipping unreadable entry %s: %s", entry.stream, entry.id, e)
                else:
                    handle(msg)
            self.ack(entry.stream, [entry.id])
        return len(entries)

    def ack(self, stream: str, ids: Sequence[str]) -> None:
        """Acknowledge entries that need no published result (e.g. an unreadable entry, counted by the caller)."""
        if ids:
            self.r.xack(stream, self.group, *ids)


__all__ = [
    "SCHEMA_VERSION",
    "AlertMessage",
    "DetectionMessage",
    "Entry",
    "FrameMessage",
    "FramePublisher",
    "Groups",
    "Keys",
    "Message",
    "SchemaError",
    "StreamConsumer",
    "TrackletEvent",
    "check_camera_id",
    "decode",
    "default_consumer_name",
    "publish",
    "publish_and_ack",
]
