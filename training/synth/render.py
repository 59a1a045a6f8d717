"""A deterministic 2-D renderer of pedestrians and street scenes: the drawing layer of the synthetic world and videos.

Every random choice comes from a ``numpy.random.Generator`` passed in, so one seed always gives the same pixels.
The pieces are separate public functions so a video generator can keep one background per camera and move people
across it: ``render_background`` -> ``draw_person`` (back to front) -> ``draw_occluder`` -> ``apply_photometric``.
People are drawn in normalised body coordinates (height 1, x centred on 0) and mapped onto the caller's box, so a box
is always tight around the drawn figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]
Facing = Literal["left", "right", "front", "back"]
TopPattern = Literal["solid", "stripes", "checks", "two_tone"]

# Named clothing colours; identities jitter around them so two people in "red" are rarely the exact same red.
PALETTE: dict[str, RGB] = {
    "black": (25, 25, 28),
    "white": (232, 232, 226),
    "grey": (128, 128, 128),
    "charcoal": (62, 64, 68),
    "navy": (30, 40, 92),
    "blue": (40, 90, 190),
    "sky": (120, 172, 222),
    "red": (192, 34, 40),
    "maroon": (112, 30, 42),
    "pink": (230, 140, 172),
    "orange": (236, 130, 40),
    "yellow": (236, 206, 60),
    "olive": (110, 116, 50),
    "green": (48, 140, 70),
    "teal": (30, 130, 132),
    "purple": (112, 60, 152),
    "brown": (116, 76, 46),
    "beige": (206, 186, 150),
    "khaki": (170, 150, 100),
}
BOTTOM_COLOURS = ("black", "navy", "blue", "grey", "charcoal", "khaki", "beige", "brown", "white", "olive", "maroon")
SKIN_TONES: tuple[RGB, ...] = (
    (250, 215, 185),
    (235, 190, 150),
    (210, 160, 120),
    (175, 125, 85),
    (130, 90, 60),
    (95, 65, 45),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (20, 18, 18),
    (55, 35, 25),
    (100, 65, 40),
    (200, 165, 100),
    (150, 150, 150),
    (140, 60, 30),
)
SHOE_COLOURS: tuple[RGB, ...] = ((20, 20, 20), (235, 235, 235), (100, 65, 40), (110, 110, 115), (170, 30, 35))
PATTERNS: tuple[TopPattern, ...] = ("solid", "stripes", "checks", "two_tone")
Bag = Literal["none", "shoulder", "backpack", "handbag"]
BAGS: tuple[Bag, ...] = ("none", "shoulder", "backpack", "handbag")
FACINGS: tuple[Facing, ...] = ("left", "right", "front", "back")
# The attributes a look-alike may differ in: each is visible at typical person heights.
LOOKALIKE_ATTRIBUTES = ("top_color", "top_pattern", "bottom_color", "bag", "hat", "hair", "sleeves", "bottom_style")


def _jitter(rng: np.random.Generator, colour: RGB, amount: int) -> RGB:
    """A colour moved by up to ``amount`` 8-bit levels per channel."""
    shifted = np.asarray(colour) + rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))  # type: ignore[return-value]


def _palette_colour(rng: np.random.Generator, names: tuple[str, ...] = tuple(PALETTE)) -> RGB:
    return _jitter(rng, PALETTE[names[int(rng.integers(len(names)))]], 14)


def _distinct_colour(rng: np.random.Generator, current: RGB, names: tuple[str, ...] = tuple(PALETTE)) -> RGB:
    """A palette colour clearly different from ``current`` (so a look-alike's changed attribute is visible)."""
    far = [n for n in names if np.abs(np.subtract(PALETTE[n], current)).sum() > 120]
    return _palette_colour(rng, tuple(far) if far else names)


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)  # type: ignore[return-value]


