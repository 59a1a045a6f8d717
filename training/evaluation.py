"""Person-search evaluation: the community CUHK-SYSU protocol (search mAP / CMC, detection AP / recall).

The protocol, exactly as the public person-search code scores it (docs/evaluation.md says it in words):

- Search, per query: its gallery is the query's ``GalleryRecord`` list (one TestG<N> entry). Only gallery detections
  with ``score >= det_thresh`` take part. In a gallery image that contains the query person, a detection is a true
  positive when its IoU with the ground-truth box is ``>= min(0.5, w*h / ((w+10)*(h+10)))`` (w, h of that GT box),
  and at most one detection per image is: the most similar one that passes. AP is the step-wise precision-at-each-
  positive over all gallery detections ranked by cosine similarity (sklearn's ``average_precision_score``), times the
  recall rate (true positives found / gallery images containing the person, images with no detection included).
  No true positive found: AP 0. mAP is the mean over queries. CMC top-k: 1 when any of the k most similar pooled
  gallery detections is a true positive.
- Detection, over the test scenes (every ground-truth box, hard ones included): VOC all-point AP at IoU 0.5 with
  greedy matching in score order (each detection takes the ground truth it overlaps most; a second detection on an
  already matched ground truth is a false positive), using detections at every score; recall is the share of
  ground-truth boxes matched by detections with ``score >= det_thresh``.

Detections and embeddings reach the evaluator through ``PersonSearchEvaluator.process_gallery`` /
``process_query`` (training loop, CLI) or through a saved results file (``save_results`` / ``evaluate_results_file``)
so any other code's output is scored by the same lines.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets.records import GalleryRecord, QueryRecord, SceneRecord

logger = logging.getLogger(__name__)

DEFAULT_DET_THRESH = 0.5
DETECTION_IOU = 0.5
CMC_TOPK = (1, 5, 10)
RESULTS_FORMAT_VERSION = 1
RESULTS_KEYS = (
    "format_version",
    "image_names",
    "det_image_index",
    "det_boxes",
    "det_scores",
    "det_embeddings",
    "query_embeddings",
)


# --------------------------------------------------------------------------------------------------------------
# Metric primitives
# --------------------------------------------------------------------------------------------------------------


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU, (A, 4) x (B, 4) x1y1x2y2 -> (A, B); continuous areas (no +1), 0 for degenerate unions."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def search_iou_threshold(gt_box: np.ndarray) -> float:
    """IoU a detection needs to match a gallery GT box (4,) x1y1x2y2: ``min(0.5, w*h / ((w+10)*(h+10)))``."""
    w = float(gt_box[2] - gt_box[0])
    h = float(gt_box[3] - gt_box[1])
    return min(0.5, (w * h) / ((w + 10.0) * (h + 10.0)))


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Step-wise AP: sum over distinct score thresholds of (recall gain) x precision; (N,) bool, (N,) float -> float.

    Same definition as sklearn's ``average_precision_score`` (tied scores enter the ranking together). Returns 0.0
    when there is no positive.
    """
    y_true = np.asarray(y_true, dtype=bool).ravel()
    y_score = np.asarray(y_score).ravel()
    pos = y_score[y_true]
    if pos.size == 0:
        return 0.0
    # Each positive contributes 1/P x precision at its own score's threshold (ties share that threshold), so
    # AP = mean over positives of #positives scoring >= s / #items scoring >= s; no full sort of the ranking.
    if pos.size <= 64:
        at_least_all = (y_score[None, :] >= pos[:, None]).sum(axis=1)
        at_least_pos = (pos[None, :] >= pos[:, None]).sum(axis=1)
    else:
        at_least_all = y_score.size - np.searchsorted(np.sort(y_score), pos, side="left")
        at_least_pos = pos.size - np.searchsorted(np.sort(pos), pos, side="left")
    return float(np.mean(at_least_pos / at_least_all))


def voc_average_precision(tp_sorted: np.ndarray, num_gt: int) -> float:
    """VOC all-point AP (area under the monotone PR envelope); (D,) bool TP flags in descending score order."""
    if num_gt <= 0:
        return 0.0
    tp = np.asarray(tp_sorted, dtype=bool).ravel()
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp).astype(np.float64)
    recall = ctp / num_gt
    precision = ctp / np.arange(1, tp.size + 1)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of (N, E) float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------------------------------------------
