"""The synthetic person-search world: identities, scenes and galleries written in CUHK-SYSU's exact on-disk layout.

``generate_world`` plans everything first in one process (who appears in which image, who is small or occluded, which
instance is each test identity's query), renders the scenes (optionally in worker processes, each image from its own
seed so the output never depends on the worker count), then writes the MATLAB annotations. The layout and shapes are
those of /work/shared/cuhk-sysu-layout.md, so the real ``CUHKSYSU`` loader reads the world unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from training.synth.render import (
    Appearance,
    Photometric,
    Pose,
    apply_photometric,
    draw_occluder,
    draw_person,
    person_aspect,
    render_background,
)

logger = logging.getLogger(__name__)

# scipy stamps the creation time into the 116-byte MAT header text; a fixed text keeps files byte-identical per seed.
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by personsearch's synthetic world".ljust(116, b" ")


class SynthConfig(BaseModel):
    """Everything that shapes a synthetic world; the seed is passed separately."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_identities: int = Field(default=360, ge=1)
    test_identities: int = Field(default=60, ge=1)
    train_images: int = Field(default=1500, ge=1)
    pool_images: int = Field(default=400, ge=2)  # the test images (pool.mat); galleries are drawn from them
    image_width: int = Field(default=640, ge=64)
    image_height: int = Field(default=480, ge=64)
    min_person_height: int = Field(default=50, ge=16)  # pixels
    max_person_height: int = Field(default=400, ge=16)  # pixels; at most image_height - 2
    small_height: int = Field(default=60, ge=16)  # boxes shorter than this are low-resolution (the Resolution subset)
    small_fraction: float = Field(default=0.12, ge=0, le=1)  # persons drawn shorter than small_height
    occluded_fraction: float = Field(default=0.2, ge=0, le=1)  # persons with an object drawn in front of them
    occlusion_coverage: tuple[float, float] = (0.35, 0.75)  # fraction of the box an occluder hides
    occlusion_visible_max: float = Field(
        default=0.7, gt=0, le=1
    )  # queries this occluded or worse form the Occlusion subset
    hard_visible_max: float = Field(default=0.5, ge=0, le=1)  # boxes this occluded or worse get ishard = 1
    train_instances: tuple[int, int] = (4, 10)  # images per training identity (inclusive range)
    test_instances: tuple[int, int] = (2, 5)  # pool images per test identity, one of them holds its query
    max_labeled_per_image: int = Field(default=4, ge=1)
    passersby: tuple[int, int] = (2, 4)  # unlabeled people per image (inclusive range)
    lookalike_fraction: float = Field(
        default=0.3, ge=0, le=1
    )  # passers-by who copy a labeled identity but one attribute
    # Training identities drawn as a copy of another training identity with one attribute changed ("twins"): labeled
    # look-alike pairs, so the lookup table always holds both and the loss must tell them apart on that attribute.
    train_twin_fraction: float = Field(default=0.0, ge=0, le=0.5)
    distractor_images: float = Field(default=0.25, ge=0, lt=1)  # fraction of the pool holding no test identity
    distractor_lookalike_fraction: float = Field(default=0.6, ge=0, le=1)  # passers-by in those that are look-alikes
    photometric_strength: float = Field(default=1.0, ge=0)  # 0 = ideal camera
    gallery_sizes: tuple[int, ...] = (50, 100)
    jpeg_quality: int = Field(default=90, ge=30, le=100)

    @model_validator(mode="after")
    def _check_consistent(self) -> SynthConfig:
        if self.max_person_height > self.image_height - 2:
            raise ValueError(f"max_person_height {self.max_person_height} must be <= image_height - 2")
        if not self.min_person_height < self.small_height <= self.max_person_height:
            raise ValueError("need min_person_height < small_height <= max_person_height")
        for name in ("train_instances", "test_instances", "passersby", "occlusion_coverage"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} range is empty: {low} > {high}")
        if self.train_instances[0] < 2 or self.test_instances[0] < 2:
            raise ValueError(
                "every labeled identity must appear in at least 2 images (train_instances, test_instances)"
            )
        if self.passersby[0] < 1:
            raise ValueError("passersby must be at least 1 so every image holds an unlabeled person")
        if not self.gallery_sizes:
            raise ValueError("gallery_sizes must name at least one TestG<N>")
        # A gallery holds the query's other images plus negatives, never the query image: N + 1 images at least.
        if self.pool_images < max(self.gallery_sizes) + 1:
            raise ValueError(f"pool_images {self.pool_images} too small for gallery size {max(self.gallery_sizes)}")
        if self.train_instances[1] > self.train_images:
            raise ValueError("train_instances exceeds train_images: an identity appears once per image")
        holders = self.pool_images - self._num_distractor_images()
        if self.test_instances[1] > holders:
            raise ValueError("test_instances exceeds the pool images that hold test identities")
        # Greedy placement needs slack: demand at most 80% of the labeled slots.
        if self.train_identities * self.train_instances[1] > 0.8 * self.train_images * self.max_labeled_per_image:
            raise ValueError("too many training identity instances for train_images * max_labeled_per_image")
        if self.test_identities * self.test_instances[1] > 0.8 * holders * self.max_labeled_per_image:
            raise ValueError("too many test identity instances for the pool's images * max_labeled_per_image")
        return self

    def _num_distractor_images(self) -> int:
        return round(self.pool_images * self.distractor_images)


PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    # For tests and smoke runs: a few dozen images, TestG50 only, generated in a few seconds.
    "tiny": SynthConfig(
        train_identities=8,
        test_identities=6,
        train_images=24,
        pool_images=56,
        image_width=400,
        image_height=300,
        max_person_height=280,
        train_instances=(3, 5),
        test_instances=(2, 4),
        gallery_sizes=(50,),
    ),
    # A training world in CUHK-SYSU's regime (5,532 identities in 11,206 images, most seen in 2-3 images): 3,000
    # identities in 6,000 images, 2-6 images each, so each is rarely seen. Its own test split is only a token one;
    # networks trained on it are scored on the default world's (`personsearch recipe --train-data`).
    "train3k": SynthConfig(
        train_identities=3000,
        train_images=6000,
        train_instances=(2, 6),
        test_identities=10,
        pool_images=60,
        gallery_sizes=(50,),
    ),
    # A test world for choosing between networks: 200 query identities in 1,000 pool images (the default world has 60
    # in 400, too few to tell 0.02 mAP apart: one query is 0.017 of top-1). Its training split is only a token one.
    # `personsearch synth --out data/synth-test200 --seed 3 --preset test200` is the world the model card scores on.
    "test200": SynthConfig(
        test_identities=200,
        pool_images=1000,
        train_identities=20,
        train_images=100,
    ),
}


@dataclass(frozen=True)
class WorldSummary:
    """What ``generate_world`` wrote."""

    out_dir: Path
    seed: int
    train_images: int
    pool_images: int
    train_identities: int
    test_identities: int
    boxes: int  # every annotated person box
    labeled_boxes: int  # boxes of train or test identities
    queries: int
    occlusion_queries: int
    resolution_queries: int
    gallery_sizes: tuple[int, ...]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        values = asdict(self)
        values["out_dir"] = str(self.out_dir)
        values["gallery_sizes"] = list(self.gallery_sizes)
        return values


# ---------------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PersonPlan:
    appearance: Appearance
    identity: int  # index into the world's identities (train first, then test); -1 for a passer-by
    small: bool
    occlusion: float  # fraction of the box to hide, 0 = unoccluded
    lookalike_of: int = -1  # for a look-alike passer-by or a twin identity: the identity it copies
    changed: str = ""  # ... and the attribute it changed (render.LOOKALIKE_ATTRIBUTES)


@dataclass(frozen=True)
class _ScenePlan:
    name: str
    seed: np.random.SeedSequence
    persons: tuple[_PersonPlan, ...]


@dataclass(frozen=True)
class _RenderSettings:
    image_dir: Path
    width: int
    height: int
    min_height: int
    max_height: int
    small_height: int
    photometric_strength: float
    jpeg_quality: int


@dataclass(frozen=True)
class _SceneResult:
    boxes: np.ndarray  # (K, 4) int64 x, y, w, h in pixels, in plan order
    visible: np.ndarray  # (K,) float64 fraction of each person's pixels left visible


