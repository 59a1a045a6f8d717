"""Synthetic surveillance video: fixed cameras over a street, people walking through, ground truth for every frame.

The drawing layer is ``training.synth.render``, the same one the still-image world uses. Each camera renders its empty
scene once, fixes its lighting (one ``Photometric`` draw) and then, per frame, draws the people in view back to front
over a copy of that scene, draws the static objects that stand in front of them, adds fresh sensor noise and hands the
frame to an H.264 encoder (PyAV's bundled libx264). Geometry is a level pinhole camera over a flat ground plane, so a
walker's size follows from depth exactly as in the still world (feet lower in the frame = nearer = taller), and the gait
phase advances with the distance walked.

``render_camera_video`` renders one camera; ``render_camera_set`` plans a scene for several cameras in which named
identities walk past different cameras at different times among passers-by (some of them their look-alikes), and
writes one search photo per identity with ``render_identity_photo``. Every file is a pure function of the seed; the
ground truth JSON is identical per seed, the video bytes are identical for the same encoder build.

Speed, rendering and encoding together in one process: 40 frames/s at 640 x 480 (the default camera: 8 passers-by
plus the named visitors, about 4 people in view), so the default two 20 s, 10 fps cameras take 10 s. Measured with
``time personsearch synth-video --out /tmp/v --seed 0`` on this project's 2-core CPU machine while a training job kept
it busy (load average 3.8). The empty scene is developed once per camera and each frame re-develops only the pixels
around people; running ``apply_photometric`` on every whole frame instead gave 23 frames/s under the same conditions.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from training.synth.render import (
    FACINGS,
    Appearance,
    Facing,
    Photometric,
    Pose,
    Stamp,
    apply_photometric,
    camera_optics,
    camera_tone,
    draw_occluder,
    draw_person,
    person_extent,
    render_background,
)

logger = logging.getLogger(__name__)

GROUND_TRUTH_VERSION = 1
REFERENCE_STATURE = 1.7  # metres: the person the camera geometry is set up around
STRIDE_PER_STATURE = 0.82  # one gait cycle (two steps) covers about 0.82 body heights
# Static objects a person can walk behind; "crowd" (a nearer person's back) would have to move, so it is left out.
STATIC_OCCLUDERS = ("car", "wall", "hedge", "pole", "signboard")
# PyAV's wheels bundle libx264; other FFmpeg builds may only have Cisco's OpenH264.
H264_ENCODERS = ("libx264", "libopenh264")

Box = tuple[int, int, int, int]


class CameraVideoConfig(BaseModel):
    """One camera's video: frame size and rate, length, who walks through, camera quality and encoding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(default=640, ge=64)  # pixels; even, as H.264 4:2:0 needs
    height: int = Field(default=480, ge=64)  # pixels; even
    fps: int = Field(default=10, ge=1, le=60)
    seconds: float = Field(default=20.0, gt=0)
    passersby: int = Field(default=8, ge=0)  # unlabeled people who walk through during the video
    lookalike_fraction: float = Field(default=0.3, ge=0, le=1)  # passers-by copying a named identity but one attribute
    min_person_height: float = Field(default=0.08, gt=0, lt=1)  # fraction of the frame height: the farthest walkers
    max_person_height: float = Field(default=0.7, gt=0, le=0.95)  # fraction of the frame height: the nearest walkers
    walking_speed: tuple[float, float] = (1.0, 1.6)  # m/s
    pause_probability: float = Field(default=0.25, ge=0, le=1)  # walkers who stand still once on their way
    pause_seconds: tuple[float, float] = (1.0, 4.0)
    occluders: tuple[int, int] = (0, 2)  # static objects in front of the walking area (inclusive range)
    photometric_strength: float = Field(default=0.6, ge=0)  # fixed per camera; only sensor noise changes per frame
    crf: int = Field(default=23, ge=0, le=51)  # x264 constant rate factor: 23 is its default, visually clean
    preset: str = "veryfast"  # x264 speed preset
    keyframe_seconds: float = Field(default=1.0, gt=0)  # GOP length: a late joiner of the stream waits at most this

    @model_validator(mode="after")
    def _check_consistent(self) -> CameraVideoConfig:
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even for yuv420p, got {self.width} x {self.height}")
        if self.min_person_height >= self.max_person_height:
            raise ValueError("min_person_height must be below max_person_height")
        for name in ("walking_speed", "pause_seconds", "occluders"):
            low, high = getattr(self, name)
            if low > high or low < 0:
                raise ValueError(f"{name} must be a non-negative, non-empty range, got {(low, high)}")
        if self.walking_speed[0] <= 0:
            raise ValueError("walking_speed must be positive")
        return self

    @property
    def num_frames(self) -> int:
        """Frames in the video: ``seconds * fps``, at least one."""
        return max(1, round(self.seconds * self.fps))


# ---------------------------------------------------------------------------------------------------------------------
# Ground truth: the contract a tracker or search evaluator reads
# ---------------------------------------------------------------------------------------------------------------------


