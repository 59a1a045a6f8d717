"""Operator feedback on alerts: "this was not the person" teaches the matcher.

Acknowledging an alert as a false match records it in the audit log and adds the alert's snapshot detection (its
embedding, kept beside the snapshot) to the person's rejections. The matcher then holds that embedding against the
person's photos: the look-alike who paged once, and detections closer to them than to the photos, stop voting for
the person. Acknowledging the alert again without the flag takes the rejection back.
"""

from __future__ import annotations

import contextlib

import redis

from personsearch.streams import Keys
from watchlist.alerts import AlertLog, AlertRecord
from watchlist.store import PersonNotFoundError, Watchlist, WatchlistError


def acknowledge_alert(
    r: redis.Redis, keys: Keys, alert_id: str, by: str = "", note: str = "", false_match: bool = False
) -> AlertRecord:
    """Acknowledge ``alert_id``; ``false_match`` also rejects its detection for the person (see the module).

    Raises AlertNotFoundError (no such alert) and WatchlistError (409: the alert has no stored embedding, or the
    person was re-embedded by another model since). A person deleted since the alert is no error: nothing to teach.
    """
    log = AlertLog(r, keys)
    record = log.get(alert_id)
    watchlist = Watchlist(r, keys)
    if false_match:
        embedding = log.embedding(alert_id)
        if embedding is None:
            raise WatchlistError(
                f"alert {alert_id} has no stored embedding (raised before rejections existed), so it cannot be "
                "rejected; raise the person's threshold instead",
                409,
            )
        with contextlib.suppress(PersonNotFoundError):
            watchlist.reject(
                record.person_id, alert_id, embedding, camera=record.camera, score=record.score, model=record.model,
                by=by,
            )  # fmt: skip
    elif record.false_match:
        with contextlib.suppress(PersonNotFoundError):
            watchlist.remove_rejection(record.person_id, alert_id)
    return log.acknowledge(alert_id, by=by, note=note, false_match=false_match)


__all__ = ["acknowledge_alert"]