@dataclass(frozen=True)
class Appearance:
    """How one identity looks: clothing, pattern, body proportions, skin, hair and accessories."""

    top_color: RGB
    top_color2: RGB  # second colour of a patterned top
    top_pattern: TopPattern
    sleeves: Literal["long", "short"]
    bottom_color: RGB
    bottom_style: Literal["trousers", "shorts", "skirt"]
    shoe_color: RGB
    skin_color: RGB
    hair_color: RGB
    hair_style: Literal["short", "long"]
    build: float  # width multiplier, 0.8 (slim) .. 1.3 (broad)
    leg_ratio: float  # leg length as a fraction of body height
    head_ratio: float  # head height as a fraction of body height
    bag: Bag
    bag_color: RGB
    hat: bool
    hat_color: RGB

    @classmethod
    def random(cls, rng: np.random.Generator) -> Appearance:
        """A new identity's look drawn from ``rng``."""
        top = _palette_colour(rng)
        pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.4, 0.25, 0.15, 0.2]))]
        return cls(
            top_color=top,
            top_color2=_distinct_colour(rng, top),
            top_pattern=pattern,
            sleeves="long" if rng.random() < 0.55 else "short",
            bottom_color=_palette_colour(rng, BOTTOM_COLOURS),
            bottom_style=("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.7, 0.15, 0.15]))],
            shoe_color=SHOE_COLOURS[int(rng.integers(len(SHOE_COLOURS)))],
            skin_color=_jitter(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 8),
            hair_color=HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))],
            hair_style="long" if rng.random() < 0.35 else "short",
            build=float(rng.uniform(0.8, 1.3)),
            leg_ratio=float(rng.uniform(0.44, 0.52)),
            head_ratio=float(rng.uniform(0.12, 0.145)),
            bag=BAGS[int(rng.choice(len(BAGS), p=[0.45, 0.2, 0.2, 0.15]))],
            bag_color=_palette_colour(rng),
            hat=bool(rng.random() < 0.2),
            hat_color=_palette_colour(rng),
        )

    def lookalike(self, rng: np.random.Generator) -> Appearance:
        """A different person who shares this palette and build but differs in exactly one visible attribute."""
        return self.lookalike_changing(rng)[0]

    def lookalike_changing(self, rng: np.random.Generator) -> tuple[Appearance, str]:
        """``lookalike`` and the name of the attribute it changed (one of ``LOOKALIKE_ATTRIBUTES``)."""
        attribute = LOOKALIKE_ATTRIBUTES[int(rng.integers(len(LOOKALIKE_ATTRIBUTES)))]
        return self._changed(rng, attribute), attribute

    def _changed(self, rng: np.random.Generator, attribute: str) -> Appearance:
        if attribute == "top_color":
            return replace(self, top_color=_distinct_colour(rng, self.top_color))
        if attribute == "top_pattern":
            patterns = [p for p in PATTERNS if p != self.top_pattern]
            return replace(self, top_pattern=patterns[int(rng.integers(len(patterns)))])
        if attribute == "bottom_color":
            return replace(self, bottom_color=_distinct_colour(rng, self.bottom_color, BOTTOM_COLOURS))
        if attribute == "bag":
            bags = [b for b in BAGS if b != self.bag]
            return replace(self, bag=bags[int(rng.integers(len(bags)))])
        if attribute == "hat":
            return replace(self, hat=not self.hat)
        if attribute == "hair":
            return replace(
                self,
                hair_style="short" if self.hair_style == "long" else "long",
                hair_color=HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))],
            )
        if attribute == "sleeves":
            return replace(self, sleeves="short" if self.sleeves == "long" else "long")
        styles = [s for s in ("trousers", "shorts", "skirt") if s != self.bottom_style]
        return replace(self, bottom_style=styles[int(rng.integers(len(styles)))])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pose:
    """A walking pose: ``phase`` in radians through the gait cycle and the direction the person faces."""

    phase: float
    facing: Facing

    @classmethod
    def random(cls, rng: np.random.Generator) -> Pose:
        """A random phase and facing."""
        return cls(phase=float(rng.uniform(0, 2 * math.pi)), facing=FACINGS[int(rng.integers(len(FACINGS)))])

    def advanced(self, radians: float) -> Pose:
        """The same walker ``radians`` further through the gait cycle (a video frame later)."""
        return replace(self, phase=(self.phase + radians) % (2 * math.pi))


@dataclass(frozen=True)
class Stamp:
    """The canvas pixels one draw call painted: ``mask`` (h, w) bool placed with its top-left at (x0, y0)."""

    x0: int
    y0: int
    mask: np.ndarray

    def paint_labels(self, labels: np.ndarray, value: int) -> None:
        """Write ``value`` into the (H, W) ``labels`` map wherever this stamp painted, clipped to the map."""
        h, w = labels.shape
        x0, y0 = max(self.x0, 0), max(self.y0, 0)
        x1, y1 = min(self.x0 + self.mask.shape[1], w), min(self.y0 + self.mask.shape[0], h)
        if x1 <= x0 or y1 <= y0:
            return
        sub = self.mask[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0]
        labels[y0:y1, x0:x1][sub] = value


@dataclass(frozen=True)
class Background:
    """A rendered scene without people; ``horizon_y`` (pixels) is where the ground plane meets the far wall or sky."""

    image: Image.Image
    horizon_y: int


# ---------------------------------------------------------------------------------------------------------------------
# People
# ---------------------------------------------------------------------------------------------------------------------

# A figure is a list of primitives in body coordinates: (kind, geometry, colour). "torso" is filled with the pattern.
_Shape = tuple[str, tuple, RGB | None]


def _limb(p0: tuple[float, float], p1: tuple[float, float], width: float, colour: RGB) -> list[_Shape]:
    """A thick segment with round ends."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    norm = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / norm * width / 2, dx / norm * width / 2
    quad = ((p0[0] + nx, p0[1] + ny), (p1[0] + nx, p1[1] + ny), (p1[0] - nx, p1[1] - ny), (p0[0] - nx, p0[1] - ny))
    r = width / 2
    return [
        ("poly", quad, colour),
        ("ellipse", (p0[0], p0[1], r, r), colour),
        ("ellipse", (p1[0], p1[1], r, r), colour),
    ]


def _jointed(
    root: tuple[float, float], length: float, angle: float, bend: float, d: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Elbow/knee and end points of a two-segment limb hanging from ``root`` (angles from vertical, + is forward)."""
    mid = (root[0] + d * length / 2 * math.sin(angle), root[1] + length / 2 * math.cos(angle))
    end = (mid[0] + d * length / 2 * math.sin(angle + bend), mid[1] + length / 2 * math.cos(angle + bend))
    return mid, end