class PersonTruth(BaseModel):
    """One person in one frame: ``box`` x1, y1, x2, y2 in pixels (x2, y2 exclusive), clipped to the frame."""

    model_config = ConfigDict(extra="forbid")

    track: int  # the walker's id on this camera, stable across frames
    identity: str | None  # a named identity, or None for an unlabeled passer-by
    box: tuple[int, int, int, int]
    visible: float  # fraction of the person's drawn pixels showing: others, static objects and the frame edge hide


class FrameTruth(BaseModel):
    """Everyone visible in frame ``index``, shown at ``time`` seconds."""

    model_config = ConfigDict(extra="forbid")

    index: int
    time: float
    people: list[PersonTruth]


class TrackTruth(BaseModel):
    """One walker's pass through the camera; frames are None when nothing of them was ever visible."""

    model_config = ConfigDict(extra="forbid")

    track: int
    identity: str | None
    lookalike_of: str | None  # the named identity this passer-by copies (all but one attribute)
    first_frame: int | None
    last_frame: int | None


class CameraGroundTruth(BaseModel):
    """The ground truth of one camera's video; file names are relative to the JSON's folder."""

    model_config = ConfigDict(extra="forbid")

    version: int = GROUND_TRUTH_VERSION
    camera: str
    video: str
    background: str  # the empty scene as this camera records it (same lighting, no noise), PNG
    width: int
    height: int
    fps: int
    num_frames: int
    tracks: list[TrackTruth]
    frames: list[FrameTruth]


def load_ground_truth(path: Path) -> CameraGroundTruth:
    """Read and validate a camera's ground-truth JSON."""
    return CameraGroundTruth.model_validate_json(Path(path).read_text())


# ---------------------------------------------------------------------------------------------------------------------
# Identities, cameras and walkers
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A named person who may pass several cameras: how they look and how tall they are (metres)."""

    name: str
    appearance: Appearance
    stature: float = REFERENCE_STATURE


@dataclass(frozen=True)
class Visit:
    """``identity`` walks through a camera's view between ``start`` and ``end`` seconds into the video."""

    identity: Identity
    start: float
    end: float


class _Person(NamedTuple):
    """Who a walker is: look, named identity (None for a passer-by), whom a look-alike copies, height in metres."""

    appearance: Appearance
    identity: str | None
    lookalike_of: str | None
    stature: float


@dataclass(frozen=True)
class _Camera:
    """A level pinhole camera over flat ground: ground point (X lateral, Z depth) in metres -> pixels."""

    width: int
    height: int
    horizon: float  # pixels: the image row of points at infinite depth
    focal: float  # pixels
    mount: float  # metres above the ground
    near: float  # depth (m) of the nearest walkers: feet inside the frame, at most max_person_height tall
    far: float  # depth (m) of the farthest walkers: min_person_height tall

    @classmethod
    def random(cls, rng: np.random.Generator, config: CameraVideoConfig, horizon: int) -> _Camera:
        """A camera for a background whose ground plane starts at row ``horizon``."""
        fov = math.radians(rng.uniform(55, 75))
        focal = config.width / (2 * math.tan(fov / 2))
        # (feet row - horizon) / person height = mount / stature: 0.6-1.0 matches the still world's 0.5-1.1.
        mount = REFERENCE_STATURE * float(rng.uniform(0.6, 1.0))
        far = focal * REFERENCE_STATURE / (config.min_person_height * config.height)
        tallest = focal * REFERENCE_STATURE / (config.max_person_height * config.height)
        feet_in_frame = focal * mount / max(1.0, config.height - 2 - horizon)
        near = min(max(tallest, feet_in_frame), 0.8 * far)
        return cls(config.width, config.height, float(horizon), focal, mount, near, far)

    def feet(self, x: float, z: float) -> tuple[float, float]:
        """Pixel (column, row) of a ground point."""
        return self.width / 2 + self.focal * x / z, self.horizon + self.focal * self.mount / z

    def half_view(self, z: float) -> float:
        """Half the width (m) of the ground the camera sees at depth ``z``."""
        return self.width / 2 * z / self.focal

    def depth(self, rng: np.random.Generator, reach: float | None = None) -> float:
        """A depth log-uniform from near to ``reach`` (default far): as many people far away as near."""
        return float(math.exp(rng.uniform(math.log(self.near), math.log(reach or self.far))))