def _assign(rng: np.random.Generator, counts: list[int], images: np.ndarray, capacity: int) -> list[np.ndarray]:
    """For each identity, ``counts[i]`` distinct images (from ``images``) with at most ``capacity`` labeled each."""
    free = np.full(len(images), capacity, dtype=np.int64)
    chosen = []
    for count in counts:
        open_ = np.flatnonzero(free > 0)
        if len(open_) < count:
            raise ValueError("not enough image slots to place every labeled identity; add images or lower instances")
        weights = free[open_] / free[open_].sum()  # fill emptier images first so labeled people spread out
        pick = rng.choice(open_, size=count, replace=False, p=weights)
        free[pick] -= 1
        chosen.append(np.sort(images[pick]))
    return chosen


def _plan(config: SynthConfig, seed: int) -> tuple[list[_ScenePlan], np.ndarray, list[str], dict[int, tuple[int, int]]]:
    """Scenes to render, which of them form the pool, identity names and each test identity's query instance.

    Returns (scenes, pool indices (sorted), identity names (train then test), {test identity: (scene, slot)}).
    """
    root = np.random.SeedSequence(seed)
    look_seq, plan_seq, image_seq = root.spawn(3)
    look_rng, rng = np.random.default_rng(look_seq), np.random.default_rng(plan_seq)
    n_train, n_test = config.train_identities, config.test_identities
    appearances = [Appearance.random(look_rng) for _ in range(n_train + n_test)]
    names = [f"p{k}" for k in rng.permutation(np.arange(1, n_train + n_test + 1))]
    twin_of = _twins(config, root, appearances)

    n_images = config.train_images + config.pool_images
    pool = np.sort(rng.permutation(n_images)[: config.pool_images])  # pool names interleave with training names
    is_pool = np.zeros(n_images, bool)
    is_pool[pool] = True
    train_imgs = np.flatnonzero(~is_pool)
    holders = np.sort(rng.permutation(pool)[: config.pool_images - config._num_distractor_images()])

    labeled: list[list[int]] = [[] for _ in range(n_images)]
    train_counts = [int(rng.integers(config.train_instances[0], config.train_instances[1] + 1)) for _ in range(n_train)]
    for ident, imgs in enumerate(_assign(rng, train_counts, train_imgs, config.max_labeled_per_image)):
        for i in imgs:
            labeled[i].append(ident)
    test_counts = [int(rng.integers(config.test_instances[0], config.test_instances[1] + 1)) for _ in range(n_test)]
    for e, imgs in enumerate(_assign(rng, test_counts, holders, config.max_labeled_per_image)):
        for i in imgs:
            labeled[i].append(n_train + e)

    def occlusion() -> float:
        if rng.random() >= config.occluded_fraction:
            return 0.0
        return float(rng.uniform(*config.occlusion_coverage))

    holder_set = set(holders.tolist())
    persons_per_image: list[list[_PersonPlan]] = []
    for i in range(n_images):
        split = range(n_train, n_train + n_test) if is_pool[i] else range(n_train)
        look_p = config.lookalike_fraction
        if is_pool[i] and i not in holder_set:
            look_p = config.distractor_lookalike_fraction
        persons = [
            _PersonPlan(
                appearances[k], k, bool(rng.random() < config.small_fraction), occlusion(), *twin_of.get(k, (-1, ""))
            )
            for k in labeled[i]
        ]
        for _ in range(int(rng.integers(config.passersby[0], config.passersby[1] + 1))):
            source, changed = -1, ""
            if rng.random() < look_p:
                source = int(rng.choice(split))
                look, changed = appearances[source].lookalike_changing(look_rng)
            else:
                look = Appearance.random(look_rng)
            small = bool(rng.random() < config.small_fraction)
            persons.append(_PersonPlan(look, -1, small, occlusion(), source, changed))
        order = rng.permutation(len(persons))  # labeled people are not always first in the annotation
        persons_per_image.append([persons[j] for j in order])

    queries: dict[int, tuple[int, int]] = {}
    for e in range(n_test):
        k = n_train + e
        instances = [(i, slot) for i in holders for slot, p in enumerate(persons_per_image[i]) if p.identity == k]
        queries[e] = instances[int(rng.integers(len(instances)))]
    _guarantee_subsets(config, persons_per_image, queries)

    image_seeds = image_seq.spawn(n_images)
    scenes = [_ScenePlan(f"s{i + 1}.jpg", image_seeds[i], tuple(persons_per_image[i])) for i in range(n_images)]
    return scenes, pool, names, queries