def _figure(app: Appearance, pose: Pose) -> list[_Shape]:
    """The figure's primitives, back to front, in body coordinates (head top near y=0, soles near y=1)."""
    side = pose.facing in ("left", "right")
    d = 1.0 if pose.facing == "right" else -1.0
    s = math.sin(pose.phase)
    hh = app.head_ratio
    shoulder_y = hh + 0.035
    hip_y = 1.0 - app.leg_ratio
    sw = (0.075 if side else 0.125) * app.build  # half width at the shoulders
    hw = (0.07 if side else 0.1) * app.build  # half width at the hips
    arm_w = 0.052 * app.build
    leg_w = (0.078 if side else 0.07) * app.build
    leg_len = app.leg_ratio - 0.035
    arm_len = 0.34
    skin, top, bottom = app.skin_color, app.top_color, app.bottom_color
    sleeve_top = top
    lower_arm = top if app.sleeves == "long" else skin
    thigh = bottom if app.bottom_style != "skirt" else skin
    shin = bottom if app.bottom_style == "trousers" else skin
    back: list[_Shape] = []
    near_legs: list[_Shape] = []  # drawn over the torso's hem but under a skirt
    front: list[_Shape] = []
    shapes: list[_Shape] = []

    def arm(root: tuple[float, float], angle: float, bend: float, dd: float) -> list[_Shape]:
        elbow, hand = _jointed(root, arm_len, angle, bend, dd)
        return [
            *_limb(root, elbow, arm_w, sleeve_top),
            *_limb(elbow, hand, arm_w * 0.9, lower_arm),
            ("ellipse", (hand[0], hand[1], arm_w * 0.55, arm_w * 0.6), skin),
        ]

    def leg(root: tuple[float, float], angle: float, bend: float, dd: float) -> list[_Shape]:
        knee, ankle = _jointed(root, leg_len, angle, bend, dd)
        foot_dx = 0.03 * dd if side else 0.0
        return [
            *_limb(root, knee, leg_w, thigh),
            *_limb(knee, ankle, leg_w * 0.85, shin),
            ("ellipse", (ankle[0] + foot_dx, ankle[1] + 0.012, 0.045 if side else 0.032, 0.02), app.shoe_color),
        ]

    if side:
        swing = 0.42 * s
        far_arm = arm((-d * 0.01, shoulder_y + 0.02), -swing, 0.25 * max(0.0, -s), d)
        near_arm = arm((d * 0.01, shoulder_y + 0.02), swing, 0.25 * max(0.0, s), d)
        far_leg = leg((0.0, hip_y), -0.36 * s, -0.3 * max(0.0, s), d)
        near_leg = leg((0.0, hip_y), 0.36 * s, -0.3 * max(0.0, -s), d)
        back += far_arm + far_leg
        near_legs += near_leg
        front += near_arm
    else:
        # Seen from the front, the gait shows as one leg slightly shorter (lifted) and the arms spreading a little.
        spread = 0.05 + 0.03 * abs(s)
        for side_sign in (-1.0, 1.0):
            lift = 0.06 * max(0.0, side_sign * s)
            back += leg((side_sign * hw * 0.5, hip_y), side_sign * 0.03, lift, 1.0)
            root = (side_sign * (sw - arm_w * 0.35), shoulder_y + 0.02)
            elbow, hand = _jointed(root, arm_len, side_sign * spread, side_sign * 0.03, 1.0)
            front += [
                *_limb(root, elbow, arm_w, sleeve_top),
                *_limb(elbow, hand, arm_w * 0.9, lower_arm),
                ("ellipse", (hand[0], hand[1], arm_w * 0.55, arm_w * 0.6), skin),
            ]

    # Long hair hangs behind the body unless we see the person's back.
    head = (0.0, hh / 2, hh * 0.4, hh / 2)
    hair_back = (
        "poly",
        (
            (-hh * 0.42, hh * 0.45),
            (hh * 0.42, hh * 0.45),
            (hh * 0.45, shoulder_y + 0.07),
            (-hh * 0.45, shoulder_y + 0.07),
        ),
        app.hair_color,
    )
    if app.hair_style == "long" and pose.facing != "back":
        shapes.append(hair_back)
    if app.bag == "backpack" and side:
        x_in = -d * sw * 0.8
        x_out = -d * (sw + 0.075 * app.build)
        shapes.append(
            (
                "poly",
                ((x_in, shoulder_y + 0.02), (x_out, shoulder_y + 0.04), (x_out, hip_y - 0.05), (x_in, hip_y - 0.03)),
                app.bag_color,
            )
        )
    shapes += back
    # Hips and skirt sit under the torso; the torso is filled with the top's pattern.
    shapes.append(
        ("poly", ((-hw, hip_y - 0.02), (hw, hip_y - 0.02), (hw * 0.9, hip_y + 0.06), (-hw * 0.9, hip_y + 0.06)), bottom)
    )
    shapes += near_legs
    if app.bottom_style == "skirt":
        low = hip_y + leg_len * 0.5
        shapes.append(("poly", ((-hw, hip_y - 0.02), (hw, hip_y - 0.02), (hw * 1.55, low), (-hw * 1.55, low)), bottom))
    neck_w = hh * 0.16
    shapes.append(
        (
            "poly",
            ((-neck_w, hh * 0.8), (neck_w, hh * 0.8), (neck_w, shoulder_y + 0.01), (-neck_w, shoulder_y + 0.01)),
            skin,
        )
    )
    chest = d * 0.012 if side else 0.0
    shapes.append(
        ("torso", ((-sw + chest, shoulder_y), (sw + chest, shoulder_y), (hw, hip_y + 0.02), (-hw, hip_y + 0.02)), None)
    )
    shapes.append(("ellipse", (-sw + chest, shoulder_y + arm_w * 0.4, arm_w * 0.6, arm_w * 0.5), top))
    shapes.append(("ellipse", (sw + chest, shoulder_y + arm_w * 0.4, arm_w * 0.6, arm_w * 0.5), top))
    strap = _shade(app.bag_color, 0.7)
    if app.bag == "backpack" and pose.facing == "back":
        shapes.append(
            (
                "poly",
                (
                    (-sw * 0.75, shoulder_y + 0.03),
                    (sw * 0.75, shoulder_y + 0.03),
                    (sw * 0.7, hip_y - 0.04),
                    (-sw * 0.7, hip_y - 0.04),
                ),
                app.bag_color,
            )
        )
    elif app.bag == "backpack" and pose.facing == "front":
        for sx in (-1.0, 1.0):
            shapes.append(("line", ((sx * sw * 0.6, shoulder_y), (sx * sw * 0.5, hip_y - 0.08), 0.018), strap))
    elif app.bag == "shoulder":
        x_bag = (-d * sw * 0.9) if side else hw + 0.02
        shapes.append(("line", ((-x_bag * 0.8, shoulder_y), (x_bag, hip_y - 0.02), 0.012), strap))
        shapes.append(
            (
                "poly",
                (
                    (x_bag - 0.04, hip_y - 0.04),
                    (x_bag + 0.04, hip_y - 0.04),
                    (x_bag + 0.045, hip_y + 0.05),
                    (x_bag - 0.045, hip_y + 0.05),
                ),
                app.bag_color,
            )
        )
    shapes += front
    if app.bag == "handbag":
        hand_x = d * 0.02 if side else sw + 0.02
        y_hand = shoulder_y + arm_len + 0.02
        shapes.append(
            (
                "poly",
                (
                    (hand_x - 0.04, y_hand),
                    (hand_x + 0.04, y_hand),
                    (hand_x + 0.05, y_hand + 0.07),
                    (hand_x - 0.05, y_hand + 0.07),
                ),
                app.bag_color,
            )
        )
    # Head: face, then hair over the crown (all of it from behind), then an optional hat.
    if pose.facing == "back":
        shapes.append(("ellipse", head, app.hair_color))
        if app.hair_style == "long":
            shapes.append(hair_back)
    else:
        shapes.append(("ellipse", head, skin))
        shapes.append(("chord", (*head, 180, 360), app.hair_color))
        if side:
            shapes.append(("chord", (*head, 90 if d > 0 else 270, 270 if d > 0 else 450), app.hair_color))
    if app.hat:
        shapes.append(("chord", (0.0, hh * 0.42, hh * 0.46, hh * 0.5, 180, 360), app.hat_color))
        if side:
            shapes.append(
                (
                    "poly",
                    ((0.0, hh * 0.36), (d * hh * 0.75, hh * 0.4), (d * hh * 0.75, hh * 0.46), (0.0, hh * 0.44)),
                    _shade(app.hat_color, 0.8),
                )
            )
    return shapes


