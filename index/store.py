"""The tracklet index: FAISS behind one small interface, persisted together with the stream position it covers.

Index kinds
    ``flat``: ``IndexIDMap2`` over ``IndexFlatIP``. Exact inner-product search; a query reads every vector, so its
    latency grows linearly with the index.
    ``ivf``: ``IndexIVFFlat`` with inner product (spherical k-means coarse quantizer) and a hash-table direct map. A
    query reads ``nprobe`` of ``nlist`` inverted lists. IVF needs training, so an ``ivf`` index starts as ``flat``
    (exact) and, once it holds ``IvfOptions.train_size`` tracklets, trains on those tracklets (the first it was given)
    and moves them over. Training happens once, inside the upsert that crosses the threshold (about 5 s on one core at
    the default 65536 tracklets and 1024 lists); the centroids are never retrained. That is safe because an index only
    ever holds one model's embeddings (see below), whose distribution does not move. Vectors stay uncompressed (Flat
    codes), so scores are exact cosines and ``get`` returns the stored vector; only the choice of which tracklets are
    scored is approximate.

Why IDMap2 and IVF with a direct map, not HNSW
    Tracklets are removed all day: every update of a tracklet replaces its vector, and retention deletes old ones.
    HNSW cannot remove a vector. ``IndexIDMap2`` can (by compacting the array, O(N)), and ``IndexIVFFlat`` with a
    hash-table direct map removes an id in O(list length). Both also reconstruct a vector by id, which ``get``, IVF
    training and filtered search rely on (plain ``IndexIDMap`` and an IVF without a direct map cannot).

Ids and dead entries
    Every upsert gets a fresh int64 faiss id from a counter saved with the snapshot; the tracklet's previous id dies and
    is never reused. So a copy of the index that still holds a dead id (a flat index whose removals are batched, a GPU
    replica that is refreshed lazily) can only return ids the metadata table does not know, and search drops them like
    any other filtered-out hit. Removing from a flat index rewrites the whole array, so dead flat entries are removed in
    batches (when they reach 10% of the index, and before every save); an IVF index removes them at once.

Metadata and filters
    Live metadata sits in memory as dense numpy columns (one row per tracklet), so a camera or time filter is one
    vector mask. A filtered search that passes few tracklets (at most 1/16 of the index) scores exactly those tracklets
    (their vectors reconstructed by id): exact, and cheaper than searching the whole index for them. Otherwise it asks
    faiss for enough neighbours to expect ``k`` survivors (k divided by the passing fraction, times 1.5) and, while it
    is short, asks again 4x deeper (and, for IVF, with 4x the ``nprobe`` once the probed lists run out) until it has
    ``k`` or has seen every vector. A time filter keeps tracklets whose [start_ts, end_ts] overlaps [since, until].

Persistence and replay
    ``save(position)`` writes the vectors (faiss file) and the metadata (SQLite file) under new generation-numbered
    names, fsyncs them, then commits by atomically replacing ``manifest.json``, which names that generation, the model,
    the dimension, the id counter and ``position`` (the stream entry id up to which events are applied). A process
    killed at any point of a save leaves the previous manifest and the files it names intact; files of an unfinished
    save, and snapshot JPEGs that no saved tracklet refers to, are removed when the directory is next opened.
    After a restart the caller loads the index, reads ``position`` and replays the stream after it. Replay is safe
    because applying an event twice changes nothing: an upsert replaces the entry with the same tracklet id (and an
    identical one is a no-op), and deleting an unknown id does nothing. Snapshot JPEGs are written (atomically) when an
    upsert happens, not at save: a JPEG newer than the snapshot is an orphan until the replay writes it again.
    One process owns a directory: two writers would remove each other's unsaved files.

Models
    The manifest records the model name and embedding size; opening a directory with another model or size raises
    ``SnapshotMismatchError``, because embeddings of different models are not comparable and must never be mixed.

Devices
    ``device="gpu"`` (or ``"auto"`` when faiss sees a GPU) keeps the CPU index as the one that is modified and saved,
    and searches a GPU replica of it: new vectors are added to both; removals only to the CPU index, and the replica is
    cloned again when it holds 10% more entries than there are live tracklets, or after a compaction or training. A
    search deeper than faiss-GPU's limit (k or nprobe above 2048) runs on the CPU index.

Threads
    faiss's OpenMP thread count is process-wide, so this module leaves it alone. On a CPU that other busy processes
    share (the detector, decoders), OpenMP threads waiting for each other make batch-of-1 work very slow: measured on 2
    busy cores, a 20k flat search took 24 ms with 2 threads against 0.9 ms with one, and a single-vector IVF add 8 ms
    against 6 us. The process that owns the index should call ``faiss.omp_set_num_threads(1)`` (or a few) at start-up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf")
DEVICES = ("auto", "cpu", "gpu")
NEW_POSITION = "0-0"
MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots"
FORMAT = 1

SUBSET_RATIO = 16  # a filter passing at most 1/16 of the index scores its tracklets directly
SUBSET_CHUNK = 65536  # vectors reconstructed at a time by that direct scoring (64 MiB at 256-d)
DEEPEN = 4  # growth of k (and nprobe) per extra round of a filtered search
FLAT_DEAD_FRACTION = 0.1  # dead flat entries (or stale replica entries) tolerated before removing them in one pass
FLAT_DEAD_MIN = 1024
GPU_MAX_K = 2048  # faiss-GPU's largest k and nprobe
DIRECT_MAP_HASHTABLE: int = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]  # absent from faiss's stub


class SnapshotError(RuntimeError):
    """An index directory whose snapshot cannot be used (corrupt, or written by an unknown format)."""


class SnapshotMismatchError(SnapshotError):
    """A snapshot of another model or embedding size: its vectors must not be mixed with this model's."""