def _twins(
    config: SynthConfig, root: np.random.SeedSequence, appearances: list[Appearance]
) -> dict[int, tuple[int, str]]:
    """Turn ``train_twin_fraction`` of the training identities into one-attribute copies of others, in place.

    Returns {twin: (source, changed attribute)}. Each source has one twin and is not a twin itself. The draws come from
    a fourth child of the world's seed, so a world without twins is byte-identical to one made before the option.
    """
    n_twins = round(config.train_twin_fraction * config.train_identities)
    if n_twins == 0:
        return {}
    twin_rng = np.random.default_rng(root.spawn(1)[0])
    order = twin_rng.permutation(config.train_identities)
    twin_of = {}
    for twin, source in zip(order[:n_twins].tolist(), order[n_twins : 2 * n_twins].tolist()):
        appearances[twin], changed = appearances[source].lookalike_changing(twin_rng)
        twin_of[twin] = (source, changed)
    return twin_of


def _guarantee_subsets(
    config: SynthConfig, persons: list[list[_PersonPlan]], queries: dict[int, tuple[int, int]]
) -> None:
    """Make at least one query small and one heavily occluded so both evaluation subsets are never empty."""
    plans = [persons[i][slot] for i, slot in queries.values()]
    keys = list(queries)
    if config.small_fraction > 0 and not any(p.small for p in plans):
        i, slot = queries[keys[0]]
        p = persons[i][slot]
        persons[i][slot] = _PersonPlan(p.appearance, p.identity, True, 0.0)
    if config.occluded_fraction > 0 and not any(p.occlusion >= 0.5 and not p.small for p in plans):
        i, slot = queries[keys[-1]]
        p = persons[i][slot]
        if not p.small:
            persons[i][slot] = _PersonPlan(p.appearance, p.identity, False, max(0.6, config.occlusion_coverage[1]))


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def _place(
    rng: np.random.Generator,
    s: _RenderSettings,
    plan: _PersonPlan,
    pose: Pose,
    horizon: int,
    placed: list[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    """A box (x1, y1, x2, y2) standing on the ground plane, overlapping earlier people as little as it can."""
    if plan.small:
        h = int(rng.integers(s.min_height, s.small_height))
    else:  # log-uniform: as many people far away as near, like a street camera
        h = round(math.exp(rng.uniform(math.log(s.small_height), math.log(s.max_height))))
    w = min(s.width - 2, max(8, round(h * person_aspect(plan.appearance, pose))))
    best, best_overlap = (0, 0, 0, 0), math.inf
    for _ in range(12):
        # Perspective: feet lower in the frame for taller (nearer) people, jittered, and the box kept inside the image.
        bottom = int(np.clip(horizon + h * rng.uniform(0.5, 1.1), h + 1, s.height - 1))
        left = int(rng.integers(1, s.width - w))
        box = (left, bottom - h, left + w, bottom)
        overlap = max((_iou(box, other) for other in placed), default=0.0)
        if overlap < best_overlap:
            best, best_overlap = box, overlap
        if overlap <= 0.25:
            break
    return best


def _render_scene(job: tuple[_ScenePlan, _RenderSettings]) -> _SceneResult:
    """Render one scene to its JPEG and return its boxes; a pure function of the plan, so any worker may run it."""
    plan, s = job
    rng = np.random.default_rng(plan.seed)
    background = render_background(rng, s.width, s.height)
    img = background.image
    poses = [Pose.random(rng) for _ in plan.persons]
    boxes: list[tuple[int, int, int, int]] = []
    for person, pose in zip(plan.persons, poses):
        boxes.append(_place(rng, s, person, pose, background.horizon_y, boxes))
    labels = np.zeros((s.height, s.width), dtype=np.int16)
    stamps = []
    # Back to front: whoever stands lower in the frame is nearer and hides those behind.
    for k in sorted(range(len(boxes)), key=lambda j: (boxes[j][3], j)):
        stamp = draw_person(img, plan.persons[k].appearance, boxes[k], poses[k])
        stamp.paint_labels(labels, k + 1)
        if plan.persons[k].occlusion > 0:
            _, occluder = draw_occluder(img, rng, boxes[k], coverage=plan.persons[k].occlusion, person=stamp)
            occluder.paint_labels(labels, 0)
        stamps.append((k, stamp))
    visible = np.zeros(len(boxes))
    for k, stamp in stamps:
        region = labels[stamp.y0 : stamp.y0 + stamp.mask.shape[0], stamp.x0 : stamp.x0 + stamp.mask.shape[1]]
        total = int(stamp.mask.sum())
        visible[k] = float((region[stamp.mask] == k + 1).sum() / total) if total else 0.0
    img = apply_photometric(img, Photometric.random(rng, s.photometric_strength), rng)
    img.save(s.image_dir / plan.name, format="JPEG", quality=s.jpeg_quality)
    xywh = np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes], dtype=np.int64).reshape(-1, 4)
    return _SceneResult(xywh, visible)


