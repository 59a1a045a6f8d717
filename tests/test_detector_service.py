"""The batched detector service on a real redis-server: fair batches, published-then-acked, no loss on kill -9."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from detector.config import ModelConfig, get_model_config
from detector.engine import TorchEngine
from detector.model import build_model
from detector.service import DetectorOptions, DetectorService
from ingest.cameras import CameraConfig, CameraRegistry
from ingest.decoder import encode_jpeg
from personsearch.streams import DetectionMessage, FrameMessage, FramePublisher, Groups, Keys, StreamConsumer, decode
from tests.detector_worker import SlowEngine

ROOT = Path(__file__).resolve().parents[1]


def publish_frames(
    r: redis.Redis, keys: Keys, camera: str, n: int, size: tuple[int, int] = (96, 64), age_s: float = 0.0
) -> None:
    CameraRegistry(r, keys).add(CameraConfig(id=camera, url=f"/videos/{camera}.mp4"))
    pub = FramePublisher(r, keys, camera, maxlen=1000)
    rng = np.random.default_rng(abs(hash(camera)) % 1000)
    for _ in range(n):
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        pub.publish(
            FrameMessage(
                camera=camera,
                seq=pub.next_seq(),
                capture_ts=time.time() - age_s,
                width=size[0],
                height=size[1],
                jpeg=encode_jpeg(img, 90),
            )
        )


def published(r: redis.Redis, keys: Keys) -> list[DetectionMessage]:
    return [decode(DetectionMessage, f) for _, f in r.xrange(keys.detections)]


def test_batches_take_cameras_round_robin_so_a_busy_one_cannot_starve_the_others(r: redis.Redis, keys: Keys) -> None:
    publish_frames(r, keys, "busy", 12)
    publish_frames(r, keys, "quiet", 2)
    service = DetectorService(r, keys, SlowEngine(0), DetectorOptions(max_batch=4, det_thresh=0.0), "d1")
    service.follow_cameras()
    batch = service.batcher.next_batch()
    cameras = [p.frame.camera for p in batch if p.frame]
    assert len(batch) == 4 and cameras.count("quiet") == 2  # both quiet frames in the first batch
    assert [p.frame.seq for p in batch if p.frame and p.frame.camera == "busy"] == [1, 2]  # in order per camera


def test_an_overloaded_detector_skips_frames_older_than_max_age_counted_and_acked(r: redis.Redis, keys: Keys) -> None:
    publish_frames(r, keys, "late", 3, age_s=30.0)  # queued for 30 s behind a detector that could not keep up
    publish_frames(r, keys, "fresh", 2)
    options = DetectorOptions(max_batch=8, det_thresh=0.0, max_frame_age_s=5.0)
    service = DetectorService(r, keys, SlowEngine(0), options, "d1")
    assert service.step() == 5
    assert service.frames_stale == 3 and service.frames_done == 2
    assert sorted(m.camera for m in published(r, keys)) == ["fresh", "fresh"]
    for cam in ("late", "fresh"):  # the skipped frames are acked: nothing is left pending or redelivered
        assert r.xpending(keys.frames(cam), Groups.DETECTOR)["pending"] == 0


def test_every_frame_yields_one_detection_message_with_crops_and_is_acked_after(r: redis.Redis, keys: Keys) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "min_size": 128, "max_size": 192})
    engine = TorchEngine(build_model(cfg))
    publish_frames(r, keys, "cam1", 5, size=(192, 128))
    publish_frames(r, keys, "cam2", 3, size=(160, 120))
    service = DetectorService(r, keys, engine, DetectorOptions(max_batch=4, det_thresh=0.0), "d1")
    while service.frames_done < 8:
        assert service.step() > 0
    msgs = published(r, keys)
    assert sorted((m.camera, m.seq) for m in msgs) == [("cam1", i) for i in range(1, 6)] + [
        ("cam2", i) for i in range(1, 4)
    ]
    m = msgs[0]
    assert m.model == "oim-r18-demo" and len(m.boxes) == len(m.scores) == len(m.crops) == m.embeddings.shape[0] > 0
    assert m.embeddings.shape[1] == 256
    np.testing.assert_allclose(np.linalg.norm(m.embeddings, axis=1), 1.0, atol=1e-4)
    assert Image.open(io.BytesIO(m.crops[0])).format == "JPEG"
    for cam in ("cam1", "cam2"):
        assert r.xpending(keys.frames(cam), Groups.DETECTOR)["pending"] == 0


def test_a_worker_killed_mid_batch_loses_no_frames_and_doubles_none(redis_server, r: redis.Redis, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    publish_frames(r, keys, "cam1", 10)
    publish_frames(r, keys, "cam2", 6)
    StreamConsumer(r, Groups.DETECTOR, [keys.frames("cam1"), keys.frames("cam2")], "setup").ensure_groups()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    victim = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "detector_worker.py"),
            str(redis_server.socket),
            keys.prefix,
            "victim",
            "3",
        ],
        env=env,
    )
    try:
        # Wait until the victim holds a batch (delivered, not acked) and has published part of its work at most.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = sum(
                r.xpending(keys.frames(c), Groups.DETECTOR)["pending"]
                for c in ("cam1", "cam2")
                if r.exists(keys.frames(c))
            )
            if held >= 4:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the victim never took a batch")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert len(published(r, keys)) < 16  # it died before finishing
    survivor = DetectorService(
        r, keys, SlowEngine(0), DetectorOptions(max_batch=4, det_thresh=0.0, claim_idle_ms=300), "survivor"
    )
    deadline = time.monotonic() + 30
    while len(published(r, keys)) < 16 and time.monotonic() < deadline:
        survivor.step()
    msgs = published(r, keys)
    assert sorted((m.camera, m.seq) for m in msgs) == [("cam1", i) for i in range(1, 11)] + [
        ("cam2", i) for i in range(1, 7)
    ]
    for cam in ("cam1", "cam2"):
        assert r.xpending(keys.frames(cam), Groups.DETECTOR)["pending"] == 0
