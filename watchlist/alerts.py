"""Raising alerts and their audit log.

``raise_alert`` is one Lua script: if the (person, camera) pair is not cooling down it starts the cooldown, appends the
alert to the alerts stream (read by webhook delivery and live clients) and records it in the audit log (a hash of
AlertRecord JSON, a sorted set by capture time, and the snapshot JPEG). Because the cooldown key is set in the same
script, a matcher that re-handles a frame after a crash cannot raise the same alert twice. The embedding of the
snapshot's detection is kept beside the snapshot, so that an operator can tell the matcher "not this person"
(``watchlist.feedback``).

The audit log can be listed and filtered (person, camera, time range, acknowledged or not), and alerts acknowledged
(who, when, a note, whether it was a false match). ``trim`` deletes records older than the retention window.
"""

from __future__ import annotations

import time

import numpy as np
import redis
from pydantic import BaseModel, Field

from personsearch.streams import AlertMessage, Keys

# KEYS: cooldown, alerts stream, log hash, time zset, snapshots hash, embeddings hash.
# ARGV: cooldown ms, stream maxlen, alert id, capture ts, record JSON, snapshot, embedding, field/value pairs...
_RAISE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HEXISTS', KEYS[3], ARGV[3]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'PX', tonumber(ARGV[1]))
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[2]), '*', unpack(fields))
local record = string.gsub(ARGV[5], '"stream_id":""', '"stream_id":"' .. id .. '"', 1)
redis.call('HSET', KEYS[3], ARGV[3], record)
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), ARGV[3])
if #ARGV[6] > 0 then redis.call('HSET', KEYS[5], ARGV[3], ARGV[6]) end
if #ARGV[7] > 0 then redis.call('HSET', KEYS[6], ARGV[3], ARGV[7]) end
return 1
"""


class AlertRecord(BaseModel):
    """An alert as the audit log keeps it (the snapshot is stored beside it)."""

    alert_id: str
    person_id: str
    person_name: str = ""
    camera: str
    seq: int = -1
    capture_ts: float
    media_ts: float | None = None
    first_seen_ts: float | None = None
    alerted_ts: float = 0.0
    score: float
    frames: int = 1
    box: tuple[float, float, float, float]
    tracklet_id: str | None = None
    model: str = ""
    stream_id: str = Field(default="", description="entry id in the alerts stream")
    has_snapshot: bool = False
    acknowledged: bool = False
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    note: str = ""
    false_match: bool = Field(default=False, description="acknowledged as not being the person")

    @classmethod
    def from_message(cls, msg: AlertMessage) -> AlertRecord:
        return cls(**msg.model_dump(exclude={"v", "snapshot", "embedding"}), has_snapshot=bool(msg.snapshot))


class AlertNotFoundError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def raise_alert(
    r: redis.Redis, keys: Keys, alert: AlertMessage, cooldown_s: float, stream_maxlen: int = 100_000
) -> bool:
    """Publish ``alert`` and log it, unless its (person, camera) is cooling down or it was raised already."""
    record = AlertRecord.from_message(alert)
    fields: list[bytes | str] = []
    for k, v in alert.to_fields().items():
        fields += [k, v]
    script = r.register_script(_RAISE)
    done = script(
        keys=[
            keys.alert_cooldown(alert.person_id, alert.camera), keys.alerts, keys.alert_log, keys.alert_times,
            keys.alert_snapshots, keys.alert_embeddings,
        ],
        args=[
            max(1, int(cooldown_s * 1000)), stream_maxlen, alert.alert_id, alert.capture_ts,
            record.model_dump_json(), alert.snapshot, alert.embedding, *fields,
        ],
    )  # fmt: skip
    return bool(done)


class AlertLog:
    """The audit log of raised alerts."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r, self.keys = r, keys

    def get(self, alert_id: str) -> AlertRecord:
        raw = self.r.hget(self.keys.alert_log, alert_id)
        if raw is None:
            raise AlertNotFoundError(f"no alert {alert_id!r}")
        return AlertRecord.model_validate_json(raw)  # type: ignore[arg-type]

    def snapshot(self, alert_id: str) -> bytes:
        data = self.r.hget(self.keys.alert_snapshots, alert_id)
        if data is None:
            raise AlertNotFoundError(f"alert {alert_id!r} has no snapshot")
        return data  # type: ignore[return-value]

    def embedding(self, alert_id: str) -> np.ndarray | None:
        """The unit embedding of the alert's snapshot detection, or None (an alert raised without one)."""
        data = self.r.hget(self.keys.alert_embeddings, alert_id)
        return None if data is None else np.frombuffer(data, dtype="<f4").astype(np.float32)  # type: ignore[arg-type]

    def list(
        self,
        person_id: str | None = None,
        camera: str | None = None,
        since: float | None = None,
        until: float | None = None,
        acknowledged: bool | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[AlertRecord]:
        """Alerts captured in [since, until] matching the filters, newest first (at most ``limit``)."""
        lo = "-inf" if since is None else since
        hi = "+inf" if until is None else until
        out: list[AlertRecord] = []
        batch, offset = 500, 0
        while len(out) < limit:
            if newest_first:
                ids = self.r.zrevrangebyscore(self.keys.alert_times, hi, lo, start=offset, num=batch)
            else:
                ids = self.r.zrangebyscore(self.keys.alert_times, lo, hi, start=offset, num=batch)
            if not ids:
                break
            offset += len(ids)  # type: ignore[arg-type]
            for raw in self.r.hmget(self.keys.alert_log, ids):  # type: ignore[arg-type]
                if raw is None:
                    continue
                rec = AlertRecord.model_validate_json(raw)
                if person_id is not None and rec.person_id != person_id:
                    continue
                if camera is not None and rec.camera != camera:
                    continue
                if acknowledged is not None and rec.acknowledged != acknowledged:
                    continue
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    def acknowledge(self, alert_id: str, by: str = "", note: str = "", false_match: bool = False) -> AlertRecord:
        """Mark an alert as handled (again: the latest acknowledgement wins); ``false_match``: it was someone else."""
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.alert_log)
                    raw = pipe.hget(self.keys.alert_log, alert_id)
                    if raw is None:
                        raise AlertNotFoundError(f"no alert {alert_id!r}")
                    rec = AlertRecord.model_validate_json(raw).model_copy(
                        update={
                            "acknowledged": True,
                            "acknowledged_by": by,
                            "acknowledged_at": time.time(),
                            "note": note,
                            "false_match": false_match,
                        }
                    )
                    pipe.multi()
                    pipe.hset(self.keys.alert_log, alert_id, rec.model_dump_json())
                    pipe.execute()
                    return rec
                except redis.WatchError:
                    continue

    def count(self) -> int:
        return int(self.r.zcard(self.keys.alert_times))  # type: ignore[arg-type]

    def trim(self, older_than_ts: float) -> int:
        """Delete alerts captured before ``older_than_ts``; returns how many."""
        ids = self.r.zrangebyscore(self.keys.alert_times, "-inf", f"({older_than_ts}")
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.keys.alert_times, *ids)  # type: ignore[misc]
        pipe.hdel(self.keys.alert_log, *ids)  # type: ignore[misc]
        pipe.hdel(self.keys.alert_snapshots, *ids)  # type: ignore[misc]
        pipe.hdel(self.keys.alert_embeddings, *ids)  # type: ignore[misc]
        pipe.execute()
        return len(ids)  # type: ignore[arg-type]


__all__ = ["AlertLog", "AlertNotFoundError", "AlertRecord", "raise_alert"]