@dataclass(frozen=True)
class _Walker:
    """One person's pass through one camera's view along a polyline on the ground."""

    track: int
    appearance: Appearance
    identity: str | None
    lookalike_of: str | None
    stature: float  # metres
    path: np.ndarray  # (P, 2) ground points X, Z in metres
    speed: float  # m/s
    start: float  # seconds into the video when they are at path[0]
    pause_at: float  # metres along the path where they stand still; inf for never
    pause: float  # seconds standing there
    phase0: float  # gait phase at path[0], radians

    @property
    def length(self) -> float:
        """Path length in metres."""
        return float(np.linalg.norm(np.diff(self.path, axis=0), axis=1).sum())

    def state(self, t: float) -> tuple[float, float, Pose] | None:
        """Ground position (X, Z) and pose at ``t`` seconds, or None before they start or after they leave."""
        elapsed = t - self.start
        reach_pause = self.pause_at / self.speed
        walked = elapsed if elapsed < reach_pause else max(reach_pause, elapsed - self.pause)
        dist = self.speed * walked
        if elapsed < 0 or dist >= self.length:
            return None
        segments = np.diff(self.path, axis=0)
        ends = np.cumsum(np.linalg.norm(segments, axis=1))
        k = min(int(np.searchsorted(ends, dist, side="right")), len(segments) - 1)
        seg_len = float(np.linalg.norm(segments[k])) or 1.0
        along = (dist - (ends[k] - seg_len)) / seg_len
        x, z = self.path[k] + along * segments[k]
        stride = STRIDE_PER_STATURE * self.stature
        phase = self.phase0 + 2 * math.pi * dist / stride
        if self.pause_at < self.length and elapsed >= reach_pause:
            # Standing still means both legs straight (phase a multiple of pi); the gait resumes from there.
            at_pause = self.phase0 + 2 * math.pi * self.pause_at / stride
            phase += round(at_pause / math.pi) * math.pi - at_pause
        return float(x), float(z), Pose(phase % (2 * math.pi), _facing(float(segments[k][0]), float(segments[k][1])))


def _facing(dx: float, dz: float) -> Facing:
    """Which way a person walking along (dx, dz) on the ground faces the camera."""
    if abs(dx) >= 0.7 * abs(dz):
        return "right" if dx > 0 else "left"
    return "front" if dz < 0 else "back"


def _person_box(cam: _Camera, x: float, z: float, stature: float, appearance: Appearance, pose: Pose) -> Box:
    """The tight (unclipped) pixel box of a person whose feet stand at ground point (x, z)."""
    fx, fy = cam.feet(x, z)
    k = cam.focal * stature / z  # pixels per body unit: the body is 1 unit tall, soles at y = 1
    ex0, ey0, ex1, ey1 = person_extent(appearance, pose)
    x1, y1 = round(fx + ex0 * k), round(fy + (ey0 - 1) * k)
    return x1, y1, max(x1 + 2, round(fx + ex1 * k)), max(y1 + 2, round(fy + (ey1 - 1) * k))


@dataclass(frozen=True)
class _StaticOccluder:
    """A car, wall, hedge, pole or sign standing at a fixed depth; walkers behind its feet row are hidden by it."""

    patch: Image.Image  # RGB pixels of the object
    mask: Image.Image  # L, 255 where the object is
    stamp: Stamp
    feet_row: float  # pixels: the row where it stands on the ground


def _static_occluders(rng: np.random.Generator, cam: _Camera, scene: Image.Image, count: int) -> list[_StaticOccluder]:
    """Objects placed on the ground in view, drawn once on a scratch copy of the scene and cut out."""
    occluders = []
    for _ in range(count):
        z = float(rng.uniform(cam.near, min(cam.far, 3 * cam.near)))  # near enough to hide people, not just pixels
        x = float(rng.uniform(-0.8, 0.8)) * cam.half_view(z)
        fx, fy = cam.feet(x, z)
        h = cam.focal * REFERENCE_STATURE / z
        box = (round(fx - 0.18 * h), round(fy - h), round(fx + 0.18 * h), round(fy))
        kind = STATIC_OCCLUDERS[int(rng.integers(len(STATIC_OCCLUDERS)))]
        scratch = scene.copy()
        _, stamp = draw_occluder(scratch, rng, box, kind=kind)
        mh, mw = stamp.mask.shape
        patch = scratch.crop((stamp.x0, stamp.y0, stamp.x0 + mw, stamp.y0 + mh))
        mask = Image.fromarray(stamp.mask.astype(np.uint8) * 255)
        occluders.append(_StaticOccluder(patch, mask, stamp, fy))
    return occluders


def _covered(box: Box, occluders: Sequence[_StaticOccluder]) -> float:
    """Largest fraction of ``box`` that one occluder standing in front of it covers (mask pixels)."""
    x1, y1, x2, y2 = box
    worst = 0.0
    for occ in occluders:
        if occ.feet_row <= y2:  # it stands behind the person
            continue
        canvas = np.zeros((y2 - y1, x2 - x1), bool)
        Stamp(occ.stamp.x0 - x1, occ.stamp.y0 - y1, occ.stamp.mask).paint_labels(canvas, True)
        worst = max(worst, float(canvas.mean()))
    return worst