# Pooled detections
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PooledDetections:
    """Every image's detections in flat arrays, grouped by image (image ``i`` owns rows ``start[i]:start[i+1]``)."""

    names: list[str]
    start: np.ndarray  # (I+1,) int64 offsets
    boxes: np.ndarray  # (D, 4) float32
    scores: np.ndarray  # (D,) float32
    embeddings: np.ndarray  # (D, E) float32, L2-normalised

    @property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def rows(self, image_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of the given images' detections and, per row, the position of its image in the argument."""
        first = self.start[image_indices]
        counts = self.start[image_indices + 1] - first
        owner = np.repeat(np.arange(image_indices.size), counts)
        within = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(first, counts) + within, owner

    def above(self, det_thresh: float) -> _PooledDetections:
        """The same images with only the detections scoring ``>= det_thresh``."""
        keep = self.scores >= det_thresh
        image_of_row = np.repeat(np.arange(len(self.names)), np.diff(self.start))
        per_image = np.bincount(image_of_row[keep], minlength=len(self.names))
        start = np.concatenate(([0], np.cumsum(per_image))).astype(np.int64)
        return _PooledDetections(self.names, start, self.boxes[keep], self.scores[keep], self.embeddings[keep])


def _pool(detections: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], dim: int) -> _PooledDetections:
    names = list(detections)
    counts = [detections[n][1].shape[0] for n in names]
    start = np.concatenate(([0], np.cumsum(counts, dtype=np.int64))).astype(np.int64)
    if names:
        boxes = np.concatenate([detections[n][0] for n in names]).astype(np.float32).reshape(-1, 4)
        scores = np.concatenate([detections[n][1] for n in names]).astype(np.float32)
        emb = np.concatenate([detections[n][2].reshape(-1, dim) for n in names]).astype(np.float32)
    else:
        boxes, scores, emb = np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, dim), np.float32)
    return _PooledDetections(names, start, boxes, scores, _l2_normalize(emb))


# --------------------------------------------------------------------------------------------------------------
# The two evaluations
# --------------------------------------------------------------------------------------------------------------


def _evaluate_detection(scenes: Sequence[SceneRecord], dets: _PooledDetections, det_thresh: float) -> dict[str, float]:
    """Detection AP (all scores) and recall (score >= det_thresh) at IoU 0.5 over every GT box of ``scenes``."""
    index = dets.index
    num_gt = 0
    all_scores: list[np.ndarray] = []
    all_gt_ids: list[np.ndarray] = []  # global GT id each detection may claim, -1 when its best IoU < 0.5
    for scene in scenes:
        gt = np.asarray(scene.boxes, dtype=np.float32).reshape(-1, 4)
        i = index.get(scene.name)
        if i is not None and dets.start[i + 1] > dets.start[i]:
            lo, hi = dets.start[i], dets.start[i + 1]
            claim = np.full(hi - lo, -1, dtype=np.int64)
            if gt.shape[0]:
                iou = box_iou(dets.boxes[lo:hi], gt)
                best = iou.argmax(axis=1)
                ok = iou[np.arange(hi - lo), best] >= DETECTION_IOU
                claim[ok] = num_gt + best[ok]
            all_scores.append(dets.scores[lo:hi])
            all_gt_ids.append(claim)
        num_gt += gt.shape[0]
    if num_gt == 0:
        logger.warning("detection evaluation: the test scenes hold no ground-truth box; det AP and recall are 0")
        return {"det_ap": 0.0, "det_recall": 0.0}
    if not all_scores:
        return {"det_ap": 0.0, "det_recall": 0.0}
    scores = np.concatenate(all_scores)
    claims = np.concatenate(all_gt_ids)
    order = np.argsort(-scores, kind="stable")
    scores, claims = scores[order], claims[order]
    # greedy by score: the first detection (in score order) claiming a GT matches it, later claimants are FPs
    tp = np.zeros(scores.size, dtype=bool)
    claimed = np.nonzero(claims >= 0)[0]
    _, first = np.unique(claims[claimed], return_index=True)
    tp[claimed[first]] = True
    # the detections above det_thresh are a prefix of the score order, so their matches are this matching's prefix
    recall = float(tp[scores >= det_thresh].sum()) / num_gt
    return {"det_ap": voc_average_precision(tp, num_gt), "det_recall": recall}