def _render_all(
    scenes: list[_ScenePlan], settings: _RenderSettings, workers: int, progress: bool
) -> Iterator[_SceneResult]:
    jobs = [(scene, settings) for scene in scenes]
    bar = tqdm(total=len(jobs), desc="rendering scenes", unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            yield _render_scene(job)
            bar.update()
    else:
        # fork where the OS has it: workers run only numpy and PIL, and need no importable __main__ (spawn does).
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for result in pool.imap(_render_scene, jobs, chunksize=8):
                yield result
                bar.update()
    bar.close()


# ---------------------------------------------------------------------------------------------------------------------
# MATLAB writing
# ---------------------------------------------------------------------------------------------------------------------


def _double(value: float) -> np.ndarray:
    return np.array([[float(value)]])


def _xywh(box: np.ndarray) -> np.ndarray:
    """A 1 x 4 double idlocate."""
    return np.asarray(box, dtype=np.float64).reshape(1, 4)


def _struct(rows: list[dict[str, Any]], fields: tuple[str, ...]) -> np.ndarray:
    """A 1 x n MATLAB struct array."""
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[f][0, i] = row[f]
    return arr


def _cell(items: list[Any]) -> np.ndarray:
    """An n x 1 MATLAB cell array."""
    arr = np.empty((len(items), 1), dtype=object)
    for i, item in enumerate(items):
        arr[i, 0] = item
    return arr


def _savemat(path: Path, var: str, value: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {var: value}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------------------
# The world
# ---------------------------------------------------------------------------------------------------------------------


def generate_world(
    out_dir: Path, seed: int, config: SynthConfig, progress: bool = True, workers: int = 1
) -> WorldSummary:
    """Render a world into ``out_dir`` in CUHK-SYSU's layout; identical files for identical (seed, config).

    ``workers`` > 1 renders in that many processes; the output does not depend on it.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    image_dir = out_dir / "Image" / "SSM"
    image_dir.mkdir(parents=True, exist_ok=True)
    scenes, pool, names, queries = _plan(config, seed)
    settings = _RenderSettings(
        image_dir,
        config.image_width,
        config.image_height,
        config.min_person_height,
        config.max_person_height,
        config.small_height,
        config.photometric_strength,
        config.jpeg_quality,
    )
    results = list(_render_all(scenes, settings, workers, progress))

    n_train = config.train_identities
    ishard = [(r.visible <= config.hard_visible_max).astype(np.float64) for r in results]
    img_rows = []
    for scene, result, hard in zip(scenes, results, ishard):
        boxes = _struct(
            [{"idlocate": _xywh(b), "ishard": _double(h)} for b, h in zip(result.boxes, hard)], ("idlocate", "ishard")
        )
        img_rows.append({"imname": scene.name, "nAppear": _double(len(result.boxes)), "box": boxes})
    _savemat(out_dir / "annotation" / "Images.mat", "Img", _struct(img_rows, ("imname", "nAppear", "box")))
    _savemat(out_dir / "annotation" / "pool.mat", "pool", _cell([scenes[i].name for i in pool]))
    _write_truth(out_dir / WORLD_TRUTH_FILE, seed, config, scenes, results, names)

    # Every appearance of every labeled identity, in image order: the Train/Person "scene" lists.
    appearances: dict[int, list[tuple[int, int]]] = {}
    for i, scene in enumerate(scenes):
        for slot, person in enumerate(scene.persons):
            if person.identity >= 0:
                appearances.setdefault(person.identity, []).append((i, slot))

    def identity_struct(k: int) -> np.ndarray:
        scene_rows = [
            {"imname": scenes[i].name, "idlocate": _xywh(results[i].boxes[slot]), "ishard": _double(ishard[i][slot])}
            for i, slot in appearances[k]
        ]
        return _struct(
            [
                {
                    "idname": names[k],
                    "nAppear": _double(len(scene_rows)),
                    "scene": _struct(scene_rows, ("imname", "idlocate", "ishard")),
                }
            ],
            ("idname", "nAppear", "scene"),
        )

    train_structs = [identity_struct(k) for k in range(n_train)]
    _savemat(out_dir / "annotation" / "test" / "train_test" / "Train.mat", "Train", _cell(train_structs))
    everyone = np.concatenate([identity_struct(k) for k in range(len(names))], axis=1)
    _savemat(out_dir / "annotation" / "Person.mat", "Person", everyone)

    protocols = _galleries(config, seed, scenes, results, pool, names, queries, appearances, ishard)
    for size, entries in protocols.items():
        _savemat(out_dir / "annotation" / "test" / "train_test" / f"TestG{size}.mat", f"TestG{size}", entries)
    subset_size = 100 if 100 in protocols else max(protocols)
    all_queries = protocols[subset_size]
    heights = np.array([results[i].boxes[slot][3] for i, slot in queries.values()])
    visible = np.array([results[i].visible[slot] for i, slot in queries.values()])
    occluded = np.flatnonzero(visible <= config.occlusion_visible_max)
    small = np.flatnonzero(heights < config.small_height)
    subset_dir = out_dir / "annotation" / "test" / "subset"
    _savemat(subset_dir / "Occlusion.mat", "Occlusion1", all_queries[:, occluded])
    _savemat(subset_dir / "Resolution.mat", "Test_Size", all_queries[:, small])

    summary = WorldSummary(
        out_dir=out_dir,
        seed=seed,
        train_images=len(scenes) - len(pool),
        pool_images=len(pool),
        train_identities=n_train,
        test_identities=config.test_identities,
        boxes=sum(len(r.boxes) for r in results),
        labeled_boxes=sum(len(v) for v in appearances.values()),
        queries=len(queries),
        occlusion_queries=len(occluded),
        resolution_queries=len(small),
        gallery_sizes=tuple(sorted(protocols)),
        seconds=time.perf_counter() - start,
    )
    logger.info("synthetic world written: %s", summary)
    return summary


WORLD_TRUTH_FILE = "world.json"  # beside Image/ and annotation/: what every annotated box is, for error analysis


@dataclass(frozen=True)
class BoxTruth:
    """What the renderer knows about one annotated box that the CUHK-SYSU files do not say."""

    identity: str | None  # the labeled identity (train or test), None for a passer-by
    lookalike_of: str | None  # for a look-alike passer-by or a twin: the identity it copies in all but one attribute
    changed: str | None  # ... the attribute it changed (render.LOOKALIKE_ATTRIBUTES)
    small: bool  # drawn shorter than the config's small_height
    occluder: float  # fraction of the box an occluder was drawn over (0: none; other people are not counted)
    visible: float  # fraction of the person's own pixels left showing (occluders and nearer people)


def _write_truth(
    path: Path,
    seed: int,
    config: SynthConfig,
    scenes: list[_ScenePlan],
    results: list[_SceneResult],
    names: list[str],
) -> None:
    images = {
        scene.name: [
            asdict(
                BoxTruth(
                    identity=names[p.identity] if p.identity >= 0 else None,
                    lookalike_of=names[p.lookalike_of] if p.lookalike_of >= 0 else None,
                    changed=p.changed or None,
                    small=p.small,
                    occluder=round(p.occlusion, 4),
                    visible=round(float(v), 4),
                )
            )
            for p, v in zip(scene.persons, result.visible)
        ]
        for scene, result in zip(scenes, results)
    }
    doc = {"version": 1, "seed": seed, "config": config.model_dump(mode="json"), "images": images}
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def load_world_truth(root: Path | str) -> dict[str, list[BoxTruth]]:
    """Image name -> one ``BoxTruth`` per annotated box, in ``Images.mat`` order, from a world's ``world.json``.

    Raises FileNotFoundError for a dataset that is not a synthetic world (or one generated before the file existed:
    generating it again with the same seed and settings gives the same images and annotations, plus this file).
    """
    path = Path(root) / WORLD_TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: not a synthetic world, or one generated before {WORLD_TRUTH_FILE} existed "
            "(run `personsearch synth` again with the same seed and settings)"
        )
    doc = json.loads(path.read_text())
    if doc.get("version") != 1:
        raise ValueError(f"{path}: version {doc.get('version')!r}, this code reads 1")
    return {name: [BoxTruth(**b) for b in boxes] for name, boxes in doc["images"].items()}


def _galleries(
    config: SynthConfig,
    seed: int,
    scenes: list[_ScenePlan],
    results: list[_SceneResult],
    pool: np.ndarray,
    names: list[str],
    queries: dict[int, tuple[int, int]],
    appearances: dict[int, list[tuple[int, int]]],
    ishard: list[np.ndarray],
) -> dict[int, np.ndarray]:
    """The TestG<N> struct arrays: the same queries in each; positives first; smaller galleries nest in larger."""
    # Its own stream (after _plan's three) so gallery sampling never shifts the rendered scenes.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    n_train = config.train_identities
    protocols: dict[int, list[dict[str, Any]]] = {size: [] for size in sorted(config.gallery_sizes)}
    gallery_fields = ("imname", "idlocate", "ishard")
    for e, (qi, qslot) in queries.items():
        k = n_train + e
        query = _struct(
            [
                {
                    "imname": scenes[qi].name,
                    "idlocate": _xywh(results[qi].boxes[qslot]),
                    "ishard": _double(ishard[qi][qslot]),
                    "idname": names[k],
                }
            ],
            ("imname", "idlocate", "ishard", "idname"),
        )
        positives = [
            {"imname": scenes[i].name, "idlocate": _xywh(results[i].boxes[slot]), "ishard": _double(ishard[i][slot])}
            for i, slot in appearances[k]
            if i != qi
        ]
        holding = {i for i, _ in appearances[k]}
        negatives = [
            {"imname": scenes[i].name, "idlocate": np.zeros((1, 0)), "ishard": np.zeros((1, 0))}
            for i in rng.permutation([i for i in pool if i not in holding])
        ]
        for size, entries in protocols.items():
            gallery = positives[:size] + negatives[: max(0, size - len(positives))]
            entries.append({"Query": query, "Gallery": _struct(gallery, gallery_fields)})
    return {size: _struct(entries, ("Query", "Gallery")) for size, entries in protocols.items()}


def main_synth(
    out: Path, seed: int, preset: str = "default", workers: int | None = None, progress: bool = True, **overrides: Any
) -> dict[str, Any]:
    """CLI entry: generate the ``preset`` world with SynthConfig ``overrides`` (e.g. ``train_images=200``) into ``out``.

    Overrides that are None are ignored (unset CLI options); unknown names are refused by SynthConfig. ``workers``
    defaults to the CPU count (at most 4) for worlds over 200 images. Returns the summary as a JSON-ready dict.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic-world preset {preset!r}; choose one of {sorted(PRESETS)}")
    values = PRESETS[preset].model_dump()
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = SynthConfig(**values)
    if workers is None:
        workers = min(4, multiprocessing.cpu_count()) if config.train_images + config.pool_images > 200 else 1
    return generate_world(Path(out), seed, config, progress=progress, workers=workers).as_dict()


__all__ = [
    "PRESETS",
    "WORLD_TRUTH_FILE",
    "BoxTruth",
    "SynthConfig",
    "WorldSummary",
    "generate_world",
    "load_world_truth",
    "main_synth",
]