def _path(
    rng: np.random.Generator,
    cam: _Camera,
    stature: float,
    waypoint: tuple[float, float] | None,
    reach: float | None = None,
) -> np.ndarray:
    """A plausible walk: in from one side (or out of the distance), maybe via a waypoint, out at a side (or away).

    ``reach`` (m, default the camera's far limit) is the deepest the walk goes; a shorter reach gives a shorter walk.
    """
    margin = 0.4 * stature  # enter and leave fully outside the frame: half a body width and some
    side = 1.0 if rng.random() < 0.5 else -1.0

    def edge(s: float, z: float) -> tuple[float, float]:
        return s * (cam.half_view(z) + margin), z

    def inside() -> tuple[float, float]:
        z = cam.depth(rng, reach)
        return float(rng.uniform(-0.7, 0.7)) * cam.half_view(z), z

    # Cross the street, approach out of the distance or recede into it; only the far limit is a place to vanish.
    kind = rng.choice(3, p=[0.6, 0.2, 0.2]) if reach is None else 0
    points: list[tuple[float, float]]
    if kind == 0:
        out_side = side if rng.random() < 0.15 else -side  # the same side: in, look around, back out
        points = [edge(side, cam.depth(rng, reach))]
        if waypoint is not None or out_side == side or rng.random() < 0.35:
            points.append(waypoint or inside())
        points.append(edge(out_side, cam.depth(rng, reach)))
    else:
        far = (float(rng.uniform(-0.6, 0.6)) * cam.half_view(cam.far), cam.far)
        z = float(rng.uniform(cam.near, (cam.near * cam.far) ** 0.5))  # turn off in the nearer half
        mid = waypoint or (float(rng.uniform(-0.7, 0.7)) * cam.half_view(z), z)
        points = [far, mid, edge(side, cam.depth(rng))]
        if kind == 2:
            points.reverse()
    return np.asarray(points, dtype=np.float64)


def _route(
    rng: np.random.Generator,
    cam: _Camera,
    config: CameraVideoConfig,
    stature: float,
    waypoint: tuple[float, float] | None,
    reach: float | None = None,
) -> tuple[np.ndarray, float, float]:
    """A path with, now and then, a pause on it: (path (P, 2) metres, pause position along it in metres, seconds)."""
    path = _path(rng, cam, stature, waypoint, reach)
    legs = np.linalg.norm(np.diff(path, axis=0), axis=1)
    if rng.random() >= config.pause_probability:
        return path, math.inf, 0.0
    # At the waypoint when there is one (a shop window, a phone call), else somewhere mid-frame.
    pause_at = float(legs[0]) if len(path) > 2 else float(legs.sum() * rng.uniform(0.3, 0.7))
    return path, pause_at, float(rng.uniform(*config.pause_seconds))


def _passerby(rng: np.random.Generator, cam: _Camera, config: CameraVideoConfig, person: _Person) -> _Walker:
    """An unlabeled walker setting off at a random time; some are already on their way at frame 0."""
    speed = float(rng.uniform(*config.walking_speed))
    path, pause_at, pause = _route(rng, cam, config, person.stature, None)
    duration = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()) / speed + pause
    start = float(rng.uniform(-0.7 * duration, 0.95 * config.seconds))
    return _Walker(-1, *person, path, speed, start, pause_at, pause, float(rng.uniform(0, 2 * math.pi)))


def _visitor(
    rng: np.random.Generator,
    cam: _Camera,
    config: CameraVideoConfig,
    occluders: Sequence[_StaticOccluder],
    person: _Person,
    window: tuple[float, float],
) -> _Walker:
    """A named walker whose whole pass fits ``window`` (seconds) if one of a few ever nearer (shorter) walks does.

    Every candidate passes a waypoint in view that no static object hides; when none fits, the shortest is centred on
    the window at its waypoint, so the person is in view mid-window.
    """
    speed = float(rng.uniform(*config.walking_speed))
    phase0 = float(rng.uniform(0, 2 * math.pi))
    span = window[1] - window[0]
    candidates: list[tuple[float, np.ndarray, float, float]] = []  # (seconds, path, pause position, pause seconds)
    tries = 12
    for k in range(tries):
        # Far walkers cross slowly (the view is wide there): each retry keeps the walk a little nearer the camera.
        reach = None if k == 0 else cam.near * (cam.far / cam.near) ** (1 - k / tries)
        waypoint = (0.0, cam.near)
        for _ in range(10):
            z = cam.depth(rng, reach)
            waypoint = (float(rng.uniform(-0.6, 0.6)) * cam.half_view(z), z)
            box = _person_box(cam, *waypoint, person.stature, person.appearance, Pose(0.0, "front"))
            if _covered(box, occluders) < 0.3:
                break
        path, pause_at, pause = _route(rng, cam, config, person.stature, waypoint, reach)
        duration = float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum()) / speed + pause
        candidates.append((duration, path, pause_at, pause))
        if duration <= span:
            break
    duration, path, pause_at, pause = min(candidates, key=lambda c: c[0])
    if duration <= span:
        start = float(rng.uniform(window[0], window[1] - duration))
    else:
        to_waypoint = float(np.linalg.norm(path[1] - path[0])) / speed
        start = (window[0] + window[1]) / 2 - to_waypoint - (pause / 2 if pause_at < math.inf else 0.0)
    return _Walker(-1, *person, path, speed, start, pause_at, pause, phase0)


