"""Reader for CUHK-SYSU in its published on-disk layout (see /work/shared/cuhk-sysu-layout.md).

Only ``scipy.io.loadmat`` is used, with its defaults: structs come back as numpy structured arrays, cells as object
arrays, char as 1-element string arrays, and every numeric value as a 2-D array (an absent box is 1 x 0). The small
``_`` helpers below unwrap those shapes in one place, so the public methods read like the dataset's README.
Identity convention: see ``training.datasets.records`` (labeled 0..L-1 in ``Train.mat`` order, else ``UNLABELED``).
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from training.datasets.records import UNLABELED, GalleryRecord, QueryRecord, SceneRecord

logger = logging.getLogger(__name__)

SUBSETS: dict[str, tuple[str, str]] = {
    "occlusion": ("Occlusion.mat", "Occlusion1"),
    "resolution": ("Resolution.mat", "Test_Size"),
}


def _load_var(path: Path, var: str) -> np.ndarray:
    """The variable ``var`` of the MAT file at ``path``, with a clear error when the file or variable is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"CUHK-SYSU annotation file not found: {path}")
    try:
        contents = scipy.io.loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB -v7.3 files are HDF5, which loadmat cannot read
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file; re-save it with -v7 to read it") from exc
    except Exception as exc:  # loadmat raises several types for a damaged file; all mean the same to a user
        raise ValueError(f"{path} is not a readable MATLAB file: {exc}") from exc
    if var not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise ValueError(f"{path} has no variable {var!r} (found: {found})")
    return contents[var]