def _extent(shapes: list[_Shape]) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a figure in body coordinates."""
    xs: list[float] = []
    ys: list[float] = []
    for kind, geom, _ in shapes:
        if kind in ("poly", "torso"):
            xs += [p[0] for p in geom]
            ys += [p[1] for p in geom]
        elif kind in ("ellipse", "chord"):
            cx, cy, rx, ry = geom[:4]
            xs += [cx - rx, cx + rx]
            ys += [cy - ry, cy + ry]
        elif kind == "line":
            xs += [geom[0][0], geom[1][0]]
            ys += [geom[0][1], geom[1][1]]
    return min(xs), min(ys), max(xs), max(ys)


def person_extent(appearance: Appearance, pose: Pose) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the drawn figure in body coordinates: x 0 on the body's axis, soles near y = 1."""
    return _extent(_figure(appearance, pose))


def person_aspect(appearance: Appearance, pose: Pose) -> float:
    """Width / height of the tight box around this person in this pose (about 0.25 to 0.55)."""
    x0, y0, x1, y1 = person_extent(appearance, pose)
    return (x1 - x0) / (y1 - y0)


def _pattern_mask(pattern: TopPattern, ys: np.ndarray, xs: np.ndarray, mid_y: float) -> np.ndarray:
    """Where a patterned top shows its second colour; ``ys``/``xs`` are body coordinates of each patch pixel."""
    if pattern == "stripes":
        return (np.floor(ys / 0.032) % 2) == 1
    if pattern == "checks":
        return ((np.floor(ys / 0.04) + np.floor(xs / 0.04)) % 2) == 1
    return ys > mid_y  # two-tone: lower half of the top in the second colour