def _plan_walkers(
    rng: np.random.Generator,
    cam: _Camera,
    config: CameraVideoConfig,
    occluders: Sequence[_StaticOccluder],
    visits: Sequence[Visit],
    lookalike_sources: Sequence[Identity],
) -> list[_Walker]:
    """The named visitors and the passers-by of one camera, numbered by when they set off."""
    walkers = [
        _visitor(
            rng,
            cam,
            config,
            occluders,
            _Person(v.identity.appearance, v.identity.name, None, v.identity.stature),
            (v.start, v.end),
        )
        for v in visits
    ]
    for _ in range(config.passersby):
        stature = REFERENCE_STATURE * float(rng.uniform(0.92, 1.08))
        if lookalike_sources and rng.random() < config.lookalike_fraction:
            source = lookalike_sources[int(rng.integers(len(lookalike_sources)))]
            person = _Person(source.appearance.lookalike(rng), None, source.name, stature)
        else:
            person = _Person(Appearance.random(rng), None, None, stature)
        walkers.append(_passerby(rng, cam, config, person))
    walkers.sort(key=lambda w: w.start)
    return [replace(w, track=track) for track, w in enumerate(walkers)]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering and encoding
# ---------------------------------------------------------------------------------------------------------------------


def h264_encoder() -> str:
    """The name of the first H.264 encoder PyAV's FFmpeg provides."""
    for name in H264_ENCODERS:
        if name in av.codecs_available:
            return name
    raise RuntimeError(f"PyAV's FFmpeg has no H.264 encoder (looked for {H264_ENCODERS})")


def _open_encoder(path: Path, config: CameraVideoConfig) -> tuple[av.container.OutputContainer, av.VideoStream]:
    """An MP4 container and its H.264 stream: yuv420p, one keyframe per ``keyframe_seconds``, no B-frames."""
    container = av.open(str(path), mode="w")
    name = h264_encoder()
    options = {"crf": str(config.crf), "preset": config.preset} if name == "libx264" else {}
    stream = container.add_stream(name, rate=config.fps, options=options)
    if not isinstance(stream, av.VideoStream):  # narrows the type: an H.264 encoder always makes a video stream
        container.close()
        raise TypeError(f"{name} did not open a video stream")
    stream.width, stream.height = config.width, config.height
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, config.fps)
    stream.codec_context.gop_size = max(1, round(config.keyframe_seconds * config.fps))
    # No B-frames, like most IP cameras: decode order is display order and a live reader never waits on the future.
    stream.codec_context.max_b_frames = 0
    if name != "libx264":  # no CRF: about 0.1 bits per pixel is clean for this flat-shaded content
        stream.codec_context.bit_rate = int(0.1 * config.width * config.height * config.fps)
    return container, stream


def _visible_fraction(stamp: Stamp, labels: np.ndarray, value: int) -> float:
    """Share of a stamp's pixels (including any outside the frame) that still carry ``value`` in ``labels``."""
    total = int(stamp.mask.sum())
    h, w = labels.shape
    x0, y0 = max(stamp.x0, 0), max(stamp.y0, 0)
    x1, y1 = min(stamp.x0 + stamp.mask.shape[1], w), min(stamp.y0 + stamp.mask.shape[0], h)
    if total == 0 or x1 <= x0 or y1 <= y0:
        return 0.0
    mine = stamp.mask[y0 - stamp.y0 : y1 - stamp.y0, x0 - stamp.x0 : x1 - stamp.x0]
    return float((labels[y0:y1, x0:x1][mine] == value).sum() / total)


def _render_frame(
    scene: Image.Image,
    cam: _Camera,
    walkers: Sequence[_Walker],
    occluders: Sequence[_StaticOccluder],
    t: float,
) -> tuple[Image.Image, list[PersonTruth], list[Box]]:
    """The frame at ``t`` seconds before the camera's rendition, who is visible in it, and where anyone was drawn."""
    width, height = cam.width, cam.height
    layers: list[tuple[float, int, Any]] = [(o.feet_row, -1, o) for o in occluders]
    for w in walkers:
        state = w.state(t)
        if state is None:
            continue
        x, z, pose = state
        box = _person_box(cam, x, z, w.stature, w.appearance, pose)
        if box[2] <= 0 or box[0] >= width or box[3] <= 0 or box[1] >= height:
            continue
        layers.append((cam.feet(x, z)[1], w.track, (w, box, pose)))
    img = scene.copy()
    labels = np.zeros((height, width), dtype=np.int32)
    drawn: list[tuple[_Walker, Box, Stamp]] = []
    # Back to front: feet higher in the frame are farther away.
    for _, track, item in sorted(layers, key=lambda layer: (layer[0], layer[1])):
        if track < 0:
            img.paste(item.patch, (item.stamp.x0, item.stamp.y0), mask=item.mask)
            item.stamp.paint_labels(labels, 0)
            continue
        walker, box, pose = item
        stamp = draw_person(img, walker.appearance, box, pose)
        stamp.paint_labels(labels, track + 1)
        drawn.append((walker, box, stamp))
    people = []
    for walker, (x1, y1, x2, y2), stamp in sorted(drawn, key=lambda d: d[0].track):
        visible = _visible_fraction(stamp, labels, walker.track + 1)
        if visible <= 0:
            continue
        clipped = (max(0, x1), max(0, y1), min(width, x2), min(height, y2))
        people.append(PersonTruth(track=walker.track, identity=walker.identity, box=clipped, visible=round(visible, 4)))
    return img, people, [box for _, box, _ in drawn]