@dataclass(frozen=True)
class TrackletRecord:
    """Metadata kept beside a tracklet's vector."""

    tracklet_id: str
    camera: str
    start_ts: float  # Unix seconds
    end_ts: float
    frames: int
    best_box: tuple[float, float, float, float]  # x1y1x2y2 frame pixels
    best_score: float
    best_seq: int  # frame sequence number of the best frame
    snapshot: str | None = None  # file name of the JPEG snapshot inside the index directory, if any


@dataclass(frozen=True)
class SearchHit:
    """One search result."""

    record: TrackletRecord
    score: float  # cosine similarity (inner product of unit vectors)


@dataclass(frozen=True)
class IvfOptions:
    """Shape of the IVF index: lists, lists probed per query, and tracklets collected before training."""

    nlist: int = 1024  # about 4*sqrt(N) suits N around 100k..1M tracklets
    nprobe: int = 32  # recall against latency; the benchmark measures both
    train_size: int = 65536  # 64 per list; faiss wants at least 39

    def __post_init__(self) -> None:
        if not 1 <= self.nprobe <= self.nlist:
            raise ValueError(f"nprobe must be in [1, nlist={self.nlist}], got {self.nprobe}")
        if self.train_size < 39 * self.nlist:
            raise ValueError(f"train_size {self.train_size} is too small for {self.nlist} lists (at least 39 each)")


