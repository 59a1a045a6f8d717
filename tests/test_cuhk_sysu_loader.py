"""The CUHK-SYSU reader, proven on a synthetic world in the real layout and on hand-written edge cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from training.datasets.cuhk_sysu import CUHKSYSU
from training.datasets.records import UNLABELED
from training.synth.world import PRESETS, generate_world

CONFIG = PRESETS["tiny"].model_copy(update={"pool_images": 104, "gallery_sizes": (50, 100)})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_g100")
    generate_world(out, seed=5, config=CONFIG, progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(world: Path) -> CUHKSYSU:
    return CUHKSYSU(world)


def _mat(root: Path, rel: str, var: str) -> np.ndarray:
    return scipy.io.loadmat(str(root / rel))[var]


def _raw_boxes(root: Path) -> dict[str, np.ndarray]:
    """Image name -> (K, 4) xywh straight from Images.mat."""
    img = _mat(root, "annotation/Images.mat", "Img")[0]
    return {e["imname"][0]: np.array([b["idlocate"][0] for b in e["box"][0]]) for e in img}


def test_train_scenes_are_the_images_outside_the_pool(world: Path, dataset: CUHKSYSU) -> None:
    pool = {v[0] for v in _mat(world, "annotation/pool.mat", "pool")[:, 0]}
    train = dataset.train_scenes()
    assert len(train) == CONFIG.train_images
    assert not {s.name for s in train} & pool
    assert all(s.path == world / "Image" / "SSM" / s.name and s.path.is_file() for s in train)


def test_boxes_round_trip_from_xywh_to_xyxy(world: Path, dataset: CUHKSYSU) -> None:
    raw = _raw_boxes(world)
    for scene in dataset.train_scenes() + dataset.test_scenes():
        xywh = raw[scene.name]
        expected = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        assert scene.boxes.dtype == np.float32 and scene.boxes.shape == (len(xywh), 4)
        np.testing.assert_array_equal(scene.boxes, expected)
        assert scene.pids.shape == (len(xywh),) and scene.hard.shape == (len(xywh),)


def test_labels_number_train_identities_in_train_order(world: Path, dataset: CUHKSYSU) -> None:
    train = _mat(world, "annotation/test/train_test/Train.mat", "Train")[:, 0]
    assert dataset.num_train_identities == len(train) == CONFIG.train_identities
    scenes = {s.name: s for s in dataset.train_scenes()}
    for label, cell in enumerate(train):
        for entry in cell[0, 0]["scene"][0]:
            x, y, w, h = entry["idlocate"][0]
            scene = scenes[entry["imname"][0]]
            hit = np.flatnonzero((scene.boxes == np.array([x, y, x + w, y + h], np.float32)).all(1))
            assert scene.pids[hit[0]] == label
    pids = np.concatenate([s.pids for s in scenes.values()])
    assert set(np.unique(pids)) == {UNLABELED, *range(CONFIG.train_identities)}
    assert (pids == UNLABELED).sum() > (pids != UNLABELED).sum(), "passers-by outnumber labeled people"


def test_test_scenes_are_the_pool_with_every_box_unlabeled(world: Path, dataset: CUHKSYSU) -> None:
    pool = [v[0] for v in _mat(world, "annotation/pool.mat", "pool")[:, 0]]
    test = dataset.test_scenes()
    assert [s.name for s in test] == pool
    assert all((s.pids == UNLABELED).all() and len(s.boxes) for s in test)


@pytest.mark.parametrize("size", [50, 100])
def test_galleries_have_the_requested_size_with_positives_first(dataset: CUHKSYSU, size: int) -> None:
    queries = dataset.queries(size)
    assert len(queries) == CONFIG.test_identities
    pool = {s.name for s in dataset.test_scenes()}
    for q in queries:
        present = [g.box is not None for g in q.gallery]
        assert len(q.gallery) == size and 1 <= sum(present) < size
        assert present == sorted(present, reverse=True), "positives first"
        assert q.name not in {g.name for g in q.gallery} and q.name in pool
        assert q.box.shape == (4,) and q.box[3] - q.box[1] >= 50


def test_every_gallery_size_has_the_same_queries_and_nested_galleries(dataset: CUHKSYSU) -> None:
    small, large = dataset.queries(50), dataset.queries(100)
    assert [(q.idname, q.name) for q in small] == [(q.idname, q.name) for q in large]
    for a, b in zip(small, large):
        assert {g.name for g in a.gallery} <= {g.name for g in b.gallery}


def test_subsets_select_occluded_and_low_resolution_queries(dataset: CUHKSYSU) -> None:
    everyone = {(q.idname, q.name) for q in dataset.queries(100)}
    occluded = dataset.queries(100, subset="occlusion")
    small = dataset.queries(50, subset="resolution")
    assert occluded and small
    assert {(q.idname, q.name) for q in occluded} <= everyone
    assert all(q.box[3] - q.box[1] < 60 for q in small)


def test_unknown_gallery_size_names_the_missing_file_and_the_sizes_present(dataset: CUHKSYSU) -> None:
    with pytest.raises(FileNotFoundError, match=r"TestG4000\.mat.*\[50, 100\]"):
        dataset.queries(4000)
    with pytest.raises(ValueError, match="unknown subset"):
        dataset.queries(50, subset="crowded")


def test_missing_annotation_file_is_named(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(world / "annotation", root / "annotation")
    (root / "annotation" / "pool.mat").unlink()
    with pytest.raises(FileNotFoundError, match=r"pool\.mat"):
        CUHKSYSU(root).test_scenes()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CUHKSYSU(tmp_path / "nowhere")


def test_wrong_variable_and_garbage_files_get_clear_errors(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(world / "annotation", root / "annotation")
    scipy.io.savemat(str(root / "annotation" / "pool.mat"), {"testpool": np.zeros((2, 1))})
    with pytest.raises(ValueError, match=r"no variable 'pool'.*testpool"):
        CUHKSYSU(root).test_scenes()
    shutil.copy(world / "annotation" / "pool.mat", root / "annotation" / "pool.mat")
    (root / "annotation" / "Images.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match=r"Images\.mat is not a readable MATLAB file"):
        CUHKSYSU(root).train_scenes()


def _structs(rows: list[dict[str, object]]) -> np.ndarray:
    fields = list(rows[0])
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            arr[f][0, i] = row[f]
    return arr


def test_reads_single_box_images_zero_size_boxes_and_0x0_empty_idlocate(tmp_path: Path) -> None:
    """MATLAB's own quirks: a 1 x 1 box struct, a zero-height box, ``[]`` (0 x 0) for an absent gallery person."""
    ann = tmp_path / "annotation"
    (ann / "test" / "train_test").mkdir(parents=True)

    def box(xywh: list[float]) -> dict[str, object]:
        return {"idlocate": np.array([xywh], float), "ishard": np.array([[0.0]])}

    img = _structs(
        [
            {"imname": "s1.jpg", "nAppear": np.array([[1.0]]), "box": _structs([box([10, 20, 30, 60])])},
            {
                "imname": "s2.jpg",
                "nAppear": np.array([[2.0]]),
                "box": _structs([box([5, 5, 20, 0]), box([40, 10, 25, 55])]),
            },
            {"imname": "s3.jpg", "nAppear": np.array([[1.0]]), "box": _structs([box([1, 2, 20, 50])])},
        ]
    )
    scipy.io.savemat(str(ann / "Images.mat"), {"Img": img})
    pool = np.empty((1, 1), dtype=object)
    pool[0, 0] = "s3.jpg"
    scipy.io.savemat(str(ann / "pool.mat"), {"pool": pool})
    person = _structs(
        [
            {
                "idname": "p7",
                "nAppear": np.array([[1.0]]),
                "scene": _structs(
                    [{"imname": "s2.jpg", "idlocate": np.array([[40.0, 10, 25, 55]]), "ishard": np.array([[0.0]])}]
                ),
            }
        ]
    )
    train = np.empty((1, 1), dtype=object)
    train[0, 0] = person
    scipy.io.savemat(str(ann / "test" / "train_test" / "Train.mat"), {"Train": train})
    query = _structs(
        [{"imname": "s3.jpg", "idlocate": np.array([[1.0, 2, 20, 50]]), "ishard": np.array([[0.0]]), "idname": "p9"}]
    )
    gallery = _structs([{"imname": "s1.jpg", "idlocate": np.zeros((0, 0)), "ishard": np.zeros((0, 0))}])
    scipy.io.savemat(
        str(ann / "test" / "train_test" / "TestG1.mat"), {"TestG1": _structs([{"Query": query, "Gallery": gallery}])}
    )

    dataset = CUHKSYSU(tmp_path)
    train_scenes = {s.name: s for s in dataset.train_scenes()}
    assert sorted(train_scenes) == ["s1.jpg", "s2.jpg"]
    np.testing.assert_array_equal(train_scenes["s1.jpg"].boxes, [[10, 20, 40, 80]])
    np.testing.assert_array_equal(train_scenes["s2.jpg"].boxes, [[40, 10, 65, 65]])  # zero-height box dropped
    assert train_scenes["s2.jpg"].pids.tolist() == [0] and train_scenes["s1.jpg"].pids.tolist() == [UNLABELED]
    (q,) = dataset.queries(1)
    assert (q.idname, q.name) == ("p9", "s3.jpg") and q.gallery[0].box is None
    np.testing.assert_array_equal(q.box, [1, 2, 21, 52])