def draw_person(img: Image.Image, appearance: Appearance, box_xyxy: tuple[int, int, int, int], pose: Pose) -> Stamp:
    """Draw a person filling ``box_xyxy`` (integer pixels, x1y1x2y2) on ``img`` in place; return the painted pixels.

    The figure is drawn at twice the resolution and downsampled, so small people (50 px) are antialiased rather than
    jagged. The box may extend beyond the canvas (people entering a video frame); the stamp is not clipped.
    """
    x1, y1, x2, y2 = (int(v) for v in box_xyxy)
    w, h = x2 - x1, y2 - y1
    if w < 2 or h < 2:
        raise ValueError(f"person box too small to draw: {box_xyxy}")
    shapes = _figure(appearance, pose)
    ex0, ey0, ex1, ey1 = _extent(shapes)
    ss = 2
    W, H = w * ss, h * ss
    sx, sy = W / (ex1 - ex0), H / (ey1 - ey0)

    def pt(p: tuple[float, float]) -> tuple[float, float]:
        return ((p[0] - ex0) * sx, (p[1] - ey0) * sy)

    colour_img = Image.new("RGB", (W, H))
    alpha = Image.new("L", (W, H), 0)
    draw, adraw = ImageDraw.Draw(colour_img), ImageDraw.Draw(alpha)
    hip_y = 1.0 - appearance.leg_ratio
    mid_y = (appearance.head_ratio + 0.035 + hip_y) / 2
    for kind, geom, colour in shapes:
        if kind == "poly":
            pts = [pt(p) for p in geom]
            draw.polygon(pts, fill=colour)
            adraw.polygon(pts, fill=255)
        elif kind == "torso":
            pts = [pt(p) for p in geom]
            draw.polygon(pts, fill=appearance.top_color)
            adraw.polygon(pts, fill=255)
            if appearance.top_pattern != "solid":
                torso = Image.new("L", (W, H), 0)
                ImageDraw.Draw(torso).polygon(pts, fill=255)
                ys = (np.arange(H, dtype=np.float32)[:, None] / sy + ey0) + np.zeros((1, W), np.float32)
                xs = (np.arange(W, dtype=np.float32)[None, :] / sx + ex0) + np.zeros((H, 1), np.float32)
                second = _pattern_mask(appearance.top_pattern, ys, xs, mid_y) & (np.asarray(torso) > 0)
                colour_img.paste(appearance.top_color2, mask=Image.fromarray(second.astype(np.uint8) * 255))
        elif kind in ("ellipse", "chord"):
            cx, cy, rx, ry = geom[:4]
            bbox = [pt((cx - rx, cy - ry)), pt((cx + rx, cy + ry))]
            if kind == "ellipse":
                draw.ellipse(bbox, fill=colour)
                adraw.ellipse(bbox, fill=255)
            else:
                draw.chord(bbox, geom[4], geom[5], fill=colour)
                adraw.chord(bbox, geom[4], geom[5], fill=255)
        elif kind == "line":
            width = max(1, round(geom[2] * sy))
            draw.line([pt(geom[0]), pt(geom[1])], fill=colour, width=width)
            adraw.line([pt(geom[0]), pt(geom[1])], fill=255, width=width)
    colour_small = colour_img.resize((w, h), Image.Resampling.BOX)
    alpha_small = alpha.resize((w, h), Image.Resampling.BOX)
    img.paste(colour_small, (x1, y1), mask=alpha_small)
    return Stamp(x1, y1, np.asarray(alpha_small) > 127)


# ---------------------------------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------------------------------


def _random_muted(rng: np.random.Generator, low: int = 60, high: int = 200) -> RGB:
    base = rng.integers(low, high)
    tint = rng.integers(-25, 26, size=3)
    return tuple(int(v) for v in np.clip(base + tint, 0, 255))  # type: ignore[return-value]


def _vertical_gradient(width: int, height: int, top: RGB, bottom: RGB) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    row = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return np.broadcast_to(row, (height, width, 3)).copy()


