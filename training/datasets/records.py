"""The records a person-search dataset yields; the loader, the trainer and the evaluator share them.

Identity convention (documented in docs/model-card.md and docs/evaluation.md): labeled training identities are
numbered 0..L-1 in the order of CUHK-SYSU's ``Train.mat``; every other person box carries ``UNLABELED`` (-1).
(Public PyTorch code uses 1..5532 and 5555; Caffe OIM used 0..5531 and -1, which is what we follow.)
Boxes are always float32 x1y1x2y2 in original image pixels; CUHK-SYSU's xywh is converted at the edge (the loader).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

UNLABELED = -1


@dataclass(frozen=True)
class SceneRecord:
    """One scene image with every annotated person in it."""

    name: str  # file name inside Image/SSM, e.g. "s1.jpg"
    path: Path
    boxes: np.ndarray  # (K, 4) float32 x1y1x2y2 in pixels
    pids: np.ndarray  # (K,) int64: 0..L-1 labeled identity, UNLABELED otherwise
    hard: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # (K,) the dataset's ishard flag


@dataclass(frozen=True)
class GalleryRecord:
    """One gallery image of a query; ``box`` is the query person's box there, or None when absent."""

    name: str
    box: np.ndarray | None  # (4,) float32 x1y1x2y2, or None


@dataclass(frozen=True)
class QueryRecord:
    """One query of a TestG<N> protocol: a person box in a query image and its gallery."""

    idname: str  # identity name from the dataset, e.g. "p1234"
    name: str  # query image file name
    box: np.ndarray  # (4,) float32 x1y1x2y2
    gallery: tuple[GalleryRecord, ...]
