"""The tracklet index: ranking, replacement, deletion, retention, filters, persistence, crashes, models, IVF recall."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.store import IvfOptions, SnapshotMismatchError, TrackletIndex, TrackletRecord

DIM = 32
SMALL_IVF = IvfOptions(nlist=16, nprobe=4, train_size=16 * 40)


@pytest.fixture(autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """Run faiss on one thread: on a busy machine OpenMP threads waiting for each other make single-vector calls
    a thousand times slower, which says nothing about behaviour."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, seed: int = 0, per_cluster: int = 250, spread: float = 0.09) -> np.ndarray:
    """(n, dim) unit vectors around n/per_cluster random centres, like embeddings of n/per_cluster people."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // per_cluster), dim)))
    labels = rng.integers(0, len(centres), n)
    return unit(centres[labels] + spread * rng.standard_normal((n, dim)))


def record(i: int, camera: str = "cam0", start: float = 1000.0, end: float | None = None) -> TrackletRecord:
    return TrackletRecord(
        tracklet_id=f"cam:{i}",
        camera=camera,
        start_ts=start,
        end_ts=start + 5.0 if end is None else end,
        frames=25,
        best_box=(10.0, 20.0, 60.0, 180.0),
        best_score=0.9,
        best_seq=i,
    )


def fill(index: TrackletIndex, vectors: np.ndarray, cameras: list[str] | None = None) -> None:
    for i, v in enumerate(vectors):
        index.upsert(record(i, cameras[i] if cameras else "cam0", start=1000.0 + i), v)


def test_new_index_is_empty_at_position_0_0(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    assert len(index) == 0
    assert index.position == "0-0"
    assert index.search(np.ones(DIM, np.float32)) == []


def test_search_ranks_nearest_first_with_cosine_scores(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, DIM)).astype(np.float32)  # not unit: the index normalises
    fill(index, vectors)
    query = vectors[7] + 0.1 * rng.standard_normal(DIM).astype(np.float32)
    hits = index.search(query, k=5)
    expected = unit(vectors) @ unit(query)
    assert [h.record.tracklet_id for h in hits] == [f"cam:{i}" for i in np.argsort(-expected)[:5]]
    assert hits[0].record.tracklet_id == "cam:7"
    np.testing.assert_allclose([h.score for h in hits], np.sort(expected)[::-1][:5], atol=1e-5)


def test_get_returns_the_record_and_the_stored_unit_vector(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    v = np.arange(1, DIM + 1, dtype=np.float32)
    index.upsert(record(1), v)
    got = index.get("cam:1")
    assert got is not None
    assert got[0] == record(1)
    np.testing.assert_allclose(got[1], unit(v), atol=1e-6)
    assert index.get("missing") is None
    with pytest.raises(ValueError, match="norm"):
        index.upsert(record(2), np.zeros(DIM, np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.upsert(record(2), np.ones(DIM + 1, np.float32))


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_upserting_the_same_tracklet_twice_keeps_one_entry(tmp_path: Path, kind: str) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, kind=kind, ivf=SMALL_IVF)
    vectors = clustered(SMALL_IVF.train_size + 100, DIM)
    fill(index, vectors)
    n = len(index)
    index.upsert(record(3), vectors[3])  # the same event replayed
    moved = replace(record(3), end_ts=2000.0, frames=99)
    elsewhere = unit(np.random.default_rng(11).standard_normal(DIM))
    index.upsert(moved, elsewhere)  # an update: new end, new summary vector
    assert len(index) == n
    hit = index.search(elsewhere, k=1)[0]
    assert hit.record == moved and hit.score == pytest.approx(1.0)
    assert index.search(vectors[3], k=1)[0].record.tracklet_id != "cam:3"


def test_an_update_without_a_jpeg_keeps_the_snapshot(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    index.upsert(record(1), np.ones(DIM, np.float32), snapshot_jpeg=b"\xff\xd8first")
    index.upsert(record(1, end=2000.0), np.ones(DIM, np.float32), snapshot_jpeg=None)
    stored = index.get("cam:1")
    assert stored is not None
    path = index.snapshot_path(stored[0])
    assert path is not None and path.read_bytes() == b"\xff\xd8first"
    assert stored[0].end_ts == 2000.0


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_delete_removes_vector_metadata_and_snapshot_file(tmp_path: Path, kind: str) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, kind=kind, ivf=SMALL_IVF)
    vectors = clustered(SMALL_IVF.train_size + 10, DIM, seed=2)
    fill(index, vectors)
    index.upsert(record(5), vectors[5], snapshot_jpeg=b"\xff\xd8jpeg")
    got = index.get("cam:5")
    assert got is not None
    snapshot = index.snapshot_path(got[0])
    assert snapshot is not None and snapshot.is_file()

    assert index.delete(["cam:5", "cam:6", "never-seen"]) == 2
    assert index.get("cam:5") is None and index.get("cam:6") is None
    assert not snapshot.exists()
    assert "cam:5" not in {h.record.tracklet_id for h in index.search(vectors[5], k=20)}
    index.save("9-0")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert faiss.read_index(str(tmp_path / manifest["vectors"])).ntotal == len(index) == len(vectors) - 2


def test_retention_deletes_tracklets_that_ended_before_the_cutoff(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    vectors = clustered(100, DIM, seed=3)
    for i, v in enumerate(vectors):
        index.upsert(record(i, start=float(i), end=float(i) + 10.0), v, snapshot_jpeg=b"\xff\xd8" + bytes([i]))
    assert index.delete_older_than(50.0) == 40  # ends 10..49 are before 50; the one ending at 50 stays
    assert len(index) == 60
    assert min(h.record.end_ts for h in index.search(vectors[0], k=100)) == 50.0
    assert len(list((tmp_path / "snapshots").iterdir())) == 60


@pytest.mark.parametrize("kind", ["flat", "ivf"])
@pytest.mark.parametrize("camera", ["rare", "common"])  # 1/60 of the index (scored directly), 1/4 (searched deeper)
def test_camera_filter_returns_k_hits_when_the_nearest_are_on_other_cameras(
    tmp_path: Path, kind: str, camera: str
) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, kind=kind, ivf=SMALL_IVF)
    vectors = clustered(3000, DIM, seed=4, per_cluster=100)
    query = vectors[0]
    nearest = np.argsort(-(vectors @ query))
    cameras = ["other"] * len(vectors)
    for i in nearest[200:][::4]:
        cameras[i] = "common"
    for i in nearest[200:][1::60]:
        cameras[i] = "rare"
    fill(index, vectors, cameras)
    hits = index.search(query, k=10, cameras=[camera])
    assert len(hits) == 10
    assert {h.record.camera for h in hits} == {camera}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    on_camera = [i for i in nearest if cameras[i] == camera][:10]
    if kind == "flat":
        assert [h.record.tracklet_id for h in hits] == [f"cam:{i}" for i in on_camera]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_time_filter_keeps_tracklets_overlapping_the_window_and_still_returns_k(tmp_path: Path, kind: str) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, kind=kind, ivf=SMALL_IVF)
    vectors = clustered(2000, DIM, seed=5)
    for i, v in enumerate(vectors):
        index.upsert(record(i, start=float(i), end=float(i) + 10.0), v)  # tracklet i spans [i, i + 10]
    hits = index.search(vectors[0], k=10, since=500.0, until=700.0)
    assert len(hits) == 10
    assert all(h.record.end_ts >= 500.0 and h.record.start_ts <= 700.0 for h in hits)
    edge = index.search(vectors[0], k=100, since=500.0, until=500.0)  # [490, 500] and [500, 510] both touch 500
    assert sorted(h.record.start_ts for h in edge) == [float(s) for s in range(490, 501)]
    assert index.search(vectors[0], k=10, cameras=[]) == []
    assert len(index.search(vectors[0], k=10, cameras="cam0")) == 10  # a lone camera id, not its letters


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_save_and_load_restore_search_results_and_position(tmp_path: Path, kind: str) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, model="oim-a", kind=kind, ivf=SMALL_IVF)
    vectors = clustered(1000, DIM, seed=6)
    fill(index, vectors)
    index.upsert(record(1), vectors[1], snapshot_jpeg=b"\xff\xd8one")
    index.delete(["cam:2"])
    index.save("1712345678901-3")
    queries = vectors[:20]
    before = [index.search(q, k=10, since=1100.0) for q in queries]

    again = TrackletIndex(tmp_path, dim=DIM, model="oim-a", kind=kind, ivf=SMALL_IVF)
    assert again.position == "1712345678901-3"
    assert len(again) == len(index)
    assert [again.search(q, k=10, since=1100.0) for q in queries] == before
    got = again.get("cam:1")
    assert got is not None
    path = again.snapshot_path(got[0])
    assert path is not None and path.read_bytes() == b"\xff\xd8one"
    again.upsert(record(5000), vectors[2])  # the id counter carries on: a reused id would take over cam:0's vector
    first = again.get("cam:0")
    assert first is not None
    np.testing.assert_array_equal(first[1], vectors[0])


def test_a_crash_during_save_leaves_the_previous_snapshot_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = TrackletIndex(tmp_path, dim=DIM)
    vectors = clustered(300, DIM, seed=7)
    fill(index, vectors[:200])
    index.save("100-0")
    for i in range(200, 300):
        index.upsert(record(i), vectors[i], snapshot_jpeg=b"\xff\xd8new")  # JPEGs are written now, ahead of the save

    real_replace, calls = os.replace, []

    def replace_then_die(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # the vectors file is in place, the metadata file is not, the manifest is untouched
            raise OSError("killed")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(OSError, match="killed"):
        index.save("200-0")
    monkeypatch.undo()
    (tmp_path / "vectors-000009.faiss.tmp").write_bytes(b"garbage of a save killed while writing")

    loaded = TrackletIndex(tmp_path, dim=DIM)
    assert loaded.position == "100-0"
    assert len(loaded) == 200
    assert loaded.search(vectors[150], k=1)[0].record.tracklet_id == "cam:150"
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["manifest.json", "snapshots", "tracklets-000001.sqlite", "vectors-000001.faiss"]
    assert list((tmp_path / "snapshots").iterdir()) == []  # the unsaved tracklets' JPEGs are orphans until replay


KILLED_WRITER = """
import sys
from pathlib import Path
import numpy as np
from index.store import TrackletIndex, TrackletRecord
index = TrackletIndex(Path(sys.argv[1]), dim=32)
rng = np.random.default_rng(0)
def add(i):
    index.upsert(TrackletRecord(f"t{i}", "cam0", i, i + 1.0, 1, (0, 0, 1, 1), 1.0, i), rng.standard_normal(32))