@dataclass(frozen=True)
class _Lens:
    """One camera's fixed rendition of its scene; each frame re-develops only the pixels around the people.

    The result equals ``apply_photometric`` on the whole frame pixel for pixel (a test holds it to that), at a fraction
    of the cost: the empty scene is developed once, and the blur reaches only a few pixels past a person.
    """

    params: Photometric
    mean: float  # exposure pivot, 8-bit levels: the empty scene's mean, so lighting never flickers
    empty: np.ndarray  # (H, W, 3) float32: the empty scene developed, before noise
    reach: int  # pixels a change spreads through the blur

    @classmethod
    def for_scene(cls, params: Photometric, scene: Image.Image) -> _Lens:
        """The rendition of ``scene`` (the view with nobody in it) by a camera with ``params``."""
        if params.downscale > 1.01:
            raise ValueError("a video camera renders at its frame size; use a smaller frame, not downscale")
        mean = float(np.asarray(scene, dtype=np.float32).mean())
        empty = camera_tone(np.asarray(camera_optics(scene, params), dtype=np.float32), params, mean)
        return cls(params, mean, empty, math.ceil(3 * params.blur_sigma) + 2)

    def develop(self, raw: Image.Image, regions: Sequence[Box], rng: np.random.Generator) -> np.ndarray:
        """The recorded frame (H, W, 3) uint8 of ``raw``, which differs from the empty scene only inside ``regions``."""
        width, height = raw.size
        out = self.empty.copy()
        r = self.reach
        for x1, y1, x2, y2 in regions:
            # The blur spreads a person r pixels out (the window), and needs r more of context around that.
            ox1, oy1, ox2, oy2 = max(0, x1 - r), max(0, y1 - r), min(width, x2 + r), min(height, y2 + r)
            cx1, cy1, cx2, cy2 = max(0, ox1 - r), max(0, oy1 - r), min(width, ox2 + r), min(height, oy2 + r)
            optics = camera_optics(raw.crop((cx1, cy1, cx2, cy2)), self.params)
            toned = camera_tone(np.asarray(optics, dtype=np.float32), self.params, self.mean, raw.size, (cx1, cy1))
            out[oy1:oy2, ox1:ox2] = toned[oy1 - cy1 : oy2 - cy1, ox1 - cx1 : ox2 - cx1]
        if self.params.noise_sigma > 0:
            out += rng.standard_normal((height, width, 1), dtype=np.float32) * self.params.noise_sigma
        return out.clip(0, 255).astype(np.uint8)


def _child(seq: np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """A child stream of ``seq`` addressed by ``keys``; unlike ``spawn``, asking twice gives the same child."""
    return np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, *keys))


@dataclass(frozen=True)
class CameraVideo:
    """What ``render_camera_video`` wrote for one camera."""

    camera: str
    video: Path
    ground_truth: Path
    background: Path
    frames: int
    identities: tuple[str, ...]  # named identities visible in at least one frame
    seconds: float  # wall-clock time to render and encode