@dataclass(frozen=True)
class QuerySearchResult:
    """One query's search outcome: AP (already scaled by recall) and CMC hits at ``CMC_TOPK``."""

    ap: float
    cmc: tuple[bool, ...]
    num_gt: int  # gallery images containing the query person
    num_tp: int  # of those, where a true positive was found


def _evaluate_query(
    query: QueryRecord, similarity: np.ndarray, dets: _PooledDetections, index: dict[str, int]
) -> QuerySearchResult:
    """Score one query against its gallery; ``dets`` filtered by det_thresh, ``similarity`` (D,) cosine to each."""
    gallery = query.gallery
    names = [g.name for g in gallery]
    if len(set(names)) != len(names):  # a repeated gallery entry would count its detections twice
        first: dict[str, GalleryRecord] = {}
        for g in gallery:
            first.setdefault(g.name, g)
        gallery = tuple(first.values())
    num_gt = sum(g.box is not None for g in gallery)
    found = [(index[g.name], g.box) for g in gallery if g.name in index]
    image_ids = [i for i, _ in found]
    gt_boxes = [box for _, box in found]
    rows, owner = dets.rows(np.asarray(image_ids, dtype=np.int64))
    if rows.size == 0:
        return QuerySearchResult(0.0, (False,) * len(CMC_TOPK), num_gt, 0)
    sims = similarity[rows]
    labels = np.zeros(rows.size, dtype=bool)
    for pos, gt in enumerate(gt_boxes):
        if gt is None:
            continue
        mine = np.nonzero(owner == pos)[0]
        iou = box_iou(dets.boxes[rows[mine]], gt)[:, 0]
        passing = mine[iou >= search_iou_threshold(gt)]
        if passing.size:
            labels[passing[np.argmax(sims[passing])]] = True
    num_tp = int(labels.sum())
    ap = 0.0 if num_tp == 0 else average_precision(labels, sims) * num_tp / num_gt
    # CMC: rank of the best true positive in the stable descending order (ties: gallery order first)
    cmc = (False,) * len(CMC_TOPK)
    if num_tp:
        tp_idx = np.nonzero(labels)[0]
        best = tp_idx[np.argmax(sims[tp_idx])]
        rank = int(np.sum(sims > sims[best]) + np.sum(sims[:best] == sims[best]))
        cmc = tuple(rank < k for k in CMC_TOPK)
    return QuerySearchResult(ap, cmc, num_gt, num_tp)


# --------------------------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------------------------


