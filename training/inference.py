"""Run an engine over a dataset's test split and score it with the evaluator (training and ``personsearch eval``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detector.engine import Detections, Engine
from detector.model import OIMNet
from training.data import SceneDataset, load_rgb
from training.datasets.cuhk_sysu import CUHKSYSU
from training.datasets.records import QueryRecord, SceneRecord
from training.evaluation import PersonSearchEvaluator, save_results

logger = logging.getLogger(__name__)


def detect_gallery(
    engine: Engine, dataset: CUHKSYSU, names: Iterable[str], batch_size: int = 1, progress: bool = True
) -> dict[str, Detections]:
    """Detect and embed every named test image once (all gallery sizes reuse the result)."""
    names = sorted(set(names))
    out: dict[str, Detections] = {}
    bar = tqdm(total=len(names), desc="gallery", unit="img", disable=not progress, leave=False)
    for i in range(0, len(names), batch_size):
        chunk = names[i : i + batch_size]
        for name, det in zip(chunk, engine.detect([load_rgb(str(dataset.image_path(n))) for n in chunk])):
            out[name] = det
        bar.update(len(chunk))
    bar.close()
    return out


def embed_annotated(
    engine: Engine, dataset: CUHKSYSU, names: Iterable[str], progress: bool = True
) -> dict[str, Detections]:
    """The ground-truth-box protocol: every annotated person of each named test image, embedded like a query.

    Each box gets score 1, so the evaluator's detection threshold keeps them all. Scoring these instead of the
    detector's output isolates identification from detection (detection AP and recall are then 1 by construction).
    """
    annotated = {s.name: s.boxes for s in dataset.test_scenes()}
    out: dict[str, Detections] = {}
    dim = 0
    bar = tqdm(sorted(set(names)), desc="gallery (annotated boxes)", unit="img", disable=not progress, leave=False)
    for name in bar:
        boxes = np.asarray(annotated.get(name, np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)
        if len(boxes) == 0:
            out[name] = Detections(boxes, np.zeros(0, np.float32), np.zeros((0, dim), np.float32))
            continue
        feats = np.asarray(engine.embed(load_rgb(str(dataset.image_path(name))), boxes), dtype=np.float32)
        dim = feats.shape[1]
        out[name] = Detections(boxes, np.ones(len(boxes), np.float32), feats)
    for name, det in out.items():  # images without a person seen before the first embedding
        if det.embeddings.shape[1] != dim:
            out[name] = Detections(det.boxes, det.scores, np.zeros((0, dim), np.float32))
    return out


@torch.no_grad()
def embed_scene_persons(
    model: OIMNet,
    scenes: Sequence[SceneRecord],
    device: torch.device,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every annotated person of ``scenes`` embedded from its box by ``model`` (an OIMNet, in eval mode meanwhile).

    Returns (N, E) unit-norm features on the CPU and their (N,) identity labels (``SceneRecord.pids``), in scene
    order. The trainer fills OIM's lookup table and queue from them before a fine-tune (``init_tables``).
    """
    dataset = SceneDataset(scenes)  # the images and boxes as training reads them, unflipped
    was_training = model.training
    model.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    bar = tqdm(total=len(dataset), desc="embedding training persons", unit="img", disable=not progress, leave=False)
    try:
        for i in range(0, len(dataset), batch_size):
            items = [dataset[(j, False)] for j in range(i, min(i + batch_size, len(dataset)))]
            images = [image.to(device) for image, _, _ in items]
            boxes = [target["boxes"].to(device) for _, target, _ in items]
            feats.extend(f.float().cpu() for f in model.embed_boxes(images, boxes))
            labels.extend(target["pids"] for _, target, _ in items)
            bar.update(len(items))
    finally:
        bar.close()
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(feats), torch.cat(labels)


def embed_queries(engine: Engine, dataset: CUHKSYSU, queries: list[QueryRecord], progress: bool = True) -> np.ndarray:
    """The paper's query protocol: embed each query's ground-truth box in its image -> (Q, E)."""
    feats = []
    for q in tqdm(queries, desc="queries", unit="q", disable=not progress, leave=False):
        feats.append(engine.embed(load_rgb(str(dataset.image_path(q.name))), q.box[None, :])[0])
    return np.stack(feats) if feats else np.zeros((0, 0), np.float32)


def evaluate_engine(
    engine: Engine,
    dataset: CUHKSYSU,
    gallery_sizes: Iterable[int] = (100,),
    subsets: Iterable[str | None] = (None,),
    det_thresh: float = 0.5,
    max_queries: int | None = None,
    results_path: Path | None = None,
    progress: bool = True,
    gt_boxes: bool = False,
) -> list[dict]:
    """Evaluate ``engine`` for every (gallery size, subset) and return one result dict each.

    ``gt_boxes`` scores identification alone: the gallery holds every annotated person (``embed_annotated``)
    instead of the detector's output, as person-search papers do to separate re-identification from detection.

    ``results_path`` (optional) saves the gallery detections and the embeddings of every query of the protocol in
    the results-file format (docs/evaluation.md), so they can be scored again without the model.
    """
    gallery_sizes, subsets = list(gallery_sizes), list(subsets)
    protocols = [(g, s, dataset.queries(g, subset=s)[:max_queries]) for g in gallery_sizes for s in subsets]
    scenes = dataset.test_scenes()
    wanted = {q.name for *_, qs in protocols for q in qs}
    wanted |= {g.name for *_, qs in protocols for q in qs for g in q.gallery}
    wanted |= {s.name for s in scenes}  # detection AP/recall is measured over every test image
    if gt_boxes:
        detections = embed_annotated(engine, dataset, wanted, progress=progress)
    else:
        detections = detect_gallery(engine, dataset, wanted, progress=progress)
    query_cache: dict[tuple[str, tuple[float, ...]], np.ndarray] = {}

    def query_embeddings(queries: list[QueryRecord]) -> np.ndarray:
        missing = [q for q in queries if _key(q) not in query_cache]
        for q, f in zip(missing, embed_queries(engine, dataset, missing, progress=progress)):
            query_cache[_key(q)] = f
        return np.stack([query_cache[_key(q)] for q in queries])

    results = []
    for _gallery_size, subset, queries in protocols:
        evaluator = PersonSearchEvaluator(scenes, queries, det_thresh=det_thresh, subset=subset)
        evaluator.reset()
        for name, det in detections.items():
            evaluator.process_gallery(name, det.boxes, det.scores, det.embeddings)
        for i, f in enumerate(query_embeddings(queries)):
            evaluator.process_query(i, f)
        res = evaluator.evaluate()
        res["subset"] = subset or "all"
        res["gallery_boxes"] = "annotated" if gt_boxes else "detected"
        results.append(res)
    if results_path is not None:
        # A results file holds every query of the protocol (the TestG list), whatever subset or cap was scored.
        names = sorted(detections)
        save_results(
            results_path,
            image_names=names,
            det_boxes=[detections[n].boxes for n in names],
            det_scores=[detections[n].scores for n in names],
            det_embeddings=[detections[n].embeddings for n in names],
            query_embeddings=query_embeddings(dataset.queries(gallery_sizes[0])),
        )
    return results


def _key(q: QueryRecord) -> tuple[str, tuple[float, ...]]:
    return q.name, tuple(q.box.tolist())
