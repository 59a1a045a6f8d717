"""The watchlist: persons to alert on, each with one or more photos and every photo's embedding, kept in Redis.

Redis is the store so that the API, the CLI and every matcher process see one watchlist; the matchers reload when
``Keys.watchlist_version`` changes. A person is written in one MULTI/EXEC transaction after every photo has been
decoded and embedded, so a bad photo in an upload leaves nothing half-written.

A person also keeps *rejections*: detections an operator marked as not being them (an alert acknowledged as a false
match, ``watchlist.feedback``). The matcher holds a person's rejections against their photos: a detection at least as
close to a rejection as to the photos (within the vote margin) does not vote for them, so the look-alike that paged
once does not page again.

Photo rules (each refusal is a ``PhotoError`` carrying an HTTP status and the reason):
- larger than ``max_photo_bytes``: 413; not an image: 415; an image that cannot be decoded (truncated, corrupt): 422;
- without a box the photo must show exactly one person (detected by the same network), else 422 with the boxes found;
- a box outside the photo or too small to be a person: 422.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import redis
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field

from detector.engine import Engine
from index.search import QueryPhotoError, query_embedding
from personsearch.streams import Keys

PERSON_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000
Box = tuple[float, float, float, float]


class WatchlistError(ValueError):
    """A watchlist request that cannot be done as asked; ``status`` is the HTTP status that says why."""

    status: int = 422

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class PhotoError(WatchlistError):
    """A photo that cannot be used; ``boxes`` lists the persons found when the problem is how many there are."""

    def __init__(self, message: str, status: int = 422, boxes: list[Box] | None = None, index: int | None = None):
        super().__init__(message if index is None else f"photo {index + 1}: {message}", status)
        self.boxes = boxes or []
        self.index = index


class DuplicatePersonError(WatchlistError):
    status = 409


class PersonNotFoundError(WatchlistError, KeyError):
    status = 404

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Photo(BaseModel):
    """One reference photo of a person."""

    photo_id: str
    box: Box = Field(description="the person's box in the photo, x1y1x2y2 pixels")
    width: int
    height: int
    sha256: str
    content_type: str
    added_at: float


class Rejection(BaseModel):
    """A detection that is not this person: the snapshot detection of an alert acknowledged as a false match."""

    alert_id: str
    camera: str
    score: float = Field(description="the alert's score (cosine to the person's photos)")
    added_at: float
    added_by: str = ""


class Person(BaseModel):
    """A watchlist entry."""

    person_id: str
    name: str = ""
    notes: str = ""
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, description="cosine threshold; None: the default")
    model: str = Field(default="", description="the network that embedded the photos")
    created_at: float
    updated_at: float
    photos: list[Photo] = Field(default_factory=list)
    rejections: list[Rejection] = Field(
        default_factory=list, description="detections marked as not this person (alerts acknowledged as false matches)"
    )


@dataclass(frozen=True)
class WatchlistEmbeddings:
    """The matcher's view of the watchlist: persons, their photos' and their rejections' unit embeddings."""

    persons: list[Person]
    photos: np.ndarray  # (M, D) float32
    photo_owner: np.ndarray  # (M,) index into persons
    rejections: np.ndarray  # (K, D) float32
    rejection_owner: np.ndarray  # (K,) index into persons


@dataclass(frozen=True)
class PhotoInput:
    """An uploaded photo: its bytes and, optionally, the box of the person in it."""

    data: bytes
    box: Sequence[float] | None = None