def _unwrap(value: Any) -> Any:
    """Strip the 1 x 1 object/struct wrappers loadmat puts around cell contents and nested structs."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def _items(value: Any, where: str) -> list[np.void]:
    """The elements of a struct array of any shape (1 x N, N x 1, 1 x 1, or wrapped in a cell) as a flat list."""
    value = _unwrap(value)
    if not isinstance(value, np.ndarray) or value.dtype.names is None:
        raise ValueError(
            f"{where}: expected a MATLAB struct array, got {type(value).__name__} {getattr(value, 'dtype', '')}"
        )
    return list(value.reshape(-1))


def _single(value: Any, where: str) -> np.void:
    """The one struct inside a 1 x 1 struct (a query, a Train cell), with a clear error when it is empty."""
    entries = _items(value, where)
    if not entries:
        raise ValueError(f"{where}: empty struct where one entry was expected")
    return entries[0]


def _field(entry: np.void, name: str, where: str) -> Any:
    names = entry.dtype.names or ()
    if name not in names:
        raise ValueError(f"{where}: struct has no field {name!r} (fields: {list(names)})")
    return entry[name]


def _text(value: Any, where: str) -> str:
    """A MATLAB char array as a Python string (loadmat gives a 1-element string array, sometimes wrapped)."""
    value = _unwrap(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        if value.size == 1:
            return str(value.reshape(-1)[0])
        return "".join(value.reshape(-1).tolist())  # a char matrix loaded with chars_as_strings=False
    raise ValueError(f"{where}: expected a string, got {type(value).__name__} {getattr(value, 'dtype', '')}")


def _xywh(value: Any, where: str) -> np.ndarray | None:
    """An ``idlocate`` as (4,) int64 x, y, w, h, or None when empty (the person is absent from that image)."""
    value = _unwrap(value)
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return None
    if arr.size != 4:
        raise ValueError(f"{where}: idlocate must hold 4 numbers (x, y, w, h), got {arr.size}")
    # The dataset's boxes are integer pixels; rounding guards against a float written as 12.999999.
    return np.round(arr).astype(np.int64)


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    """(4,) x, y, w, h -> (4,) float32 x1, y1, x2, y2."""
    x, y, w, h = (float(v) for v in xywh)
    return np.array([x, y, x + w, y + h], dtype=np.float32)


def _number(value: Any, where: str, default: float = 0.0) -> float:
    arr = np.asarray(_unwrap(value), dtype=np.float64).reshape(-1)
    return float(arr[0]) if arr.size else default


class CUHKSYSU:
    """CUHK-SYSU (or a synthetic world written in its layout) under ``root``: scenes, identities and protocols."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"CUHK-SYSU root is not a directory: {self.root}")
        self._annotation = self.root / "annotation"
        self._train_test = self._annotation / "test" / "train_test"

    def image_path(self, name: str) -> Path:
        """Where scene image ``name`` (e.g. ``s1.jpg``) lives."""
        return self.root / "Image" / "SSM" / name

    # ------------------------------------------------------------------------------------------------ annotations

    @cached_property
    def _images(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Every image in ``Img`` order: name -> ((K, 4) int64 xywh, (K,) bool ishard), zero-size boxes dropped."""
        path = self._annotation / "Images.mat"
        images: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        dropped = 0
        for i, entry in enumerate(_items(_load_var(path, "Img"), f"{path}: Img")):
            where = f"{path}: Img({i + 1})"
            name = _text(_field(entry, "imname", where), f"{where}.imname")
            boxes, hard = [], []
            box_field = _unwrap(_field(entry, "box", where))
            box_entries = _items(box_field, f"{where}.box") if np.size(box_field) else []
            for j, box in enumerate(box_entries):
                xywh = _xywh(_field(box, "idlocate", f"{where}.box({j + 1})"), f"{where}.box({j + 1}).idlocate")
                if xywh is None or xywh[2] <= 0 or xywh[3] <= 0:
                    dropped += 1
                    continue
                boxes.append(xywh)
                names = box.dtype.names or ()
                hard.append(_number(box["ishard"], where) > 0 if "ishard" in names else False)
            images[name] = (np.array(boxes, dtype=np.int64).reshape(-1, 4), np.array(hard, dtype=bool))
        if dropped:
            logger.info("dropped %d boxes with zero width or height from %s", dropped, path)
        return images

    @cached_property
    def _pool(self) -> list[str]:
        path = self._annotation / "pool.mat"
        pool = _load_var(path, "pool")
        return [_text(v, f"{path}: pool({i + 1})") for i, v in enumerate(np.asarray(pool, dtype=object).reshape(-1))]

    @cached_property
    def _train_identities(self) -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
        """``Train`` in order: (idname, [(image name, (4,) int64 xywh), ...])."""
        path = self._train_test / "Train.mat"
        train = np.asarray(_load_var(path, "Train"))
        # A cell array of 1 x 1 structs; tolerate a plain struct array too (a re-saved file).
        cells = list(train.reshape(-1)) if train.dtype == object else _items(train, f"{path}: Train")
        identities = []
        for i, cell in enumerate(cells):
            where = f"{path}: Train{{{i + 1}}}"
            person = _single(cell, where)
            idname = _text(_field(person, "idname", where), f"{where}.idname")
            scenes = []
            for j, scene in enumerate(_items(_field(person, "scene", where), f"{where}.scene")):
                swhere = f"{where}.scene({j + 1})"
                xywh = _xywh(_field(scene, "idlocate", swhere), f"{swhere}.idlocate")
                if xywh is not None:
                    scenes.append((_text(_field(scene, "imname", swhere), f"{swhere}.imname"), xywh))
            identities.append((idname, scenes))
        return identities

    @property
    def num_train_identities(self) -> int:
        """L, the number of labeled training identities (``Train.mat`` entries); labels are 0..L-1."""
        return len(self._train_identities)

    # ------------------------------------------------------------------------------------------------ scenes

    def _record(self, name: str, pids: np.ndarray | None = None) -> SceneRecord:
        boxes, hard = self._images[name]
        if pids is None:
            pids = np.full(len(boxes), UNLABELED, dtype=np.int64)
        xyxy = np.stack([_xyxy(b) for b in boxes]) if len(boxes) else np.zeros((0, 4), np.float32)
        return SceneRecord(name=name, path=self.image_path(name), boxes=xyxy, pids=pids, hard=hard)

    def train_scenes(self) -> list[SceneRecord]:
        """Every image not in the pool that has a box, in ``Img`` order, with labeled ids where ``Train`` names them."""
        pool = set(self._pool)
        missing = pool - self._images.keys()
        if missing:
            raise ValueError(f"pool.mat names {len(missing)} images absent from Images.mat, e.g. {sorted(missing)[0]}")
        pids = {
            name: np.full(len(boxes), UNLABELED, dtype=np.int64)
            for name, (boxes, _) in self._images.items()
            if name not in pool
        }
        unmatched = 0
        for label, (_, scenes) in enumerate(self._train_identities):
            for name, xywh in scenes:
                if name not in pids:
                    unmatched += 1
                    continue
                # Exact integer equality: Train's idlocate is a copy of the Img box it labels.
                hits = np.flatnonzero((self._images[name][0] == xywh).all(axis=1))
                if len(hits) == 0:
                    unmatched += 1
                    continue
                pids[name][hits[0]] = label
        if unmatched:
            logger.warning("%d Train.mat boxes match no training box in Images.mat; left unlabeled", unmatched)
        records = [self._record(name, p) for name, p in pids.items() if len(p)]
        skipped = len(pids) - len(records)
        if skipped:
            logger.info("skipped %d training images without any valid box", skipped)
        return records

    def test_scenes(self) -> list[SceneRecord]:
        """The pool (test) images in ``pool`` order with every box; identities are not needed there (UNLABELED)."""
        missing = [name for name in self._pool if name not in self._images]
        if missing:
            raise ValueError(f"pool.mat names {len(missing)} images absent from Images.mat, e.g. {missing[0]}")
        return [self._record(name) for name in self._pool]

    # ------------------------------------------------------------------------------------------------ protocols

    def available_gallery_sizes(self) -> list[int]:
        """The N of every ``TestG<N>.mat`` present, ascending."""
        sizes = []
        for path in self._train_test.glob("TestG*.mat"):
            suffix = path.stem[len("TestG") :]
            if suffix.isdigit():
                sizes.append(int(suffix))
        return sorted(sizes)

    def queries(self, gallery_size: int, subset: str | None = None) -> list[QueryRecord]:
        """The queries of ``TestG<gallery_size>`` with their galleries; ``subset`` "occlusion"/"resolution" filters."""
        path = self._train_test / f"TestG{gallery_size}.mat"
        if not path.is_file():
            raise FileNotFoundError(
                f"no gallery of size {gallery_size}: {path} is missing (present: {self.available_gallery_sizes()})"
            )
        records = [
            self._query(entry, f"{path}: TestG{gallery_size}({i + 1})")
            for i, entry in enumerate(_items(_load_var(path, f"TestG{gallery_size}"), str(path)))
        ]
        if subset is None:
            return records
        wanted = self._subset_keys(subset)
        kept = [q for q in records if (q.idname, q.name) in wanted]
        if len(kept) < len(wanted):
            logger.warning("%d %s-subset queries are not in TestG%d", len(wanted) - len(kept), subset, gallery_size)
        return kept

    def _query(self, entry: np.void, where: str) -> QueryRecord:
        query = _single(_field(entry, "Query", where), f"{where}.Query")
        qwhere = f"{where}.Query"
        xywh = _xywh(_field(query, "idlocate", qwhere), f"{qwhere}.idlocate")
        if xywh is None:
            raise ValueError(f"{qwhere}.idlocate is empty: a query needs its box")
        gallery = []
        for j, item in enumerate(_items(_field(entry, "Gallery", where), f"{where}.Gallery")):
            gwhere = f"{where}.Gallery({j + 1})"
            box = _xywh(_field(item, "idlocate", gwhere), f"{gwhere}.idlocate")
            name = _text(_field(item, "imname", gwhere), f"{gwhere}.imname")
            gallery.append(GalleryRecord(name=name, box=None if box is None else _xyxy(box)))
        return QueryRecord(
            idname=_text(_field(query, "idname", qwhere), f"{qwhere}.idname"),
            name=_text(_field(query, "imname", qwhere), f"{qwhere}.imname"),
            box=_xyxy(xywh),
            gallery=tuple(gallery),
        )

    def _subset_keys(self, subset: str) -> set[tuple[str, str]]:
        """(idname, query image) of every query in an evaluation subset file."""
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; expected one of {sorted(SUBSETS)} or None")
        filename, var = SUBSETS[subset]
        path = self._annotation / "test" / "subset" / filename
        keys = set()
        for i, entry in enumerate(_items(_load_var(path, var), str(path))):
            where = f"{path}: {var}({i + 1})"
            # Shaped like TestG entries (unverified for the real files): accept a bare query struct as well.
            query = _single(entry["Query"], f"{where}.Query") if "Query" in (entry.dtype.names or ()) else entry
            keys.add(
                (
                    _text(_field(query, "idname", where), f"{where}.idname"),
                    _text(_field(query, "imname", where), f"{where}.imname"),
                )
            )
        return keys
