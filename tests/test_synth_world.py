"""The synthetic world: CUHK-SYSU's exact MATLAB shapes, determinism, and the properties that make it a fair test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from pydantic import ValidationError

from training.synth.render import (
    LOOKALIKE_ATTRIBUTES,
    Appearance,
    Photometric,
    Pose,
    apply_photometric,
    draw_occluder,
    draw_person,
    person_aspect,
    render_background,
)
from training.synth.world import PRESETS, SynthConfig, generate_world, load_world_truth, main_synth

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_seed0")
    generate_world(out, seed=0, config=TINY, progress=False)
    return out


def _mat(root: Path, rel: str, var: str) -> np.ndarray:
    contents = scipy.io.loadmat(str(root / rel))
    assert var in contents, f"{rel} lacks variable {var}"
    return contents[var]


def _text(value: np.ndarray) -> str:
    assert value.dtype.kind == "U" and value.shape == (1,), (value.dtype, value.shape)
    return str(value[0])


def _fields(struct: np.ndarray) -> set[str]:
    return set(struct.dtype.names or ())


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_every_file_of_the_cuhk_sysu_layout(world: Path) -> None:
    for rel in (
        "annotation/Images.mat",
        "annotation/pool.mat",
        "annotation/Person.mat",
        "annotation/test/train_test/Train.mat",
        "annotation/test/train_test/TestG50.mat",
        "annotation/test/subset/Occlusion.mat",
        "annotation/test/subset/Resolution.mat",
    ):
        assert (world / rel).is_file(), rel
    jpgs = sorted((world / "Image" / "SSM").glob("s*.jpg"))
    assert len(jpgs) == TINY.train_images + TINY.pool_images
    with Image.open(jpgs[0]) as im:
        assert im.size == (TINY.image_width, TINY.image_height)


def test_img_is_a_1xn_struct_of_imname_nappear_and_1xk_boxes(world: Path) -> None:
    img = _mat(world, "annotation/Images.mat", "Img")
    assert img.shape == (1, TINY.train_images + TINY.pool_images)
    assert _fields(img) == {"imname", "nAppear", "box"}
    for entry in img[0]:
        assert _text(entry["imname"]).endswith(".jpg")
        boxes = entry["box"]
        assert boxes.shape[0] == 1 and _fields(boxes) == {"idlocate", "ishard"}
        assert entry["nAppear"].shape == (1, 1) and entry["nAppear"].dtype == np.float64
        assert entry["nAppear"][0, 0] == boxes.shape[1]
        for box in boxes[0]:
            assert box["idlocate"].shape == (1, 4) and box["idlocate"].dtype == np.float64
            assert np.all(box["idlocate"] == np.round(box["idlocate"]))
            assert box["ishard"].shape == (1, 1)


def test_pool_is_an_nx1_cell_of_names_in_img(world: Path) -> None:
    pool = _mat(world, "annotation/pool.mat", "pool")
    assert pool.shape == (TINY.pool_images, 1) and pool.dtype == object
    names = {_text(e["imname"]) for e in _mat(world, "annotation/Images.mat", "Img")[0]}
    assert {_text(v) for v in pool[:, 0]} <= names


def test_train_is_an_nx1_cell_of_1x1_structs_with_scene_lists(world: Path) -> None:
    train = _mat(world, "annotation/test/train_test/Train.mat", "Train")
    assert train.shape == (TINY.train_identities, 1) and train.dtype == object
    for cell in train[:, 0]:
        assert cell.shape == (1, 1) and _fields(cell) == {"idname", "nAppear", "scene"}
        person = cell[0, 0]
        scene = person["scene"]
        assert scene.shape == (1, int(person["nAppear"][0, 0]))
        for s in scene[0]:
            assert _text(s["imname"]).endswith(".jpg") and s["idlocate"].shape == (1, 4)


def test_testg_entries_hold_query_and_gallery_with_1x0_idlocate_where_absent(world: Path) -> None:
    testg = _mat(world, "annotation/test/train_test/TestG50.mat", "TestG50")
    assert testg.shape == (1, TINY.test_identities) and _fields(testg) == {"Query", "Gallery"}
    for entry in testg[0]:
        query = entry["Query"]
        assert query.shape == (1, 1) and _fields(query) == {"imname", "idlocate", "ishard", "idname"}
        assert query[0, 0]["idlocate"].shape == (1, 4)
        gallery = entry["Gallery"]
        assert gallery.shape == (1, 50) and _fields(gallery) == {"imname", "idlocate", "ishard"}
        shapes = [g["idlocate"].shape for g in gallery[0]]
        assert set(shapes) == {(1, 4), (1, 0)}
        n_pos = shapes.count((1, 4))
        assert shapes[:n_pos] == [(1, 4)] * n_pos, "the query person's images come first"
        assert _text(query[0, 0]["imname"]) not in {_text(g["imname"]) for g in gallery[0]}


def test_subsets_hold_heavily_occluded_and_small_queries(world: Path) -> None:
    occlusion = _mat(world, "annotation/test/subset/Occlusion.mat", "Occlusion1")
    resolution = _mat(world, "annotation/test/subset/Resolution.mat", "Test_Size")
    assert occlusion.shape[1] >= 1 and resolution.shape[1] >= 1
    assert _fields(occlusion) == {"Query", "Gallery"}
    for entry in resolution[0]:
        assert entry["Query"][0, 0]["idlocate"][0, 3] < TINY.small_height


def test_same_seed_gives_identical_files_whatever_the_worker_count(world: Path, tmp_path: Path) -> None:
    generate_world(tmp_path, seed=0, config=TINY, progress=False, workers=2)
    assert _files(tmp_path) == _files(world)


def test_different_seeds_give_different_worlds(world: Path, tmp_path: Path) -> None:
    generate_world(tmp_path, seed=1, config=TINY, progress=False)
    assert (tmp_path / "annotation/Images.mat").read_bytes() != (world / "annotation/Images.mat").read_bytes()
    assert (tmp_path / "Image/SSM/s1.jpg").read_bytes() != (world / "Image/SSM/s1.jpg").read_bytes()


def test_every_labeled_identity_appears_in_several_images(world: Path) -> None:
    for cell in _mat(world, "annotation/test/train_test/Train.mat", "Train")[:, 0]:
        images = [_text(s["imname"]) for s in cell[0, 0]["scene"][0]]
        assert len(images) >= 2 and len(set(images)) == len(images)
    for entry in _mat(world, "annotation/test/train_test/TestG50.mat", "TestG50")[0]:
        positives = [g for g in entry["Gallery"][0] if g["idlocate"].size]
        assert len(positives) >= 1, "every query has its person elsewhere in the gallery"


def test_person_heights_lie_between_50_and_400_pixels_inside_the_image(world: Path) -> None:
    heights = []
    for entry in _mat(world, "annotation/Images.mat", "Img")[0]:
        for box in entry["box"][0]:
            x, y, w, h = box["idlocate"][0]
            assert x >= 0 and y >= 0 and x + w <= TINY.image_width and y + h <= TINY.image_height
            heights.append(h)
    assert min(heights) >= 50 and max(heights) <= 400
    assert min(heights) < 60 < max(heights), "both low-resolution and large people occur"


def test_train_and_test_identities_and_images_are_disjoint(world: Path) -> None:
    train = _mat(world, "annotation/test/train_test/Train.mat", "Train")[:, 0]
    train_ids = {_text(c[0, 0]["idname"]) for c in train}
    train_images = {_text(s["imname"]) for c in train for s in c[0, 0]["scene"][0]}
    testg = _mat(world, "annotation/test/train_test/TestG50.mat", "TestG50")[0]
    test_ids = {_text(e["Query"][0, 0]["idname"]) for e in testg}
    pool = {_text(v) for v in _mat(world, "annotation/pool.mat", "pool")[:, 0]}
    assert len(test_ids) == TINY.test_identities
    assert not train_ids & test_ids
    assert not train_images & pool


def test_every_image_holds_unlabeled_passers_by(world: Path) -> None:
    labeled: dict[str, int] = {}
    for cell in _mat(world, "annotation/Person.mat", "Person")[0]:
        for s in cell["scene"][0]:
            labeled[_text(s["imname"])] = labeled.get(_text(s["imname"]), 0) + 1
    for entry in _mat(world, "annotation/Images.mat", "Img")[0]:
        assert entry["box"].shape[1] > labeled.get(_text(entry["imname"]), 0)


def test_world_json_says_what_every_annotated_box_is(world: Path, tmp_path: Path) -> None:
    truth = load_world_truth(world)
    img = _mat(world, "annotation/Images.mat", "Img")[0]
    assert set(truth) == {_text(e["imname"]) for e in img}
    for entry in img:
        boxes = truth[_text(entry["imname"])]
        assert len(boxes) == entry["box"].shape[1], "one entry per box, in Images.mat order"
        for b, hard in zip(boxes, entry["box"][0]["ishard"]):
            assert 0.0 <= b.visible <= 1.0 and bool(hard.item()) == (b.visible <= TINY.hard_visible_max)
    # Labeled boxes name the same identity Person.mat puts there (matched by box position).
    where = {}
    for cell in _mat(world, "annotation/Person.mat", "Person")[0]:
        for s in cell["scene"][0]:
            where[(_text(s["imname"]), tuple(s["idlocate"][0].astype(int)))] = _text(cell["idname"])
    for entry in img:
        name = _text(entry["imname"])
        for b, box in zip(truth[name], entry["box"][0]):
            assert b.identity == where.get((name, tuple(box["idlocate"][0].astype(int))))
    passers = [b for boxes in truth.values() for b in boxes if b.identity is None]
    looks = [b for b in passers if b.lookalike_of is not None]
    assert looks and len(looks) < len(passers), "some passers-by, not all, copy an identity"
    assert all(b.changed in LOOKALIKE_ATTRIBUTES for b in looks)
    assert all(b.changed is None for b in passers if b.lookalike_of is None)
    identities = {b.identity for boxes in truth.values() for b in boxes} - {None}
    assert {b.lookalike_of for b in looks} <= identities
    with pytest.raises(FileNotFoundError, match="not a synthetic world"):
        load_world_truth(tmp_path)


def test_twin_identities_are_labeled_one_attribute_copies_of_other_training_identities(
    world: Path, tmp_path: Path
) -> None:
    config = TINY.model_copy(update={"train_twin_fraction": 0.5})
    generate_world(tmp_path, seed=0, config=config, progress=False)
    truth, plain = load_world_truth(tmp_path), load_world_truth(world)
    cells = _mat(tmp_path, "annotation/test/train_test/Train.mat", "Train")[:, 0]
    train = {_text(cell[0, 0]["idname"]) for cell in cells}
    twins = {b.identity: (b.lookalike_of, b.changed) for boxes in truth.values() for b in boxes if b.identity}
    twins = {k: v for k, v in twins.items() if v[0] is not None}
    assert len(twins) == round(0.5 * TINY.train_identities), "half the training identities are twins"
    sources = [source for source, _ in twins.values()]
    assert set(twins) <= train and set(sources) <= train, "twins pair training identities only"
    assert len(set(sources)) == len(sources) and not set(sources) & set(twins), "each source has one twin, no chains"
    assert all(changed in LOOKALIKE_ATTRIBUTES for _, changed in twins.values())
    # Only appearances change: every identity is in the same images, the galleries are the same.
    assert [[b.identity for b in boxes] for boxes in truth.values()] == [
        [b.identity for b in boxes] for boxes in plain.values()
    ]
    for rel in ("annotation/pool.mat", "annotation/test/train_test/TestG50.mat"):
        assert (tmp_path / rel).read_bytes() == (world / rel).read_bytes()
    assert not any(b.lookalike_of for boxes in plain.values() for b in boxes if b.identity), "off by default"


def test_config_refuses_a_pool_too_small_for_its_gallery() -> None:
    with pytest.raises(ValidationError, match="pool_images"):
        SynthConfig(pool_images=100, gallery_sizes=(50, 100))


def test_default_preset_offers_testg50_and_testg100() -> None:
    default = PRESETS["default"]
    assert {50, 100} <= set(default.gallery_sizes) and default.pool_images > 100
    assert 3 <= (sum(default.passersby) / 2 + 0.8) <= 5  # people per image, roughly


def test_test200_preset_is_the_default_world_with_more_queries() -> None:
    """Networks are chosen on test200: the default world's settings (renderer, difficulty), 200 query identities."""
    sizes = {"test_identities", "pool_images", "train_identities", "train_images"}
    test200, default = PRESETS["test200"].model_dump(), PRESETS["default"].model_dump()
    assert {k: v for k, v in test200.items() if k not in sizes} == {k: v for k, v in default.items() if k not in sizes}
    assert test200["test_identities"] == 200 and set(test200["gallery_sizes"]) == {50, 100}