class _TrackletTable:
    """Live tracklets' metadata as dense columns (row i is one tracklet), so filters are numpy masks over rows."""

    COLUMNS = ("fid", "camera", "start", "end", "frames", "box", "score", "seq")

    def __init__(self, capacity: int = 1024) -> None:
        self.n = 0
        self.fid = np.empty(capacity, np.int64)
        self.camera = np.empty(capacity, np.int32)  # code into self.cameras
        self.start = np.empty(capacity, np.float64)
        self.end = np.empty(capacity, np.float64)
        self.frames = np.empty(capacity, np.int64)
        self.box = np.empty((capacity, 4), np.float64)
        self.score = np.empty(capacity, np.float64)
        self.seq = np.empty(capacity, np.int64)
        self.ids: list[str] = []
        self.snapshots: list[str | None] = []
        self.row_of: dict[str, int] = {}
        self.row_of_fid: dict[int, int] = {}
        self.cameras: list[str] = []
        self.camera_code: dict[str, int] = {}

    def __len__(self) -> int:
        return self.n

    def add(self, record: TrackletRecord, fid: int) -> None:
        """Append a row for ``record`` stored under faiss id ``fid`` (the tracklet must not be in the table)."""
        if self.n == len(self.fid):
            for name in self.COLUMNS:
                old = getattr(self, name)
                grown = np.empty((2 * len(old), *old.shape[1:]), old.dtype)
                grown[: self.n] = old[: self.n]
                setattr(self, name, grown)
        r = self.n
        code = self.camera_code.setdefault(record.camera, len(self.cameras))
        if code == len(self.cameras):
            self.cameras.append(record.camera)
        self.fid[r], self.camera[r], self.start[r], self.end[r] = fid, code, record.start_ts, record.end_ts
        self.frames[r], self.box[r], self.score[r], self.seq[r] = (
            record.frames,
            record.best_box,
            record.best_score,
            record.best_seq,
        )
        self.ids.append(record.tracklet_id)
        self.snapshots.append(record.snapshot)
        self.row_of[record.tracklet_id] = r
        self.row_of_fid[fid] = r
        self.n += 1

    def remove(self, tracklet_id: str) -> tuple[int, str | None] | None:
        """Drop a tracklet's row (the last row moves into its place); its faiss id and snapshot name, or None."""
        r = self.row_of.pop(tracklet_id, None)
        if r is None:
            return None
        fid, snapshot = int(self.fid[r]), self.snapshots[r]
        del self.row_of_fid[fid]
        last = self.n - 1
        if r != last:
            for name in self.COLUMNS:
                column = getattr(self, name)
                column[r] = column[last]
            self.ids[r], self.snapshots[r] = self.ids[last], self.snapshots[last]
            self.row_of[self.ids[r]] = r
            self.row_of_fid[int(self.fid[r])] = r
        self.ids.pop()
        self.snapshots.pop()
        self.n = last
        return fid, snapshot

    def record(self, r: int) -> TrackletRecord:
        """The record of row ``r``."""
        x1, y1, x2, y2 = (float(v) for v in self.box[r])
        return TrackletRecord(
            tracklet_id=self.ids[r],
            camera=self.cameras[self.camera[r]],
            start_ts=float(self.start[r]),
            end_ts=float(self.end[r]),
            frames=int(self.frames[r]),
            best_box=(x1, y1, x2, y2),
            best_score=float(self.score[r]),
            best_seq=int(self.seq[r]),
            snapshot=self.snapshots[r],
        )

    def rows_of_fids(self, fids: np.ndarray) -> np.ndarray:
        """(K,) faiss ids -> (K,) rows; -1 for padding (-1) and dead ids."""
        return np.fromiter((self.row_of_fid.get(int(f), -1) for f in fids), np.int64, len(fids))

    def mask(self, cameras: Collection[str] | None, since: float | None, until: float | None) -> np.ndarray | None:
        """(n,) bool: rows on one of ``cameras`` whose [start, end] overlaps [since, until]; None: no filter."""
        if cameras is None and since is None and until is None:
            return None
        keep = np.ones(self.n, bool)
        if cameras is not None:
            codes = [self.camera_code[c] for c in cameras if c in self.camera_code]
            keep &= np.isin(self.camera[: self.n], codes)
        if since is not None:
            keep &= self.end[: self.n] >= since
        if until is not None:
            keep &= self.start[: self.n] <= until
        return keep

    def ended_before(self, ts: float) -> list[str]:
        """Tracklet ids with end_ts < ts."""
        return [self.ids[r] for r in np.flatnonzero(self.end[: self.n] < ts)]

    def live_fids(self) -> np.ndarray:
        """(n,) int64 faiss ids of the live tracklets."""
        return self.fid[: self.n].copy()

    def sql_rows(self) -> Iterator[tuple[Any, ...]]:
        """Rows for the snapshot's ``tracklets`` table, in the order of ``_TRACKLET_COLUMNS``."""
        for r in range(self.n):
            rec = self.record(r)
            yield (
                int(self.fid[r]),
                rec.tracklet_id,
                rec.camera,
                rec.start_ts,
                rec.end_ts,
                rec.frames,
                *rec.best_box,
                rec.best_score,
                rec.best_seq,
                rec.snapshot,
            )