def check_person_id(person_id: str) -> str:
    if not PERSON_ID.match(person_id):
        raise WatchlistError(
            f"person id {person_id!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return person_id


def decode_photo(data: bytes, max_bytes: int = MAX_PHOTO_BYTES) -> tuple[np.ndarray, str]:
    """Uploaded bytes -> (RGB (H, W, 3) uint8, MIME type); PhotoError (413/415/422) saying what is wrong."""
    if not data:
        raise PhotoError("the photo is empty", 422)
    if len(data) > max_bytes:
        raise PhotoError(f"the photo is {len(data)} bytes; the limit is {max_bytes}", 413)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise PhotoError("not an image (JPEG, PNG, BMP or WebP expected)", 415) from None
    fmt = (img.format or "").upper()
    if img.width * img.height > MAX_PHOTO_PIXELS:
        raise PhotoError(f"the photo is {img.width}x{img.height}; at most {MAX_PHOTO_PIXELS} pixels", 413)
    try:
        img.load()
        rgb = np.asarray((ImageOps.exif_transpose(img) or img).convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoError(f"the {fmt or 'image'} file is corrupt or truncated ({e})", 422) from None
    if min(rgb.shape[:2]) < 16:
        raise PhotoError(f"the photo is {rgb.shape[1]}x{rgb.shape[0]}; at least 16x16 pixels", 422)
    return rgb, Image.MIME.get(fmt, "application/octet-stream")


class Watchlist:
    """Persons, photos and embeddings in Redis under ``keys``."""

    def __init__(self, r: redis.Redis, keys: Keys, max_photo_bytes: int = MAX_PHOTO_BYTES) -> None:
        self.r, self.keys, self.max_photo_bytes = r, keys, max_photo_bytes

    # -- reading --

    def get(self, person_id: str) -> Person:
        raw = self.r.hget(self.keys.watchlist, person_id)
        if raw is None:
            raise PersonNotFoundError(f"no person {person_id!r} on the watchlist")
        return Person.model_validate_json(raw)  # type: ignore[arg-type]

    def list(self) -> list[Person]:
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.watchlist)  # type: ignore[assignment]
        return sorted((Person.model_validate_json(v) for v in raw.values()), key=lambda p: p.person_id)

    def photo(self, person_id: str, photo_id: str) -> tuple[bytes, str]:
        """The stored photo's bytes and MIME type."""
        person = self.get(person_id)
        meta = next((p for p in person.photos if p.photo_id == photo_id), None)
        data = self.r.hget(self.keys.watchlist_photos, photo_id) if meta is not None else None
        if meta is None or data is None:
            raise PersonNotFoundError(f"person {person_id!r} has no photo {photo_id!r}")
        return data, meta.content_type  # type: ignore[return-value]

    def version(self) -> int:
        return int(self.r.get(self.keys.watchlist_version) or 0)  # type: ignore[arg-type]

    def embeddings(self) -> WatchlistEmbeddings:
        """Every person with the unit embeddings of all their photos and rejections.

        Read in one transaction with the person records, so a concurrent change is seen whole or not at all.
        """
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self.keys.watchlist)
        pipe.hgetall(self.keys.watchlist_embeddings)
        persons_raw, embs_raw = pipe.execute()
        persons = sorted((Person.model_validate_json(v) for v in persons_raw.values()), key=lambda p: p.person_id)

        def gather(keys_of: Callable[[Person], builtins.list[str]]) -> tuple[np.ndarray, np.ndarray]:
            rows, owner = [], []
            for i, person in enumerate(persons):
                for key in keys_of(person):
                    blob = embs_raw.get(key.encode())
                    if blob is not None:
                        rows.append(np.frombuffer(blob, dtype="<f4"))
                        owner.append(i)
            matrix = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
            return matrix, np.asarray(owner, np.int64)

        photos, photo_owner = gather(lambda p: [_photo_key(p.person_id, x.photo_id) for x in p.photos])
        rejections, rejection_owner = gather(lambda p: [_rejection_key(p.person_id, x.alert_id) for x in p.rejections])
        return WatchlistEmbeddings(persons, photos, photo_owner, rejections, rejection_owner)

    # -- writing --

    def add(
        self,
        engine: Engine,
        person_id: str,
        photos: Sequence[PhotoInput],
        name: str = "",
        threshold: float | None = None,
        notes: str = "",
    ) -> Person:
        """Add a person with one or more photos; nothing is written unless every photo is usable."""
        check_person_id(person_id)
        if not photos:
            raise WatchlistError("a person needs at least one photo")
        if self.r.hexists(self.keys.watchlist, person_id):
            raise DuplicatePersonError(f"person {person_id!r} is already on the watchlist")
        now = time.time()
        prepared = [self._prepare(engine, p, i) for i, p in enumerate(photos)]
        person = Person(
            person_id=person_id, name=name, notes=notes, threshold=threshold, model=engine.model_name,
            created_at=now, updated_at=now, photos=[meta for meta, _, _ in prepared],
        )  # fmt: skip
        self._write(person, prepared, new=True)
        return person

    def add_photos(self, engine: Engine, person_id: str, photos: Sequence[PhotoInput]) -> Person:
        """More photos of a listed person (all usable, or none is added)."""
        person = self.get(person_id)
        if person.model and person.model != engine.model_name:
            raise WatchlistError(
                f"person {person_id!r} was embedded with {person.model}, the engine is {engine.model_name}; "
                "re-embed the watchlist first",
                409,
            )
        prepared = [self._prepare(engine, p, i) for i, p in enumerate(photos)]
        person = person.model_copy(
            update={"photos": person.photos + [m for m, _, _ in prepared], "updated_at": time.time()}
        )
        self._write(person, prepared, new=False)
        return person

    def update(
        self,
        person_id: str,
        *,
        name: str | None = None,
        notes: str | None = None,
        threshold: float | None = None,
        clear_threshold: bool = False,
    ) -> Person:
        """Change a person's name, notes or threshold (``clear_threshold`` goes back to the default)."""
        person = self.get(person_id)
        changes: dict[str, object] = {"updated_at": time.time()}
        if name is not None:
            changes["name"] = name
        if notes is not None:
            changes["notes"] = notes
        if threshold is not None:
            if not -1.0 <= threshold <= 1.0:
                raise WatchlistError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
            changes["threshold"] = threshold
        if clear_threshold:
            changes["threshold"] = None
        person = person.model_copy(update=changes)
        self._write(person, [], new=False)
        return person

    def remove_photo(self, person_id: str, photo_id: str) -> Person:
        """Delete one photo and its embedding; the last photo cannot go (delete the person instead)."""
        person = self.get(person_id)
        if all(p.photo_id != photo_id for p in person.photos):
            raise PersonNotFoundError(f"person {person_id!r} has no photo {photo_id!r}")
        if len(person.photos) == 1:
            raise WatchlistError(f"{photo_id} is the only photo of {person_id!r}; delete the person instead", 409)
        person = person.model_copy(
            update={"photos": [p for p in person.photos if p.photo_id != photo_id], "updated_at": time.time()}
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.watchlist, person_id, person.model_dump_json())
        pipe.hdel(self.keys.watchlist_embeddings, _photo_key(person_id, photo_id))
        pipe.hdel(self.keys.watchlist_photos, photo_id)
        pipe.incr(self.keys.watchlist_version)
        pipe.execute()
        return person

    def reject(
        self, person_id: str, alert_id: str, embedding: np.ndarray, *, camera: str, score: float, model: str,
        by: str = "",
    ) -> Person:  # fmt: skip
        """Record that the detection behind ``alert_id`` (its unit ``embedding``) is not this person (idempotent)."""
        person = self.get(person_id)
        if any(x.alert_id == alert_id for x in person.rejections):
            return person
        if person.model and model and person.model != model:
            raise WatchlistError(
                f"alert {alert_id} was embedded with {model}, person {person_id!r} with {person.model}", 409
            )
        emb = np.ascontiguousarray(np.asarray(embedding, np.float32).ravel(), dtype="<f4")
        rejection = Rejection(alert_id=alert_id, camera=camera, score=score, added_at=time.time(), added_by=by)
        person = person.model_copy(update={"rejections": [*person.rejections, rejection], "updated_at": time.time()})
        self._write(person, [], new=False, embeddings={_rejection_key(person_id, alert_id): emb})
        return person

    def remove_rejection(self, person_id: str, alert_id: str) -> Person:
        """Forget a rejection: that detection may vote for the person again."""
        person = self.get(person_id)
        if all(x.alert_id != alert_id for x in person.rejections):
            raise PersonNotFoundError(f"person {person_id!r} has no rejection of alert {alert_id!r}")
        person = person.model_copy(
            update={"rejections": [x for x in person.rejections if x.alert_id != alert_id], "updated_at": time.time()}
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.keys.watchlist, person_id, person.model_dump_json())
        pipe.hdel(self.keys.watchlist_embeddings, _rejection_key(person_id, alert_id))
        pipe.incr(self.keys.watchlist_version)
        pipe.execute()
        return person

    def delete(self, person_id: str) -> Person:
        """Remove the person, every photo and every embedding of theirs (matchers drop them on their next read)."""
        person = self.get(person_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.keys.watchlist, person_id)
        for p in person.photos:
            pipe.hdel(self.keys.watchlist_embeddings, _photo_key(person_id, p.photo_id))
            pipe.hdel(self.keys.watchlist_photos, p.photo_id)
        for x in person.rejections:
            pipe.hdel(self.keys.watchlist_embeddings, _rejection_key(person_id, x.alert_id))
        pipe.incr(self.keys.watchlist_version)
        pipe.execute()
        return person

    def reembed(self, engine: Engine) -> builtins.list[Person]:
        """Embed every stored photo again with ``engine`` (after the model changed), all persons in one transaction.

        The photos' boxes are kept, so nothing is detected again. A photo that no longer decodes is an error and
        nothing is written. Rejections are dropped: they are detections embedded by the old network.
        """
        persons = self.list()
        updated, rows = [], []
        for person in persons:
            for photo in person.photos:
                data = self.r.hget(self.keys.watchlist_photos, photo.photo_id)
                if data is None:
                    raise WatchlistError(f"photo {photo.photo_id} of {person.person_id!r} is missing from Redis", 500)
                image, _ = decode_photo(data, max(self.max_photo_bytes, len(data)))  # type: ignore[arg-type]
                emb = engine.embed(image, np.asarray([photo.box], np.float32))[0]
                rows.append((_photo_key(person.person_id, photo.photo_id), np.ascontiguousarray(emb, dtype="<f4")))
            updated.append(
                person.model_copy(update={"model": engine.model_name, "rejections": [], "updated_at": time.time()})
            )
        pipe = self.r.pipeline(transaction=True)
        for old, person in zip(persons, updated, strict=True):
            pipe.hset(self.keys.watchlist, person.person_id, person.model_dump_json())
            for x in old.rejections:
                pipe.hdel(self.keys.watchlist_embeddings, _rejection_key(person.person_id, x.alert_id))
        for key, emb in rows:
            pipe.hset(self.keys.watchlist_embeddings, key, emb.tobytes())
        pipe.incr(self.keys.watchlist_version)
        pipe.execute()
        return updated

    # -- helpers --

    def _prepare(self, engine: Engine, photo: PhotoInput, index: int) -> tuple[Photo, np.ndarray, bytes]:
        try:
            image, mime = decode_photo(photo.data, self.max_photo_bytes)
        except PhotoError as e:
            raise PhotoError(str(e), e.status, e.boxes, index) from None
        if photo.box is not None and len(photo.box) != 4:
            raise PhotoError(f"a box is 4 numbers x1,y1,x2,y2; got {list(photo.box)}", 422, index=index)
        try:
            emb, box = query_embedding(engine, image, photo.box)
        except QueryPhotoError as e:
            raise PhotoError(str(e), 422, list(e.boxes), index) from None
        h, w = image.shape[:2]
        meta = Photo(
            photo_id=f"ph-{uuid.uuid4().hex[:12]}", box=box, width=w, height=h,
            sha256=hashlib.sha256(photo.data).hexdigest(), content_type=mime, added_at=time.time(),
        )  # fmt: skip
        return meta, np.ascontiguousarray(emb, dtype="<f4"), photo.data

    def _write(
        self,
        person: Person,
        prepared: Sequence[tuple[Photo, np.ndarray, bytes]],
        new: bool,
        embeddings: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Write the person record, the new photos and ``embeddings`` atomically; ``new`` refuses an id taken
        meanwhile."""
        with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.watchlist)
                    exists = pipe.hexists(self.keys.watchlist, person.person_id)
                    if new and exists:
                        raise DuplicatePersonError(f"person {person.person_id!r} is already on the watchlist")
                    if not new and not exists:
                        raise PersonNotFoundError(f"no person {person.person_id!r} on the watchlist")
                    pipe.multi()
                    pipe.hset(self.keys.watchlist, person.person_id, person.model_dump_json())
                    for meta, emb, data in prepared:
                        key = _photo_key(person.person_id, meta.photo_id)
                        pipe.hset(self.keys.watchlist_embeddings, key, emb.tobytes())
                        pipe.hset(self.keys.watchlist_photos, meta.photo_id, data)
                    for key, emb in (embeddings or {}).items():
                        pipe.hset(self.keys.watchlist_embeddings, key, emb.tobytes())
                    pipe.incr(self.keys.watchlist_version)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue


def _photo_key(person_id: str, photo_id: str) -> str:
    return f"{person_id}/{photo_id}"


def _rejection_key(person_id: str, alert_id: str) -> str:
    return f"{person_id}/rejected:{alert_id}"


__all__ = [
    "DuplicatePersonError",
    "Person",
    "PersonNotFoundError",
    "Photo",
    "PhotoError",
    "PhotoInput",
    "Rejection",
    "Watchlist",
    "WatchlistEmbeddings",
    "WatchlistError",
    "check_person_id",
    "decode_photo",
]