class PersonSearchEvaluator:
    """Collects gallery detections and query embeddings, then scores them with the person-search protocol.

    ``scenes`` are the test scenes (detection ground truth); ``queries`` one protocol (TestG<N> or a subset) whose
    galleries define the search. ``process_query(index, ...)`` indexes into ``queries``.
    """

    def __init__(
        self,
        scenes: Sequence[SceneRecord],
        queries: Sequence[QueryRecord],
        det_thresh: float = DEFAULT_DET_THRESH,
        *,
        subset: str | None = None,
    ) -> None:
        self.scenes = list(scenes)
        self.queries = list(queries)
        self.det_thresh = float(det_thresh)
        self.subset = subset
        self._gallery: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._query: dict[int, np.ndarray] = {}

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._gallery = {}
        self._query = {}

    def process_gallery(self, name: str, boxes: np.ndarray, scores: np.ndarray, embeddings: np.ndarray) -> None:
        """Record one gallery image's detections: boxes (D, 4) x1y1x2y2 original pixels, scores (D,), embeddings (D, E).

        Pass every detection, whatever its score: the search filters at ``det_thresh``, detection AP uses all.
        A second call for the same image replaces the first.
        """
        boxes = _as_numpy(boxes, np.float32)
        scores = _as_numpy(scores, np.float32).reshape(-1)
        embeddings = _as_numpy(embeddings, np.float32)
        d = scores.shape[0]
        if d == 0 and boxes.size == 0 and embeddings.size == 0:  # no detections may come in any empty shape
            boxes = boxes.reshape(0, 4)
            embeddings = embeddings.reshape(0, embeddings.shape[-1] if embeddings.ndim == 2 else 0)
        if boxes.ndim != 2 or boxes.shape != (d, 4):
            raise ValueError(f"{name}: boxes must be (D, 4) with D = len(scores) = {d}, got {boxes.shape}")
        if embeddings.ndim != 2 or embeddings.shape[0] != d:
            raise ValueError(f"{name}: embeddings must be (D, E) with D = {d}, got {embeddings.shape}")
        self._gallery[name] = (boxes, scores, embeddings)

    def process_query(self, index: int, embedding: np.ndarray) -> None:
        """Record the embedding (E,) of ``queries[index]``, taken from its ground-truth box in the query image."""
        if not 0 <= index < len(self.queries):
            raise ValueError(f"query index {index} out of range for {len(self.queries)} queries")
        emb = _as_numpy(embedding, np.float32).reshape(-1)
        self._query[int(index)] = emb

    def evaluate(self) -> dict[str, float | int | str]:
        """Score what was processed: mAP, top1/top5/top10, det_ap, det_recall (fractions), gallery_size, num_queries.

        Raises ValueError when a query has no embedding or the embedding sizes disagree.
        """
        missing = [i for i in range(len(self.queries)) if i not in self._query]
        if missing:
            raise ValueError(f"{len(missing)} of {len(self.queries)} queries have no embedding (first: {missing[0]})")
        dims = {e.shape[1] for _, _, e in self._gallery.values() if e.shape[0]} | {
            e.shape[0] for e in self._query.values()
        }
        if len(dims) > 1:
            raise ValueError(f"embedding sizes disagree across gallery detections and queries: {sorted(dims)}")
        dim = dims.pop() if dims else 0
        dets = _pool(self._gallery, dim)
        self._warn_about_coverage()

        results: dict[str, float | int | str] = dict(_evaluate_detection(self.scenes, dets, self.det_thresh))
        kept = dets.above(self.det_thresh)
        index = kept.index
        n = len(self.queries)
        query_emb = _l2_normalize(np.stack([self._query[i] for i in range(n)]) if n else np.zeros((0, dim)))
        # one (chunk, D) similarity block at a time keeps memory near 128 MB at any gallery size
        chunk = max(1, min(256, 2**25 // max(kept.scores.size, 1)))
        per_query: list[QuerySearchResult] = []
        for lo in range(0, n, chunk):
            sims = query_emb[lo : lo + chunk] @ kept.embeddings.T
            per_query += [_evaluate_query(self.queries[lo + j], s, kept, index) for j, s in enumerate(sims)]
        results["mAP"] = float(np.mean([r.ap for r in per_query])) if n else 0.0
        for j, k in enumerate(CMC_TOPK):
            results[f"top{k}"] = float(np.mean([r.cmc[j] for r in per_query])) if n else 0.0
        results["gallery_size"] = max((len(q.gallery) for q in self.queries), default=0)
        results["num_queries"] = n
        results["det_thresh"] = self.det_thresh
        if self.subset is not None:
            results["subset"] = self.subset
        logger.info(
            "person search (gallery %d%s): mAP %.2f%% top-1 %.2f%%; detection AP %.2f%% recall %.2f%%",
            results["gallery_size"],
            f", {self.subset}" if self.subset else "",
            100 * results["mAP"],
            100 * results["top1"],
            100 * results["det_ap"],
            100 * results["det_recall"],
        )
        return results

    def _warn_about_coverage(self) -> None:
        """Log images the protocol needs but nobody processed, and processed images the protocol does not know."""
        needed = {s.name for s in self.scenes} | {g.name for q in self.queries for g in q.gallery}
        unprocessed = needed.difference(self._gallery)
        if unprocessed:
            logger.warning(
                "%d test images were never processed; they count as images with no detection (e.g. %s)",
                len(unprocessed),
                min(unprocessed),
            )
        unknown = set(self._gallery).difference(needed)
        if unknown:
            logger.warning(
                "%d processed images are not in the test scenes or galleries and are ignored (e.g. %s)",
                len(unknown),
                min(unknown),
            )


def _as_numpy(x: object, dtype: type) -> np.ndarray:
    """numpy view of an array-like or a (possibly CUDA) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[attr-defined]
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------------------------------------------
# Paper-style table
# --------------------------------------------------------------------------------------------------------------


def format_table(results: Mapping[str, object] | Sequence[Mapping[str, object]]) -> str:
    """A Markdown table, one row per result (gallery size or subset): mAP, top-1/5/10, det AP, recall in percent."""
    rows = [results] if isinstance(results, Mapping) else list(results)
    header = ["protocol", "queries", "mAP", "top-1", "top-5", "top-10", "det AP", "recall"]
    keys = ["mAP", "top1", "top5", "top10", "det_ap", "det_recall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(keys)) + "|"]
    for r in rows:
        label = f"gallery {r.get('gallery_size', '?')}"
        if r.get("subset") not in (None, "", "all"):
            label = f"{r['subset']} ({label})"
        cells = [label, str(r.get("num_queries", ""))]
        cells += [f"{100 * float(r[k]):.2f}" if k in r else "-" for k in keys]  # type: ignore[arg-type]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Results file
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResults:
    """The contents of a results file: every test image's detections and every protocol query's embedding."""

    image_names: np.ndarray  # (I,) str
    det_image_index: np.ndarray  # (D,) int64 into image_names
    det_boxes: np.ndarray  # (D, 4) float32 x1y1x2y2 original pixels
    det_scores: np.ndarray  # (D,) float32
    det_embeddings: np.ndarray  # (D, E) float32, L2-normalised
    query_embeddings: np.ndarray  # (Q, E) float32, in the protocol's (TestG<N>) query order
    format_version: int = RESULTS_FORMAT_VERSION

    def per_image(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Image name -> (boxes (n, 4), scores (n,), embeddings (n, E)); images without detections get empty arrays."""
        order = np.argsort(self.det_image_index, kind="stable")
        counts = np.bincount(self.det_image_index, minlength=len(self.image_names))
        ends = np.cumsum(counts)
        out = {}
        for i, name in enumerate(self.image_names.tolist()):
            sel = order[ends[i] - counts[i] : ends[i]]
            out[name] = (self.det_boxes[sel], self.det_scores[sel], self.det_embeddings[sel])
        return out


def save_results(
    path: str | Path,
    image_names: Sequence[str],
    det_boxes: Sequence[np.ndarray],
    det_scores: Sequence[np.ndarray],
    det_embeddings: Sequence[np.ndarray],
    query_embeddings: np.ndarray,
) -> Path:
    """Write a results ``.npz`` from per-image lists aligned with ``image_names``.

    Per image i: ``det_boxes[i]`` (n_i, 4) float x1y1x2y2 original pixels, ``det_scores[i]`` (n_i,),
    ``det_embeddings[i]`` (n_i, E); pass every detection, whatever its score.
    ``query_embeddings`` (Q, E) follow the protocol's query order (TestG<N>; the same for every N). Embeddings are
    L2-normalised on the way in. Returns the path written (numpy appends ``.npz`` when missing).
    """
    names = [str(n) for n in image_names]
    if not len(names) == len(det_boxes) == len(det_scores) == len(det_embeddings):
        raise ValueError(
            "image_names, det_boxes, det_scores and det_embeddings must have one entry per image, got "
            f"{len(names)}, {len(det_boxes)}, {len(det_scores)}, {len(det_embeddings)}"
        )
    q = _as_numpy(query_embeddings, np.float32)
    if q.ndim != 2:
        raise ValueError(f"query_embeddings must be (Q, E), got {q.shape}")
    dim = q.shape[1]
    boxes = [_as_numpy(b, np.float32).reshape(-1, 4) for b in det_boxes]
    scores = [_as_numpy(s, np.float32).reshape(-1) for s in det_scores]
    embs = [_as_numpy(e, np.float32).reshape(-1, dim) for e in det_embeddings]
    for name, b, s, e in zip(names, boxes, scores, embs, strict=True):
        if not b.shape[0] == s.shape[0] == e.shape[0]:
            raise ValueError(f"{name}: {b.shape[0]} boxes, {s.shape[0]} scores, {e.shape[0]} embeddings")
    counts = np.array([s.shape[0] for s in scores], dtype=np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        format_version=np.int64(RESULTS_FORMAT_VERSION),
        image_names=np.array(names, dtype=np.str_),
        det_image_index=np.repeat(np.arange(len(names), dtype=np.int64), counts),
        det_boxes=np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32),
        det_scores=np.concatenate(scores) if scores else np.zeros(0, np.float32),
        det_embeddings=_l2_normalize(np.concatenate(embs)) if embs else np.zeros((0, dim), np.float32),
        query_embeddings=_l2_normalize(q),
    )
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_results(path: str | Path) -> SearchResults:
    """Read and validate a results ``.npz``; ValueError names what is wrong with a malformed file."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz results file ({err})") from err
    with npz:
        missing = [k for k in RESULTS_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}; a results file needs {list(RESULTS_KEYS)}")
        data = {k: npz[k] for k in RESULTS_KEYS}
    version = int(np.asarray(data["format_version"]).reshape(-1)[0])
    if version != RESULTS_FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version}, this code reads {RESULTS_FORMAT_VERSION}")
    names = data["image_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise ValueError(f"{path}: image_names must be a 1-D string array, got {names.dtype} {names.shape}")
    names = names.astype(np.str_)
    if len(set(names.tolist())) != names.size:
        raise ValueError(f"{path}: image_names has duplicates")
    idx, boxes, scores = data["det_image_index"], data["det_boxes"], data["det_scores"]
    emb, q = data["det_embeddings"], data["query_embeddings"]
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"{path}: det_image_index must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    d = idx.shape[0]
    if boxes.shape != (d, 4):
        raise ValueError(f"{path}: det_boxes must be (D, 4) with D = len(det_image_index) = {d}, got {boxes.shape}")
    if scores.shape != (d,):
        raise ValueError(f"{path}: det_scores must be (D,) with D = {d}, got {scores.shape}")
    if q.ndim != 2:
        raise ValueError(f"{path}: query_embeddings must be (Q, E), got {q.shape}")
    if emb.shape != (d, q.shape[1]):
        raise ValueError(f"{path}: det_embeddings must be (D, E) = ({d}, {q.shape[1]}), got {emb.shape}")
    if d and (idx.min() < 0 or idx.max() >= names.size):
        raise ValueError(f"{path}: det_image_index must lie in [0, {names.size}), got [{idx.min()}, {idx.max()}]")
    return SearchResults(
        image_names=names,
        det_image_index=idx.astype(np.int64),
        det_boxes=boxes.astype(np.float32),
        det_scores=scores.astype(np.float32),
        det_embeddings=emb.astype(np.float32),
        query_embeddings=q.astype(np.float32),
        format_version=version,
    )


def _query_key(q: QueryRecord) -> tuple[str, tuple[float, ...]]:
    return q.name, tuple(np.round(np.asarray(q.box, dtype=np.float64), 1).tolist())


def evaluate_results(
    results: SearchResults,
    scenes: Sequence[SceneRecord],
    queries: Sequence[QueryRecord],
    det_thresh: float = DEFAULT_DET_THRESH,
    *,
    reference_queries: Sequence[QueryRecord] | None = None,
    subset: str | None = None,
) -> dict[str, float | int | str]:
    """Score loaded results on one protocol; same dict as ``PersonSearchEvaluator.evaluate``.

    ``results.query_embeddings`` follow ``reference_queries`` (default: ``queries``). For a subset protocol
    (Occlusion, Resolution) pass the full TestG<N> list as ``reference_queries``: subset queries are found in it by
    query image and box.
    """
    reference = list(queries if reference_queries is None else reference_queries)
    n_q = results.query_embeddings.shape[0]
    if n_q != len(reference):
        raise ValueError(f"the results file has {n_q} query embeddings, the protocol has {len(reference)} queries")
    if reference_queries is None:
        positions = list(range(len(reference)))
    else:
        lookup = {_query_key(q): i for i, q in enumerate(reference)}
        positions = []
        for q in queries:
            pos = lookup.get(_query_key(q))
            if pos is None:
                raise ValueError(f"query {q.idname} in {q.name} is not in the reference query list")
            positions.append(pos)
    evaluator = PersonSearchEvaluator(scenes, queries, det_thresh, subset=subset)
    for name, (boxes, scores, emb) in results.per_image().items():
        evaluator.process_gallery(name, boxes, scores, emb)
    for i, pos in enumerate(positions):
        evaluator.process_query(i, results.query_embeddings[pos])
    return evaluator.evaluate()


def evaluate_results_file(
    path: str | Path,
    scenes: Sequence[SceneRecord],
    queries: Sequence[QueryRecord],
    det_thresh: float = DEFAULT_DET_THRESH,
    *,
    reference_queries: Sequence[QueryRecord] | None = None,
    subset: str | None = None,
) -> dict[str, float | int | str]:
    """Load a results ``.npz`` and score it on one protocol (see ``evaluate_results``)."""
    return evaluate_results(
        load_results(path), scenes, queries, det_thresh, reference_queries=reference_queries, subset=subset
    )