_TRACKLET_COLUMNS = (
    "faiss_id INTEGER PRIMARY KEY, tracklet_id TEXT NOT NULL UNIQUE, camera TEXT NOT NULL, start_ts REAL NOT NULL, "
    "end_ts REAL NOT NULL, frames INTEGER NOT NULL, x1 REAL, y1 REAL, x2 REAL, y2 REAL, best_score REAL NOT NULL, "
    "best_seq INTEGER NOT NULL, snapshot TEXT"
)


class TrackletIndex:
    """Tracklet embeddings and metadata of one model, searchable by cosine similarity with camera and time filters."""

    def __init__(
        self,
        directory: Path,
        dim: int = 256,
        model: str = "",
        kind: str = "flat",
        device: str = "auto",
        ivf: IvfOptions | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only`` opens another process's index to search it (the API): nothing in the directory is touched."""
        if kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {kind!r}")
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.directory = Path(directory)
        self.dim = dim
        self.model = model
        self.kind = kind
        self.ivf = ivf or IvfOptions()
        self.device = _resolve_device(device)
        self._lock = threading.RLock()  # faiss indexes must not be searched while they are modified
        self._table = _TrackletTable()
        self._index: Any = _new_flat(dim)
        self._dead: list[int] = []  # flat faiss ids still in the index, removed in batches
        self._replica: Any = None  # GPU copy of self._index, searched when device is "gpu"
        self._gpu_resources: Any = None
        self._next_id = 0
        self._position = NEW_POSITION
        self._generation = 0
        self._files: tuple[str, str] | None = None  # vectors and tracklets files of the loaded/saved snapshot
        self.read_only = read_only
        if read_only:
            if (self.directory / MANIFEST).exists():
                self._load()
            return
        (self.directory / SNAPSHOTS).mkdir(parents=True, exist_ok=True)
        if (self.directory / MANIFEST).exists():
            self._load()
        self._remove_unsaved_files()
        self._adopt_kind()

    # -- writing ---------------------------------------------------------------------------------------------------

    def upsert(self, record: TrackletRecord, embedding: np.ndarray, snapshot_jpeg: bytes | None = None) -> None:
        """Add or replace a tracklet; embedding (D,) float32, normalised here; the JPEG goes to snapshots/.

        ``record.snapshot`` is ignored: the index names the snapshot file. An update without a JPEG (None or empty)
        keeps the tracklet's previous snapshot.
        """
        vector = self._unit_row(embedding, "embedding")
        with self._lock:
            row = self._table.row_of.get(record.tracklet_id)
            previous = self._table.record(row) if row is not None else None
            snapshot = previous.snapshot if previous is not None else None
            if snapshot_jpeg:
                snapshot = self._write_snapshot(record.tracklet_id, snapshot_jpeg)
            record = replace(record, snapshot=snapshot)
            if row is not None:
                old_fid = int(self._table.fid[row])
                if previous == record and np.array_equal(self._index.reconstruct(old_fid), vector[0]):
                    return  # the same event applied again (replay after a restart)
                self._table.remove(record.tracklet_id)
                self._forget([old_fid])
            fid = self._next_id
            self._next_id += 1
            ids = np.array([fid], np.int64)
            self._index.add_with_ids(vector, ids)
            if self._replica is not None:
                self._replica.add_with_ids(vector, ids)
            self._table.add(record, fid)
            self._maybe_train()

    def delete(self, tracklet_ids: Iterable[str]) -> int:
        """Remove tracklets (vector, metadata and snapshot file); unknown ids are ignored; how many were removed."""
        with self._lock:
            fids: list[int] = []
            for tracklet_id in tracklet_ids:
                gone = self._table.remove(tracklet_id)
                if gone is None:
                    continue
                fids.append(gone[0])
                if gone[1] is not None:
                    (self.directory / SNAPSHOTS / gone[1]).unlink(missing_ok=True)
            self._forget(fids)
            return len(fids)

    def delete_older_than(self, ts: float) -> int:
        """Retention: remove tracklets that ended before ``ts`` (Unix seconds); how many were removed."""
        with self._lock:
            return self.delete(self._table.ended_before(ts))

    # -- reading ---------------------------------------------------------------------------------------------------

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        cameras: Collection[str] | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[SearchHit]:
        """The ``k`` tracklets most like ``query`` (D,), best first, on ``cameras`` and overlapping [since, until]."""
        q = self._unit_row(query, "query")
        if isinstance(cameras, str):
            cameras = [cameras]  # a lone camera id, not a collection of one-letter cameras
        with self._lock:
            mask = self._table.mask(cameras, since, until)
            passing = len(self._table) if mask is None else int(mask.sum())
            if k <= 0 or passing == 0:
                return []
            if mask is not None and passing * SUBSET_RATIO <= self._index.ntotal:
                rows, scores = self._score_rows(q, np.flatnonzero(mask), k)
            else:
                rows, scores = self._search_deepening(q, k, mask, passing)
            return [SearchHit(self._table.record(int(r)), float(s)) for r, s in zip(rows, scores)]

    def get(self, tracklet_id: str) -> tuple[TrackletRecord, np.ndarray] | None:
        """The tracklet's record and its stored unit vector (D,) float32, or None."""
        with self._lock:
            row = self._table.row_of.get(tracklet_id)
            if row is None:
                return None
            return self._table.record(row), self._index.reconstruct(int(self._table.fid[row]))

    def snapshot_path(self, record: TrackletRecord) -> Path | None:
        """Path of the record's snapshot JPEG, or None if it has none (or its file is gone)."""
        if record.snapshot is None:
            return None
        path = self.directory / SNAPSHOTS / record.snapshot
        return path if path.is_file() else None

    @property
    def position(self) -> str:
        """Stream entry id up to which events are applied in the loaded or last saved snapshot; "0-0" when new."""
        return self._position

    def __len__(self) -> int:
        return len(self._table)

    # -- persistence -----------------------------------------------------------------------------------------------

    def save(self, position: str) -> None:
        """Atomically persist vectors, metadata and ``position``; a crash mid-save leaves the previous snapshot."""
        if self.read_only:
            raise SnapshotError(f"{self.directory} is open read-only")
        started = time.perf_counter()
        with self._lock:
            self._compact()
            generation = self._generation + 1
            files = (f"vectors-{generation:06d}.faiss", f"tracklets-{generation:06d}.sqlite")
            self._write_vectors(self.directory / files[0])
            self._write_tracklets(self.directory / files[1])
            manifest = {
                "format": FORMAT,
                "model": self.model,
                "dim": self.dim,
                "index": _describe(self._index),
                "count": len(self._table),
                "position": position,
                "next_id": self._next_id,
                "generation": generation,
                "vectors": files[0],
                "tracklets": files[1],
                "saved_at": time.time(),
            }
            _write_atomically(self.directory / MANIFEST, json.dumps(manifest, indent=2).encode())
            _fsync_directory(self.directory)
            self._generation, self._files, self._position = generation, files, position
            self._remove_unsaved_files(snapshots=False)
        logger.info(
            "saved %d tracklets at position %s to %s in %.2f s",
            len(self),
            position,
            self.directory,
            time.perf_counter() - started,
        )

    def _load(self) -> None:
        """Read the snapshot the manifest names, refusing another model's or dimension's."""
        try:
            manifest = json.loads((self.directory / MANIFEST).read_text())
            if manifest.get("format") != FORMAT:
                raise SnapshotError(f"{self.directory} holds index format {manifest.get('format')}, expected {FORMAT}")
            missing = {"model", "dim", "position", "next_id", "generation", "vectors", "tracklets"} - set(manifest)
        except (OSError, ValueError, AttributeError) as e:
            raise SnapshotError(f"{self.directory / MANIFEST} is unreadable: {e}") from e
        if missing:
            raise SnapshotError(f"{self.directory / MANIFEST} lacks {sorted(missing)}")
        if manifest["model"] != self.model or manifest["dim"] != self.dim:
            raise SnapshotMismatchError(
                f"{self.directory} holds {manifest['dim']}-d embeddings of model {manifest['model']!r}; this index is "
                f"for {self.dim}-d embeddings of model {self.model!r}. Embeddings of different models cannot be mixed: "
                "use another directory, or delete this one and re-index."
            )
        vectors, tracklets = self.directory / manifest["vectors"], self.directory / manifest["tracklets"]
        try:
            index = faiss.read_index(str(vectors))
            with closing(sqlite3.connect(f"file:{tracklets}?mode=ro", uri=True)) as db:
                for fid, tid, camera, start, end, frames, x1, y1, x2, y2, score, seq, snap in db.execute(
                    "SELECT faiss_id, tracklet_id, camera, start_ts, end_ts, frames, x1, y1, x2, y2, best_score, "
                    "best_seq, snapshot FROM tracklets ORDER BY faiss_id"
                ):
                    record = TrackletRecord(tid, camera, start, end, frames, (x1, y1, x2, y2), score, seq, snap)
                    self._table.add(record, fid)
        except (RuntimeError, sqlite3.Error) as e:
            raise SnapshotError(f"snapshot {manifest['generation']} in {self.directory} is unreadable: {e}") from e
        if not isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVFFlat)) or index.d != self.dim:
            raise SnapshotError(f"{vectors} holds a {_describe(index)} index, not one this store writes")
        if index.ntotal != len(self._table):
            raise SnapshotError(f"{vectors} holds {index.ntotal} vectors but {tracklets} {len(self._table)} tracklets")
        if isinstance(index, faiss.IndexIVFFlat):
            index.set_direct_map_type(DIRECT_MAP_HASHTABLE)  # no-op when saved with it, as this store does
        self._index = index
        self._next_id = int(manifest["next_id"])
        self._position = str(manifest["position"])
        self._generation = int(manifest["generation"])
        self._files = (manifest["vectors"], manifest["tracklets"])
        logger.info(
            "loaded %d tracklets (%s) at position %s from %s",
            len(self._table),
            _describe(index),
            self._position,
            self.directory,
        )

    def _write_vectors(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self._index, str(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)

    def _write_tracklets(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            # SQLite rather than JSON: a million rows stream in and out without one huge string in memory, columns are
            # typed, and an operator can query the file with the sqlite3 shell. No journal: the file is not live until
            # the manifest names it, and it is fsynced before that.
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute(f"CREATE TABLE tracklets ({_TRACKLET_COLUMNS})")
            db.executemany(f"INSERT INTO tracklets VALUES ({', '.join('?' * 13)})", self._table.sql_rows())
            db.commit()
        finally:
            db.close()
        _fsync_file(tmp)
        os.replace(tmp, path)

    def _remove_unsaved_files(self, snapshots: bool = True) -> None:
        """Remove files of unfinished or superseded saves and, if ``snapshots``, JPEGs no tracklet refers to."""
        keep = set(self._files or ())
        for path in self.directory.iterdir():
            ours = path.name.startswith(("vectors-", "tracklets-")) or path.name.endswith(".tmp")
            if ours and path.is_file() and path.name not in keep:
                path.unlink(missing_ok=True)
        if snapshots:
            referenced = set(self._table.snapshots)
            orphans = [p for p in (self.directory / SNAPSHOTS).iterdir() if p.is_file() and p.name not in referenced]
            for path in orphans:
                path.unlink(missing_ok=True)
            if orphans:
                logger.info("removed %d snapshot files no saved tracklet refers to", len(orphans))

    def _write_snapshot(self, tracklet_id: str, jpeg: bytes) -> str:
        """Write the tracklet's JPEG atomically under a stable name; the name."""
        # A stable name per tracklet: the saved record keeps pointing at a file even if a crash follows an update.
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", tracklet_id)[:64]
        name = f"{slug}-{hashlib.sha1(tracklet_id.encode()).hexdigest()[:10]}.jpg"
        _write_atomically(self.directory / SNAPSHOTS / name, jpeg, fsync=False)
        return name

    # -- faiss -----------------------------------------------------------------------------------------------------

    def _unit_row(self, vector: np.ndarray, what: str) -> np.ndarray:
        """(D,) -> (1, D) float32 of unit norm, so inner product is cosine; rejects wrong shapes, NaN and zeros."""
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (self.dim,):
            raise ValueError(f"{what} must have shape ({self.dim},), got {v.shape}")
        norm = float(np.linalg.norm(v))
        if not math.isfinite(norm) or norm < 1e-12:
            raise ValueError(f"{what} has norm {norm}: cannot be normalised")
        if abs(norm - 1.0) > 1e-5:  # leave unit vectors bit-exact, so replaying an event is recognised as a no-op
            v = v / norm
        return np.ascontiguousarray(v.reshape(1, self.dim))

    @property
    def _is_ivf(self) -> bool:
        return isinstance(self._index, faiss.IndexIVFFlat)

    def _forget(self, fids: list[int]) -> None:
        """Take dead faiss ids out of the index: at once for IVF, in batches for flat (each removal is O(N))."""
        if not fids:
            return
        if self._is_ivf:
            ids = np.asarray(fids, np.int64)
            self._index.remove_ids(faiss.IDSelectorArray(ids))  # the hash-table direct map removes only by array
            return
        self._dead.extend(fids)
        if len(self._dead) >= max(FLAT_DEAD_MIN, FLAT_DEAD_FRACTION * self._index.ntotal):
            self._compact()

    def _compact(self) -> None:
        """Remove the dead entries of a flat index in one pass."""
        if not self._dead:
            return
        removed = self._index.remove_ids(np.asarray(self._dead, np.int64))
        logger.debug("compacted the flat index: %d dead entries removed", removed)
        self._dead.clear()
        self._replica = None

    def _maybe_train(self) -> None:
        """Turn an untrained ``ivf`` index (still flat) into IVF once it holds ``train_size`` tracklets."""
        if self.kind != "ivf" or self._is_ivf or len(self._table) < self.ivf.train_size:
            return
        started = time.perf_counter()
        self._compact()
        vectors = faiss.downcast_index(self._index.index).reconstruct_n(0, self._index.ntotal)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, self.ivf.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors)
        ivf.set_direct_map_type(DIRECT_MAP_HASHTABLE)
        ivf.add_with_ids(vectors, ids)
        self._index, self._replica = ivf, None
        logger.info(
            "trained IVF (%d lists) on the first %d tracklets in %.1f s",
            self.ivf.nlist,
            len(ids),
            time.perf_counter() - started,
        )

    def _adopt_kind(self) -> None:
        """Make a loaded index the asked kind: train an ``ivf`` one if due, rebuild an IVF snapshot opened as flat."""
        if self.kind == "ivf":
            self._maybe_train()
        elif self._is_ivf:
            fids = self._table.live_fids()
            vectors = self._index.reconstruct_batch(fids) if len(fids) else np.empty((0, self.dim), np.float32)
            flat = _new_flat(self.dim)
            flat.add_with_ids(vectors, fids)
            self._index, self._replica = flat, None
            logger.warning("opened an IVF snapshot as a flat index: rebuilt %d vectors for exact search", len(fids))

    def _search_deepening(
        self, q: np.ndarray, k: int, mask: np.ndarray | None, passing: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ask faiss for more neighbours until ``k`` of them are live and pass ``mask``; (rows, scores), best first."""
        ntotal = self._index.ntotal  # live tracklets and dead entries; passing <= ntotal
        depth = min(ntotal, k if passing == ntotal else math.ceil(1.5 * k * ntotal / passing))
        nlist = self._index.nlist if self._is_ivf else 0
        nprobe = min(self.ivf.nprobe, nlist)
        while True:
            scores, fids = self._faiss_search(q, depth, nprobe)
            rows = self._table.rows_of_fids(fids)
            keep = rows >= 0
            if mask is not None:
                keep &= mask[np.maximum(rows, 0)]
            short = fids[-1] < 0  # the probed lists hold fewer than depth vectors
            seen_all = (depth >= ntotal and not short) or (short and nprobe >= nlist)
            if keep.sum() >= k or seen_all:
                return rows[keep][:k], scores[keep][:k]
            if short:
                nprobe = min(nlist, nprobe * DEEPEN)
            else:
                depth = min(ntotal, depth * DEEPEN)

    def _faiss_search(self, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(1, D) query -> (k,) scores and (k,) faiss ids (-1 padded), on the GPU replica when there is one."""
        index = self._index
        if self.device == "gpu" and k <= GPU_MAX_K and nprobe <= GPU_MAX_K:
            index = self._gpu_replica()
        if nprobe:
            index.nprobe = nprobe
        scores, fids = index.search(q, k)
        return scores[0], fids[0]

    def _score_rows(self, q: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the given rows' vectors; the best ``k`` (rows, scores), best first."""
        fids = self._table.fid[rows]
        best_rows, best_scores = [], []
        for start in range(0, len(rows), SUBSET_CHUNK):
            scores = self._index.reconstruct_batch(fids[start : start + SUBSET_CHUNK]) @ q[0]
            top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
            best_rows.append(rows[start : start + SUBSET_CHUNK][top])
            best_scores.append(scores[top])
        all_rows, all_scores = np.concatenate(best_rows), np.concatenate(best_scores)
        order = np.argsort(-all_scores, kind="stable")[:k]
        return all_rows[order], all_scores[order]

    def _gpu_replica(self) -> Any:
        """The GPU copy of the index (the CPU index if cloning fails), cloned again once many of its entries died."""
        live = len(self._table)
        if self._replica is None or self._replica.ntotal - live > max(FLAT_DEAD_MIN, FLAT_DEAD_FRACTION * live):
            try:
                self._replica = self._to_gpu(self._index)
            except RuntimeError as e:
                logger.warning("cannot copy the index to the GPU (%s): searching on the CPU from now on", e)
                self.device = "cpu"
                return self._index
        return self._replica

    def _to_gpu(self, index: Any) -> Any:
        """A copy of ``index`` on GPU 0."""
        if self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)


def _new_flat(dim: int) -> Any:
    """An empty exact inner-product index keyed by int64 ids, which can remove and reconstruct by id."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def _describe(index: Any) -> str:
    """Human-readable index structure, for logs and the manifest."""
    if isinstance(index, faiss.IndexIVFFlat):
        return f"IVF{index.nlist},Flat (inner product, direct map)"
    if isinstance(index, faiss.IndexIDMap2):
        return "IDMap2,Flat (inner product)"
    return type(index).__name__


def _resolve_device(device: str) -> str:
    """The device to search on: "auto" is "gpu" when faiss sees a GPU, else "cpu"; "gpu" without one is an error."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    gpus = faiss.get_num_gpus()
    if device == "gpu" and gpus == 0:
        raise ValueError("device 'gpu' asked, but faiss sees no GPU (the gpu extra installs faiss-gpu)")
    if device == "auto":
        return "gpu" if gpus > 0 else "cpu"
    return device


def _write_atomically(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file, so readers see the old or the new content, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (a kill -9 does not need it; a power cut does)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
