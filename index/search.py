"""Search the past by photo: a person's photo (and box) -> query embedding -> ranked tracklets."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detector.engine import Engine
from index.store import MANIFEST, IvfOptions, SearchHit, SnapshotError, TrackletIndex, TrackletRecord

logger = logging.getLogger(__name__)


class QueryPhotoError(ValueError):
    """The photo cannot be used as a query as given; the message says why and ``boxes`` lists the persons found."""

    def __init__(self, message: str, boxes: list[tuple[float, float, float, float]]) -> None:
        super().__init__(message)
        self.boxes = boxes


def query_embedding(
    engine: Engine, image: np.ndarray, box: Sequence[float] | None = None, det_thresh: float = 0.5
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """image: RGB (H, W, 3) uint8; box x1y1x2y2 pixels or None -> ((D,) unit embedding, the box used).

    Without a box the photo must show exactly one person (detected at ``det_thresh``); otherwise QueryPhotoError
    names the persons found so the caller can ask for a box. The embedding is the paper's query protocol: the
    box pooled through the query graph.
    """
    h, w = image.shape[:2]
    if box is None:
        det = engine.detect([image])[0]
        keep = det.scores >= det_thresh
        found = [tuple(float(v) for v in b) for b in det.boxes[keep]]
        if len(found) != 1:
            what = "no person" if not found else f"{len(found)} persons"
            raise QueryPhotoError(f"found {what} in the photo; give the box of the person meant", found)  # type: ignore[arg-type]
        box = found[0]
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    if x2 - x1 < 4 or y2 - y1 < 4:
        raise QueryPhotoError(f"the box {tuple(box)} does not cover a person inside the {w}x{h} photo", [])
    emb = engine.embed(image, np.array([[x1, y1, x2, y2]], np.float32))[0]
    return emb, (x1, y1, x2, y2)


def search_by_photo(
    index: TrackletIndex,
    engine: Engine,
    image: np.ndarray,
    box: Sequence[float] | None = None,
    k: int = 10,
    cameras: Collection[str] | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[SearchHit]:
    """Ranked tracklets most like the person in the photo, optionally only on ``cameras`` within [since, until]."""
    emb, _ = query_embedding(engine, image, box)
    return index.search(emb, k=k, cameras=cameras, since=since, until=until)


class IndexReader:
    """Searches the index another process (the indexer) writes: reopens its latest snapshot when a new one appears.

    Results are as fresh as the indexer's last snapshot (``index.save_period_s``, 10 s by default).
    """

    def __init__(
        self,
        directory: Path,
        dim: int = 256,
        model: str = "",
        check_period_s: float = 1.0,
        ivf: IvfOptions | None = None,
    ) -> None:
        self.directory, self.dim, self.model, self.check_period_s = Path(directory), dim, model, check_period_s
        self.ivf = ivf  # of an IVF snapshot only nprobe (lists read per search) matters here; None: the defaults
        self._index: TrackletIndex | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def index(self) -> TrackletIndex | None:
        """The latest snapshot, or None while the indexer has not saved one."""
        with self._lock:
            now = time.monotonic()
            if self._index is None or now - self._checked >= self.check_period_s:
                self._checked = now
                self._refresh()
            return self._index

    def _refresh(self) -> None:
        manifest = self.directory / MANIFEST
        try:
            st = manifest.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        for _ in range(3):  # the indexer may replace the files between our reads of the manifest and the files
            try:
                self._index = TrackletIndex(self.directory, self.dim, self.model, read_only=True, ivf=self.ivf)
                self._stamp = stamp
                return
            except (FileNotFoundError, SnapshotError) as e:
                last = e
                time.sleep(0.05)
        logger.warning("could not open the index snapshot in %s: %s", self.directory, last)

    def search(self, query: np.ndarray, **kwargs: Any) -> list[SearchHit]:
        index = self.index()
        return index.search(query, **kwargs) if index is not None else []

    def get(self, tracklet_id: str) -> tuple[TrackletRecord, np.ndarray] | None:
        index = self.index()
        return index.get(tracklet_id) if index is not None else None

    def snapshot_path(self, record: TrackletRecord) -> Path | None:
        index = self.index()
        return index.snapshot_path(record) if index is not None else None
