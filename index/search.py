"""Search the past by photo: a person's photo (and box) -> query embedding -> ranked tracklets."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from detector.engine import Engine
from index.store import SearchHit, TrackletIndex


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
            raise QueryPhotoError(f"found {what} in the photo; give the box of the person to search for", found)  # type: ignore[arg-type]
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