def test_main_synth_applies_overrides_and_rejects_unknown_presets(tmp_path: Path) -> None:
    summary = main_synth(tmp_path, seed=3, preset="tiny", progress=False, train_images=30, pool_images=None)
    assert summary["train_images"] == 30 and summary["pool_images"] == TINY.pool_images
    assert json.loads(json.dumps(summary)) == summary, "the CLI prints it as JSON"
    assert len(list((tmp_path / "Image" / "SSM").glob("*.jpg"))) == 30 + TINY.pool_images
    with pytest.raises(ValueError, match="unknown synthetic-world preset"):
        main_synth(tmp_path, seed=0, preset="huge")


def test_lookalike_changes_exactly_one_attribute() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        base = Appearance.random(rng)
        twin = base.lookalike(rng)
        changed = {f for f in base.__dataclass_fields__ if getattr(base, f) != getattr(twin, f)}
        assert changed, "a look-alike is a different person"
        grouped = {"hair" if f in ("hair_style", "hair_color") else f for f in changed}
        assert len(grouped) == 1 and grouped <= set(LOOKALIKE_ATTRIBUTES)


def test_drawn_person_fills_its_box_and_occluder_reports_what_stays_visible() -> None:
    rng = np.random.default_rng(0)
    canvas = render_background(rng, 320, 240).image
    app, pose = Appearance.random(rng), Pose(phase=1.0, facing="right")
    h = 150
    w = round(h * person_aspect(app, pose))
    stamp = draw_person(canvas, app, (50, 40, 50 + w, 40 + h), pose)
    assert stamp.mask.shape == (h, w)
    rows, cols = np.flatnonzero(stamp.mask.any(1)), np.flatnonzero(stamp.mask.any(0))
    assert rows[0] <= 2 and rows[-1] >= h - 3 and cols[0] <= 2 and cols[-1] >= w - 3, "the box is tight"
    visible, occluder = draw_occluder(canvas, rng, (50, 40, 50 + w, 40 + h), coverage=0.6, kind="wall", person=stamp)
    assert 0.2 < visible < 0.9 and occluder.mask.any()
    out = apply_photometric(canvas, Photometric.random(rng), rng)
    assert out.size == canvas.size and out.mode == "RGB"