def _blotches(rng: np.random.Generator, width: int, height: int, cell: int, amplitude: float) -> np.ndarray:
    """Smooth low-frequency texture (H, W, 1) in 8-bit levels: stains, uneven paint, dappled light."""
    small = rng.normal(0.0, amplitude, size=(max(2, height // cell), max(2, width // cell))).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)[:, :, None]


def _draw_building_row(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, horizon: int) -> None:
    x = int(rng.integers(-40, 0))
    while x < width:
        bw = int(rng.integers(60, 200))
        top = int(rng.integers(0, max(1, horizon - 40)))
        colour = _random_muted(rng, 70, 210)
        draw.rectangle([x, top, x + bw, horizon], fill=colour)
        win = _shade(colour, float(rng.uniform(0.45, 0.75))) if rng.random() < 0.7 else (150, 180, 200)
        ww, wh = int(rng.integers(8, 20)), int(rng.integers(10, 24))
        gx, gy = ww + int(rng.integers(5, 14)), wh + int(rng.integers(6, 16))
        for wy in range(top + 8, horizon - wh - 20, gy):
            for wx in range(x + 6, x + bw - ww - 4, gx):
                lit = win if rng.random() > 0.15 else (230, 215, 150)
                draw.rectangle([wx, wy, wx + ww, wy + wh], fill=lit)
        if rng.random() < 0.6:  # shop sign and awning above a doorway
            sy = horizon - int(rng.integers(35, 60))
            draw.rectangle([x + 4, sy, x + bw - 4, sy + 12], fill=_palette_colour(rng))
            draw.rectangle([x + bw // 3, sy + 14, x + 2 * bw // 3, horizon], fill=_shade(colour, 0.35))
        x += bw + int(rng.integers(0, 12))


def _draw_street_props(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int, horizon: int
) -> None:
    for _ in range(int(rng.integers(3, 9))):
        kind = int(rng.integers(5))
        base = int(rng.integers(horizon + 5, height))
        scale = 0.3 + 1.2 * (base - horizon) / max(1, height - horizon)  # nearer objects are larger
        x = int(rng.integers(-20, width))
        if kind == 0:  # tree
            trunk_h, crown = int(90 * scale), int(40 * scale)
            draw.rectangle([x, base - trunk_h, x + max(2, int(8 * scale)), base], fill=(80, 60, 40))
            green = _jitter(rng, (60, 120, 60), 30)
            for _ in range(4):
                cx = x + int(rng.integers(-crown, crown + 1) * 0.6)
                cy = base - trunk_h + int(rng.integers(-crown, crown // 2 + 1) * 0.6)
                draw.ellipse([cx - crown, cy - crown, cx + crown, cy + crown], fill=_jitter(rng, green, 15))
        elif kind == 1:  # lamp post or sign post
            ph = int(150 * scale)
            draw.rectangle([x, base - ph, x + max(2, int(5 * scale)), base], fill=(70, 72, 75))
            draw.rectangle(
                [x - int(10 * scale), base - ph, x + int(14 * scale), base - ph + int(8 * scale)],
                fill=_palette_colour(rng),
            )
        elif kind == 2:  # parked car
            cw, ch = int(150 * scale), int(50 * scale)
            body = _palette_colour(rng)
            draw.rounded_rectangle(
                [x, base - ch, x + cw, base - int(10 * scale)], radius=max(1, int(8 * scale)), fill=body
            )
            draw.rectangle(
                [x + cw // 5, base - ch - int(22 * scale), x + 4 * cw // 5, base - ch], fill=_shade(body, 0.8)
            )
            r = max(2, int(12 * scale))
            for wx in (x + cw // 5, x + 4 * cw // 5):
                draw.ellipse([wx - r, base - 2 * r, wx + r, base], fill=(20, 20, 20))
        elif kind == 3:  # bin, bollard, planter
            bw_, bh_ = int(24 * scale), int(40 * scale)
            draw.rectangle([x, base - bh_, x + bw_, base], fill=_random_muted(rng, 40, 160))
        else:  # bench
            bw_, bh_ = int(90 * scale), int(28 * scale)
            colour = _jitter(rng, (120, 85, 50), 25)
            draw.rectangle([x, base - bh_, x + bw_, base - bh_ + max(2, int(6 * scale))], fill=colour)
            draw.rectangle([x, base - bh_ // 2, x + bw_, base - bh_ // 2 + max(2, int(5 * scale))], fill=colour)


def _street(rng: np.random.Generator, width: int, height: int, horizon: int) -> Image.Image:
    sky_top = _jitter(rng, (110, 150, 200), 40)
    arr = _vertical_gradient(width, height, sky_top, _jitter(rng, (200, 210, 220), 25))
    ground = _vertical_gradient(width, height - horizon, _random_muted(rng, 90, 150), _random_muted(rng, 50, 120))
    arr[horizon:] = ground
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    _draw_building_row(draw, rng, width, horizon)
    vx = int(rng.integers(width // 4, 3 * width // 4))  # vanishing point of kerbs and road markings
    for _ in range(int(rng.integers(2, 6))):
        bx = int(rng.integers(-width, 2 * width))
        draw.line([(vx, horizon), (bx, height)], fill=_random_muted(rng, 150, 230), width=int(rng.integers(2, 6)))
    sidewalk = _random_muted(rng, 140, 200)
    draw.rectangle([0, horizon, width, horizon + int(rng.integers(4, 14))], fill=sidewalk)
    _draw_street_props(draw, rng, width, height, horizon)
    return img


def _plaza(rng: np.random.Generator, width: int, height: int, horizon: int) -> Image.Image:
    arr = _vertical_gradient(width, height, _random_muted(rng, 120, 220), _random_muted(rng, 100, 190))
    floor_a, floor_b = _random_muted(rng, 120, 210), _random_muted(rng, 90, 180)
    arr[horizon:] = _vertical_gradient(width, height - horizon, floor_a, floor_b)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    x = 0
    while x < width:  # shop fronts: glass, frames and signs
        sw = int(rng.integers(80, 220))
        frame = _random_muted(rng, 40, 200)
        draw.rectangle([x, horizon - int(rng.integers(120, max(121, horizon))), x + sw, horizon], fill=frame)
        draw.rectangle([x + 6, horizon - 100, x + sw - 6, horizon - 4], fill=_jitter(rng, (150, 175, 190), 30))
        for _ in range(int(rng.integers(1, 5))):  # goods and reflections behind the glass
            gx = x + int(rng.integers(8, max(9, sw - 20)))
            gy = horizon - int(rng.integers(20, 95))
            draw.rectangle(
                [gx, gy, gx + int(rng.integers(5, 25)), gy + int(rng.integers(5, 30))], fill=_palette_colour(rng)
            )
        draw.rectangle([x + 4, horizon - 125, x + sw - 4, horizon - 108], fill=_palette_colour(rng))
        x += sw
    vx = int(rng.integers(width // 4, 3 * width // 4))
    grout = _shade(floor_a, 0.8)
    for bx in range(-2 * width, 3 * width, int(rng.integers(60, 140))):  # floor tiles in perspective
        draw.line([(vx, horizon), (bx, height)], fill=grout, width=1)
    y, step = float(horizon), 6.0
    while y < height:
        draw.line([(0, int(y)), (width, int(y))], fill=grout, width=1)
        step *= 1.35
        y += step
    for _ in range(int(rng.integers(1, 4))):  # pillars
        px = int(rng.integers(0, width))
        pw = int(rng.integers(15, 45))
        draw.rectangle([px, 0, px + pw, horizon + int(rng.integers(10, 60))], fill=_random_muted(rng, 150, 230))
    _draw_street_props(draw, rng, width, height, horizon)
    return img


def render_background(rng: np.random.Generator, width: int, height: int) -> Background:
    """A cluttered street or shopping-plaza scene with no people, ``width`` x ``height`` pixels."""
    horizon = int(height * rng.uniform(0.3, 0.48))
    img = _street(rng, width, height, horizon) if rng.random() < 0.6 else _plaza(rng, width, height, horizon)
    arr = np.asarray(img, dtype=np.float32) + _blotches(rng, width, height, 24, 10.0)
    arr += _blotches(rng, width, height, 4, 5.0)  # fine grain: asphalt, paving, plaster
    return Background(Image.fromarray(arr.clip(0, 255).astype(np.uint8)), horizon)


# ---------------------------------------------------------------------------------------------------------------------
# Occluders and photometry
# ---------------------------------------------------------------------------------------------------------------------

OCCLUDER_KINDS = ("car", "wall", "hedge", "pole", "signboard", "crowd")
_FROM_BELOW = {"car", "wall", "hedge"}


def draw_occluder(
    img: Image.Image,
    rng: np.random.Generator,
    box_xyxy: tuple[int, int, int, int],
    coverage: float | None = None,
    kind: str | None = None,
    person: Stamp | None = None,
) -> tuple[float, Stamp]:
    """Draw an object in front of the person in ``box_xyxy``; return (visible fraction, painted pixels).

    ``coverage`` is the fraction of the box height (objects rising from the ground: car, wall, hedge) or width
    (pole, signboard, another person's dark coat) to hide; drawn from 0.3..0.65 when None. The visible fraction is of
    the person's painted pixels when ``person`` (its ``draw_person`` stamp) is given, else of the box area.
    """
    x1, y1, x2, y2 = (int(v) for v in box_xyxy)
    w, h = x2 - x1, y2 - y1
    kind = kind or OCCLUDER_KINDS[int(rng.integers(len(OCCLUDER_KINDS)))]
    if kind not in OCCLUDER_KINDS:
        raise ValueError(f"unknown occluder kind {kind!r}; expected one of {OCCLUDER_KINDS}")
    coverage = float(rng.uniform(0.3, 0.65)) if coverage is None else coverage
    if kind in _FROM_BELOW:
        top = y2 - max(1, round(h * coverage))
        # Reaching a little past the box on both sides reads as an object, yet rarely hides the neighbours too.
        ox0, ox1 = x1 - int(w * rng.uniform(0.1, 0.6)), x2 + int(w * rng.uniform(0.1, 0.6))
        oy0, oy1 = top, y2 + max(1, h // 40)
    else:
        band = max(1, round(w * coverage))
        left = x1 + int(rng.integers(0, max(1, w - band + 1)))
        ox0, ox1 = left, left + band
        oy0 = y1 - int(h * rng.uniform(0.1, 0.5)) if kind != "crowd" else y1 + int(h * rng.uniform(-0.05, 0.1))
        oy1 = y2 + max(1, h // 40)
    W, H = ox1 - ox0, oy1 - oy0
    layer = Image.new("RGB", (W, H))
    alpha = Image.new("L", (W, H), 0)
    draw, adraw = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    colour = _palette_colour(rng) if kind in ("car", "signboard") else _random_muted(rng, 30, 160)
    if kind == "car":
        r = max(2, H // 5)
        draw.rounded_rectangle([0, 0, W - 1, H - 1], radius=r, fill=colour)
        adraw.rounded_rectangle([0, 0, W - 1, H - 1], radius=r, fill=255)
        draw.rectangle([W // 6, H // 8, W // 2, H // 2], fill=_shade(colour, 0.5))  # side window
    elif kind == "hedge":
        green = _jitter(rng, (55, 110, 50), 25)
        draw.rectangle([0, H // 6, W, H], fill=green)
        adraw.rectangle([0, H // 6, W, H], fill=255)
        for _ in range(max(3, W // 12)):  # a leafy, uneven top edge
            cx, rr = int(rng.integers(0, W)), max(2, H // 5)
            draw.ellipse([cx - rr, 0, cx + rr, 2 * rr], fill=_jitter(rng, green, 20))
            adraw.ellipse([cx - rr, 0, cx + rr, 2 * rr], fill=255)
    elif kind == "crowd":  # the dark back of someone standing nearer the camera
        draw.rounded_rectangle([0, 0, W - 1, H - 1], radius=max(1, W // 3), fill=colour)
        adraw.rounded_rectangle([0, 0, W - 1, H - 1], radius=max(1, W // 3), fill=255)
    else:  # wall, pole, signboard: flat rectangles with a few details
        draw.rectangle([0, 0, W, H], fill=colour)
        adraw.rectangle([0, 0, W, H], fill=255)
        if kind == "signboard":
            draw.rectangle([W // 8, H // 10, W - W // 8, H // 3], fill=_distinct_colour(rng, colour))
        elif kind == "wall":
            for yy in range(0, H, max(3, H // 6)):
                draw.line([(0, yy), (W, yy)], fill=_shade(colour, 0.8), width=1)
    img.paste(layer, (ox0, oy0), mask=alpha)
    stamp = Stamp(ox0, oy0, np.asarray(alpha) > 127)
    return _visible_fraction((x1, y1, x2, y2), stamp, person), stamp


def _visible_fraction(box: tuple[int, int, int, int], occluder: Stamp, person: Stamp | None) -> float:
    """Fraction of the person's pixels (or the box when no person stamp) that ``occluder`` leaves visible."""
    x1, y1, x2, y2 = box
    target = person.mask if person is not None else np.ones((y2 - y1, x2 - x1), bool)
    tx, ty = (person.x0, person.y0) if person is not None else (x1, y1)
    covered = np.zeros_like(target)
    Stamp(occluder.x0 - tx, occluder.y0 - ty, occluder.mask).paint_labels(covered, True)
    total = int(target.sum())
    return 1.0 if total == 0 else float((target & ~covered).sum() / total)


@dataclass(frozen=True)
class Photometric:
    """A camera's rendition of a scene: exposure, contrast, white balance, uneven light, blur, noise, resolution."""

    brightness: float  # added, 8-bit levels
    contrast: float  # gain around the image mean
    cast: tuple[float, float, float]  # per-channel RGB gain (white balance)
    shade: float  # depth of a linear illumination fall-off across the image, 0 = even light
    shade_angle: float  # direction of that fall-off, radians
    blur_sigma: float  # Gaussian blur, pixels
    noise_sigma: float  # sensor noise, 8-bit levels
    downscale: float  # >1: captured at lower resolution and upscaled (a cheap camera, a digital zoom)

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> Photometric:
        """Random camera conditions; ``strength`` 0 gives an ideal camera, 1 the world's usual variety."""
        k = strength
        return cls(
            brightness=float(rng.uniform(-35, 30) * k),
            contrast=float(1 + rng.uniform(-0.35, 0.25) * k),
            cast=tuple(float(1 + rng.uniform(-0.12, 0.12) * k) for _ in range(3)),  # type: ignore[arg-type]
            shade=float(rng.uniform(0, 0.45) * k),
            shade_angle=float(rng.uniform(0, 2 * math.pi)),
            blur_sigma=float(rng.choice([0.0, 0.6, 1.0, 1.6], p=[0.4, 0.3, 0.2, 0.1]) * k),
            noise_sigma=float(rng.uniform(1, 8) * k),
            downscale=float(1 + (rng.uniform(0.5, 1.5) * k if rng.random() < 0.2 else 0.0)),
        )


def camera_optics(img: Image.Image, params: Photometric) -> Image.Image:
    """Resolution loss and blur of a camera with ``params``: the spatial first step of ``apply_photometric``."""
    width, height = img.size
    if params.downscale > 1.01:
        small = (max(8, round(width / params.downscale)), max(8, round(height / params.downscale)))
        img = img.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    if params.blur_sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    return img


def camera_tone(
    arr: np.ndarray,
    params: Photometric,
    mean: float,
    frame_size: tuple[int, int] | None = None,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Exposure, contrast, white balance and uneven light applied to ``arr`` (h, w, 3) float32 8-bit levels.

    ``arr`` may be the window at ``origin`` (x, y) of a ``frame_size`` (W, H) frame: the light fall-off is the frame's,
    and each pixel gets exactly the value a whole-frame pass gives it (a video re-renders only where people are).
    """
    h, w = arr.shape[:2]
    width, height = frame_size or (w, h)
    x0, y0 = origin
    arr = (arr - mean) * params.contrast + mean + params.brightness
    arr *= np.asarray(params.cast, np.float32)
    if params.shade > 0:
        ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[y0 : y0 + h, None]
        xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, x0 : x0 + w]
        ramp = math.cos(params.shade_angle) * xs + math.sin(params.shade_angle) * ys
        arr *= (1.0 - params.shade * (ramp + 0.5))[:, :, None]
    return arr


def apply_photometric(
    img: Image.Image, params: Photometric, rng: np.random.Generator, mean: float | None = None
) -> Image.Image:
    """The image as a camera with ``params`` would record it; ``rng`` draws the sensor noise.

    Contrast pivots around ``mean`` (8-bit levels), the image's own mean when None; a video passes its empty scene's
    mean so the exposure does not flicker as people walk through.
    """
    width, height = img.size
    arr = np.asarray(camera_optics(img, params), dtype=np.float32)
    arr = camera_tone(arr, params, float(arr.mean()) if mean is None else mean)
    if params.noise_sigma > 0:
        # Luminance-only noise: what survives JPEG in real footage, and a third of the cost of per-channel noise.
        arr += rng.standard_normal((height, width, 1), dtype=np.float32) * params.noise_sigma
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))