def render_camera_video(
    out_dir: Path,
    camera: str,
    seed: int | np.random.SeedSequence,
    config: CameraVideoConfig | None = None,
    visits: Sequence[Visit] = (),
    lookalike_sources: Sequence[Identity] = (),
    progress: bool = True,
) -> CameraVideo:
    """Render one camera to ``out_dir/<camera>.mp4`` with ``<camera>.json`` ground truth and its empty scene PNG.

    ``visits`` are the named identities who pass this camera; ``lookalike_sources`` those whom passers-by may copy
    (default: the visitors).
    """
    config = config or CameraVideoConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(_child(seq, 0))
    noise_rng = np.random.default_rng(_child(seq, 1))  # its own stream: noise never shifts the scene's plan

    background = render_background(rng, config.width, config.height)
    cam = _Camera.random(rng, config, background.horizon_y)
    photometric = Photometric.random(rng, config.photometric_strength)
    # A low-resolution camera is a smaller frame size here: Pillow's two-pass downscale picks its pass order by the
    # image's shape, so a re-developed crop could differ from the whole frame by a level.
    photometric = replace(photometric, downscale=1.0)
    occluders = _static_occluders(
        rng, cam, background.image, int(rng.integers(config.occluders[0], config.occluders[1] + 1))
    )
    sources = list(lookalike_sources) or [v.identity for v in visits]
    walkers = _plan_walkers(rng, cam, config, occluders, visits, sources)
    empty = background.image.copy()
    for occ in occluders:
        empty.paste(occ.patch, (occ.stamp.x0, occ.stamp.y0), mask=occ.mask)
    lens = _Lens.for_scene(photometric, empty)

    video_path = out_dir / f"{camera}.mp4"
    background_path = out_dir / f"{camera}_background.png"
    Image.fromarray(lens.empty.clip(0, 255).astype(np.uint8)).save(background_path)

    frames: list[FrameTruth] = []
    container, stream = _open_encoder(video_path, config)
    try:
        for index in tqdm(range(config.num_frames), desc=f"rendering {camera}", unit="frame", disable=not progress):
            t = index / config.fps
            raw, people, drawn = _render_frame(background.image, cam, walkers, occluders, t)
            frame = av.VideoFrame.from_ndarray(lens.develop(raw, drawn, noise_rng), format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, config.fps)
            container.mux(stream.encode(frame))
            frames.append(FrameTruth(index=index, time=round(t, 6), people=people))
        container.mux(stream.encode(None))
    finally:
        container.close()

    seen: dict[int, list[int]] = {}
    for f in frames:
        for p in f.people:
            seen.setdefault(p.track, []).append(f.index)
    tracks = [
        TrackTruth(
            track=w.track,
            identity=w.identity,
            lookalike_of=w.lookalike_of,
            first_frame=min(seen[w.track]) if w.track in seen else None,
            last_frame=max(seen[w.track]) if w.track in seen else None,
        )
        for w in walkers
    ]
    truth = CameraGroundTruth(
        camera=camera,
        video=video_path.name,
        background=background_path.name,
        width=config.width,
        height=config.height,
        fps=config.fps,
        num_frames=config.num_frames,
        tracks=tracks,
        frames=frames,
    )
    truth_path = out_dir / f"{camera}.json"
    truth_path.write_text(truth.model_dump_json())
    identities = tuple(sorted({w.identity for w in walkers if w.identity is not None and w.track in seen}))
    result = CameraVideo(
        camera, video_path, truth_path, background_path, config.num_frames, identities, time.perf_counter() - started
    )
    logger.info(
        "camera %s: %d frames in %.1f s, named identities seen: %s", camera, result.frames, result.seconds, identities
    )
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Search photos and camera sets
# ---------------------------------------------------------------------------------------------------------------------


def render_identity_photo(
    appearance: Appearance,
    seed: int | np.random.SeedSequence,
    width: int = 360,
    height: int = 480,
    photometric_strength: float = 1.0,
) -> tuple[Image.Image, Box]:
    """A still photo of one person in a scene of its own (background, pose, lighting); returns (image, x1y1x2y2 box).

    This is the query a watchlist is enrolled with: it never comes from a video, so matching it is re-identification
    across scenes, not frame copying.
    """
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(seq)
    background = render_background(rng, width, height)
    # Mostly seen from the side or front, as an enrolment photo would be; now and then from behind.
    facing = FACINGS[int(rng.choice(len(FACINGS), p=[0.3, 0.3, 0.3, 0.1]))]
    pose = Pose(float(rng.uniform(0, 2 * math.pi)), facing)
    h = round(height * rng.uniform(0.5, 0.85))
    ex0, ey0, ex1, ey1 = person_extent(appearance, pose)
    w = min(width - 2, max(8, round(h * (ex1 - ex0) / (ey1 - ey0))))
    bottom = int(np.clip(background.horizon_y + h * rng.uniform(0.5, 1.1), h + 1, height - 1))
    left = int(rng.integers(1, width - w))
    box = (left, bottom - h, left + w, bottom)
    img = background.image
    draw_person(img, appearance, box, pose)
    return apply_photometric(img, Photometric.random(rng, photometric_strength), rng), box


@dataclass(frozen=True)
class CameraSetSummary:
    """What ``render_camera_set`` wrote."""

    out_dir: Path
    seed: int
    encoder: str
    cameras: tuple[CameraVideo, ...]
    identities: tuple[str, ...]
    plan: dict[str, tuple[str, ...]]  # identity -> cameras it is planned to pass, in the order it passes them
    photos: dict[str, Path]
    frames: int  # over all cameras
    seconds: float  # wall-clock time
    frames_per_second: float  # rendered and encoded, over all cameras

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {
            "out_dir": str(self.out_dir),
            "seed": self.seed,
            "encoder": self.encoder,
            "cameras": {c.camera: str(c.video) for c in self.cameras},
            "identities": list(self.identities),
            "plan": {k: list(v) for k, v in self.plan.items()},
            "photos": {k: str(v) for k, v in self.photos.items()},
            "frames": self.frames,
            "seconds": round(self.seconds, 2),
            "frames_per_second": round(self.frames_per_second, 1),
        }


