"""End to end on real components: two synthetic cameras (H.264 files with ground truth) -> ingest -> detector ->
tracker -> FAISS index -> search by a photo that is no frame of the videos, measured against the ground truth."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from detector.config import ModelConfig, get_model_config
from detector.engine import Engine, TorchEngine, load_engine
from detector.model import build_model
from detector.service import DetectorOptions, DetectorService
from detector.weights import DEMO_WEIGHTS
from index.search import search_by_photo
from index.service import IndexerOptions, IndexerService, TrackerService
from index.tracker import TrackerOptions
from ingest.cameras import CameraConfig, CameraRegistry, CameraState
from ingest.decoder import IngestOptions
from ingest.service import IngestService
from personsearch.streams import DetectionMessage, Groups, Keys, decode
from training.synth.video import CameraVideoConfig, load_ground_truth, render_camera_set

FPS = 3


@pytest.fixture(scope="module")
def camera_set(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cameras")
    return render_camera_set(
        out, 3, cameras=2, watch_identities=2, config=CameraVideoConfig(width=480, height=360, fps=5, seconds=12),
        progress=False,
    )  # fmt: skip


def engine_under_test() -> tuple[Engine, bool]:
    """The bundled demo model when it is there (trained: retrieval is checked), else a seeded random network."""
    if DEMO_WEIGHTS.is_file():
        return load_engine("torch"), True
    torch.manual_seed(0)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "min_size": 240, "max_size": 320})
    return TorchEngine(build_model(cfg)), False


class Pipeline:
    """Every worker of `personsearch up`, as threads of this process, on one real redis-server."""

    def __init__(self, r: redis.Redis, keys: Keys, engine: Engine, index_dir: Path, trained: bool) -> None:
        self.stop = threading.Event()
        self.ingest = IngestService(r, keys, IngestOptions(frame_stream_maxlen=1000), poll_s=0.2)
        self.detector = DetectorService(
            r, keys, engine, DetectorOptions(max_batch=4, det_thresh=0.5 if trained else 0.0), "det"
        )
        self.tracker = TrackerService(r, keys, TrackerOptions(max_gap_s=1.5), consumer_name="trk")
        self.indexer = IndexerService(r, keys, IndexerOptions(directory=index_dir, dim=256), model=engine.model_name)
        self.threads = [
            threading.Thread(target=w.run, args=(self.stop,), daemon=True)
            for w in (self.ingest, self.detector, self.tracker, self.indexer)
        ]

    def __enter__(self) -> Pipeline:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


@pytest.fixture
def pipeline_run(camera_set, redis_server, keys: Keys, tmp_path: Path) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    r = redis_server.client()
    engine, trained = engine_under_test()
    registry = CameraRegistry(r, keys)
    for cam in camera_set.cameras:
        registry.add(CameraConfig(id=cam.camera, url=f"file://{cam.video}", fps=FPS, max_size=480))
    with Pipeline(r, keys, engine, tmp_path / "index", trained) as p:
        deadline = time.monotonic() + 600
        done = lambda: all(registry.status(c.camera).state is CameraState.DOWN for c in camera_set.cameras)
        while not done() and time.monotonic() < deadline:
            time.sleep(0.2)
        # Then until every frame is detected and the tracklets of the quiet cameras are closed and indexed.
        while time.monotonic() < deadline:
            pending = sum(r.xpending(keys.frames(c.camera), Groups.DETECTOR)["pending"] for c in camera_set.cameras)
            lag = sum(r.xlen(keys.frames(c.camera)) for c in camera_set.cameras) - r.xlen(keys.detections)
            if pending == 0 and lag <= 0 and not any(linker.open for linker in p.tracker.linkers.values()):
                time.sleep(1.0)  # the indexer's last read
                break
            time.sleep(0.2)
        p.indexer.save()
        yield r, p, engine, trained
    r.close()


def test_every_frame_of_both_cameras_flows_to_detections_tracklets_and_the_index(  # type: ignore[no-untyped-def]
    camera_set, pipeline_run, keys: Keys
) -> None:
    r, p, _, _ = pipeline_run
    registry = CameraRegistry(r, keys)
    for cam in camera_set.cameras:
        status = registry.status(cam.camera)
        assert abs(status.frames - 12 * FPS) <= 1 and status.dropped == 0 and status.corrupt == 0
    dets = [decode(DetectionMessage, f) for _, f in r.xrange(keys.detections)]
    per_camera = {c.camera: sorted(d.seq for d in dets if d.camera == c.camera) for c in camera_set.cameras}
    assert all(seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 35 for seqs in per_camera.values())
    assert len(p.indexer.index) > 0 and p.indexer.index.position != "0-0"


def test_searching_with_a_photo_ranks_that_identitys_tracklets_first(  # type: ignore[no-untyped-def]
    camera_set, pipeline_run, keys: Keys
) -> None:
    r, p, engine, trained = pipeline_run
    if not trained:
        pytest.fail("retrieval needs the trained demo model (detector/weights/oim-r18-demo.pt, tracked in git)")
    dets = {(d.camera, d.seq): d for d in (decode(DetectionMessage, f) for _, f in r.xrange(keys.detections))}
    truths = {c.camera: load_ground_truth(c.ground_truth) for c in camera_set.cameras}

    def identity_of(hit) -> str | None:  # type: ignore[no-untyped-def]
        """The ground-truth identity under a tracklet's best box, in the video frame it was taken from."""
        d = dets[(hit.record.camera, hit.record.best_seq)]
        truth = truths[hit.record.camera]
        frame = min(truth.frames, key=lambda f: abs(f.time - (d.media_ts or 0.0)))
        best = max(frame.people, key=lambda q: _iou(q.box, hit.record.best_box), default=None)
        return best.identity if best is not None and _iou(best.box, hit.record.best_box) >= 0.5 else None

    ranks = {}
    for name in camera_set.identities:
        photo = np.asarray(Image.open(camera_set.photos[name]).convert("RGB"))
        box = _photo_box(camera_set, name)
        hits = search_by_photo(p.indexer.index, engine, photo, box, k=10)
        found = [identity_of(h) for h in hits]
        ranks[name] = found.index(name) + 1 if name in found else None
    print("rank of each identity's first tracklet:", ranks, "of", len(p.indexer.index), "tracklets")
    # Of every tracklet of both cameras (about 200 with the bundled model), each identity's own ranks first.
    assert all(r == 1 for r in ranks.values()), ranks


def _photo_box(camera_set, name: str) -> tuple[float, float, float, float]:  # type: ignore[no-untyped-def]
    import json

    meta = json.loads((camera_set.out_dir / "cameras.json").read_text())
    return tuple(next(i["photo_box"] for i in meta["identities"] if i["name"] == name))  # type: ignore[return-value]


def _iou(a, b) -> float:  # type: ignore[no-untyped-def]
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