for i in range(5000):
    add(i)
for r in range(10**6):
    for i in range(5000 + 10 * r, 5010 + 10 * r):
        add(i)
    index.save(f"{r}-0")
    print(r, flush=True)
"""


def test_kill_9_during_saves_leaves_a_consistent_snapshot(tmp_path: Path) -> None:
    # A writer saving in a loop (saves are most of its time) is killed; the directory must open at one saved position
    # with exactly the tracklets of that position.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    for _ in range(3):
        child.stdout.readline()
    time.sleep(random.uniform(0.0, 0.05))
    child.send_signal(signal.SIGKILL)
    child.wait()
    index = TrackletIndex(tmp_path, dim=32)
    saved_round = int(index.position.split("-")[0])
    assert len(index) == 5000 + 10 * (saved_round + 1)
    assert index.get(f"t{4999 + 10 * (saved_round + 1)}") is not None


def test_refuses_a_snapshot_of_another_model_or_dimension(tmp_path: Path) -> None:
    index = TrackletIndex(tmp_path, dim=DIM, model="oim-a")
    index.upsert(record(1), np.ones(DIM, np.float32))
    index.save("1-0")
    with pytest.raises(SnapshotMismatchError, match="oim-a"):
        TrackletIndex(tmp_path, dim=DIM, model="oim-b")
    with pytest.raises(SnapshotMismatchError, match=f"{DIM}-d"):
        TrackletIndex(tmp_path, dim=DIM * 2, model="oim-a")
    assert len(TrackletIndex(tmp_path, dim=DIM, model="oim-a")) == 1  # the refusal changed nothing


def test_ivf_is_exact_until_trained_then_keeps_its_training_across_reloads(tmp_path: Path) -> None:
    options = IvfOptions(nlist=16, nprobe=1, train_size=16 * 40)
    vectors = clustered(options.train_size + 200, DIM, seed=8, per_cluster=20, spread=0.3)
    flat = TrackletIndex(tmp_path / "flat", dim=DIM)
    ivf = TrackletIndex(tmp_path / "ivf", dim=DIM, kind="ivf", ivf=options)
    fill(flat, vectors[: options.train_size - 1])
    fill(ivf, vectors[: options.train_size - 1])
    queries = vectors[:30] + 0.05
    assert [ivf.search(q) for q in queries] == [flat.search(q) for q in queries]  # untrained: exact

    fill(ivf, vectors)  # crosses train_size: trains on the first train_size tracklets
    ivf.save("1-0")
    assert json.loads((tmp_path / "ivf" / "manifest.json").read_text())["index"].startswith("IVF16,")
    reloaded = TrackletIndex(tmp_path / "ivf", dim=DIM, kind="ivf", ivf=options)
    assert [reloaded.search(q) for q in queries] == [ivf.search(q) for q in queries]
    as_flat = TrackletIndex(tmp_path / "ivf", dim=DIM, kind="flat")  # an IVF snapshot opened flat is rebuilt exact
    fill(flat, vectors)
    assert [as_flat.search(q) for q in queries] == [flat.search(q) for q in queries]


def test_ivf_recall_at_10_against_flat_is_at_least_0_9(tmp_path: Path) -> None:
    # Clustered, not uniform, vectors: re-ID embeddings gather by identity, and on uniform random vectors in 256-d
    # every index is a coin toss (no neighbour is much nearer than any other), which would measure nothing.
    vectors = clustered(20_000, 256, seed=9)
    options = IvfOptions(nlist=64, nprobe=8, train_size=64 * 64)
    flat = TrackletIndex(tmp_path / "flat", dim=256)
    ivf = TrackletIndex(tmp_path / "ivf", dim=256, kind="ivf", ivf=options)
    fill(flat, vectors)
    fill(ivf, vectors)
    queries = clustered(200, 256, seed=9)  # same people, new sightings
    recall = np.mean(
        [
            len({h.record.tracklet_id for h in ivf.search(q)} & {h.record.tracklet_id for h in flat.search(q)}) / 10
            for q in queries
        ]
    )
    assert recall >= 0.9


def test_search_through_a_lagging_replica_returns_only_live_tracklets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CPU clone stands in for the GPU copy: what is tested is that a replica holding dead entries is harmless.
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(TrackletIndex, "_to_gpu", lambda self, index: faiss.clone_index(index))
    index = TrackletIndex(tmp_path, dim=DIM, device="gpu")
    vectors = clustered(500, DIM, seed=10)
    fill(index, vectors)
    assert index.search(vectors[0], k=1)[0].record.tracklet_id == "cam:0"  # the replica now exists
    index.delete(["cam:0"])
    index.upsert(record(1), vectors[2])  # cam:1 now looks like cam:2
    index.upsert(record(777), vectors[0])
    hits = index.search(vectors[0], k=10)
    assert hits[0].record.tracklet_id == "cam:777"
    ids = [h.record.tracklet_id for h in hits]
    assert "cam:0" not in ids and len(ids) == len(set(ids)) == 10
    assert {h.record.tracklet_id for h in index.search(vectors[2], k=2)} == {"cam:1", "cam:2"}