def _plan_visits(
    rng: np.random.Generator, identities: Sequence[Identity], cameras: int, seconds: float
) -> list[list[Visit]]:
    """Per camera, its named visitors: each identity passes 2 or more cameras (1 if only one) one after another."""
    visits: list[list[Visit]] = [[] for _ in range(cameras)]
    for identity in identities:
        count = cameras if cameras <= 2 else int(rng.integers(2, cameras + 1))
        order = rng.permutation(cameras)[:count]
        slot = seconds / count
        for j, cam in enumerate(order):
            # A gap between slots: walking from one camera to the next takes time.
            visits[int(cam)].append(Visit(identity, (j + 0.1) * slot, (j + 0.9) * slot))
    return visits


def render_camera_set(
    out_dir: Path,
    seed: int,
    cameras: int = 2,
    watch_identities: int = 3,
    config: CameraVideoConfig | None = None,
    progress: bool = True,
) -> CameraSetSummary:
    """Render ``cameras`` videos in which ``watch_identities`` named people pass several cameras, plus their photos.

    Writes ``cam<k>.mp4`` / ``cam<k>.json`` / ``cam<k>_background.png``, ``photos/<name>.jpg`` and ``cameras.json``.
    """
    if cameras < 1 or watch_identities < 0:
        raise ValueError(f"need at least one camera and no negative identity count, got {cameras}, {watch_identities}")
    config = config or CameraVideoConfig()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "photos").mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(seed)
    look_rng, plan_rng = np.random.default_rng(_child(root, 0)), np.random.default_rng(_child(root, 1))
    identities = [
        Identity(f"p{k + 1}", Appearance.random(look_rng), REFERENCE_STATURE * float(look_rng.uniform(0.92, 1.08)))
        for k in range(watch_identities)
    ]
    visits = _plan_visits(plan_rng, identities, cameras, config.seconds)
    schedule = sorted((v.start, v.end, f"cam{c}", v.identity.name) for c in range(cameras) for v in visits[c])
    plan = {i.name: tuple(cam for _, _, cam, name in schedule if name == i.name) for i in identities}
    videos = tuple(
        render_camera_video(out_dir, f"cam{c}", _child(root, 2, c), config, visits[c], identities, progress)
        for c in range(cameras)
    )
    photos: dict[str, Path] = {}
    photo_boxes: dict[str, Box] = {}
    for k, identity in enumerate(identities):
        image, box = render_identity_photo(identity.appearance, _child(root, 3, k))
        photos[identity.name] = out_dir / "photos" / f"{identity.name}.jpg"
        image.save(photos[identity.name], format="JPEG", quality=95)
        photo_boxes[identity.name] = box

    index = {
        "version": GROUND_TRUTH_VERSION,
        "seed": seed,
        "cameras": [
            {
                "camera": v.camera,
                "video": v.video.name,
                "ground_truth": v.ground_truth.name,
                "background": v.background.name,
                "frames": v.frames,
                "fps": config.fps,
                "width": config.width,
                "height": config.height,
            }
            for v in videos
        ],
        "identities": [
            {
                "name": i.name,
                "photo": f"photos/{i.name}.jpg",
                "photo_box": list(photo_boxes[i.name]),
                "cameras": list(plan[i.name]),
                "visits": [
                    {"camera": cam, "start": round(start, 3), "end": round(end, 3)}
                    for start, end, cam, name in schedule
                    if name == i.name
                ],
            }
            for i in identities
        ],
    }
    (out_dir / "cameras.json").write_text(json.dumps(index, indent=2))
    seconds = time.perf_counter() - started
    frames = sum(v.frames for v in videos)
    summary = CameraSetSummary(
        out_dir=out_dir,
        seed=seed,
        encoder=h264_encoder(),
        cameras=videos,
        identities=tuple(i.name for i in identities),
        plan=plan,
        photos=photos,
        frames=frames,
        seconds=seconds,
        frames_per_second=frames / seconds if seconds > 0 else 0.0,
    )
    logger.info("camera set written to %s: %d frames at %.1f frames/s", out_dir, frames, summary.frames_per_second)
    return summary


def main_synth_video(
    out: Path, seed: int, cameras: int = 2, identities: int = 3, progress: bool = True, **overrides: Any
) -> dict[str, Any]:
    """CLI entry: a camera set with CameraVideoConfig ``overrides`` (None values ignored); returns the summary dict."""
    config = CameraVideoConfig(**{k: v for k, v in overrides.items() if v is not None})
    return render_camera_set(Path(out), seed, cameras, identities, config, progress).as_dict()


__all__ = [
    "CameraGroundTruth",
    "CameraSetSummary",
    "CameraVideo",
    "CameraVideoConfig",
    "FrameTruth",
    "Identity",
    "PersonTruth",
    "TrackTruth",
    "Visit",
    "h264_encoder",
    "load_ground_truth",
    "main_synth_video",
    "render_camera_set",
    "render_camera_video",
    "render_identity_photo",
]
