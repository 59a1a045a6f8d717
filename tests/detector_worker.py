"""A detector worker process for the crash test: the real service around a deliberately slow engine.

Run: python tests/detector_worker.py REDIS_SOCKET PREFIX CONSUMER SECONDS_PER_BATCH
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis

from detector.engine import Detections, Engine
from detector.service import DetectorOptions, DetectorService
from personsearch.streams import Keys


class SlowEngine(Engine):
    """One fixed person per frame, after a pause long enough to be killed mid-batch."""

    name = "slow"
    model_name = "test"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        time.sleep(self.seconds)
        return [fixed_detection(img) for img in images]

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def fixed_detection(image: np.ndarray) -> Detections:
    """A box in the frame's middle with a unit embedding derived from the frame's mean colour."""
    h, w = image.shape[:2]
    emb = np.zeros((1, 8), np.float32)
    emb[0, 0] = 1.0
    return Detections(np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]], np.float32), np.array([0.9], np.float32), emb)


if __name__ == "__main__":
    sock, prefix, consumer, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    service = DetectorService(
        redis.Redis(unix_socket_path=sock),
        Keys(prefix),
        SlowEngine(seconds),
        DetectorOptions(max_batch=4, max_wait_ms=20, det_thresh=0.0),
        consumer_name=consumer,
    )
    service.run(threading.Event())
