"""Detector throughput: frames/s of torch eager vs ONNX Runtime, two input sizes, batch 1 and 4, same weights.

Run: python bench/bench_detector.py [--weights W | --random-init CONFIG] [--device cpu] [--seconds 20] [--no-record]

Speed depends on the architecture, not on the weights' values: the heads run on a fixed number of proposals
(rpn_post_nms_top_n_test), so a seeded random network of the same config is a faithful stand-in when no trained
weights are at hand.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from detector.config import get_model_config
from detector.engine import Engine, OnnxRuntimeEngine, TorchEngine
from detector.export import export_onnx
from detector.model import build_model
from detector.weights import load_model

SIZES = [(480, 640), (720, 1280)]
BATCHES = [1, 4]


def synthetic_frames(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Rendered scenes of the synthetic world at the given size (real content, so detections happen)."""
    from training.synth.render import render_background  # the world's own renderer

    rng = np.random.default_rng(seed)
    h, w = size
    return [np.asarray(render_background(rng, w, h).image.convert("RGB")) for _ in range(n)]


def frames_per_second(engine: Engine, frames: list[np.ndarray], batch: int, seconds: float) -> float:
    """Run batches until ``seconds`` elapsed (after one warm-up batch); frames processed per second."""
    engine.detect(frames[:batch])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.detect(frames[done % len(frames) : done % len(frames) + batch] or frames[:batch])
        done += batch
    return done / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="weights file (default: the bundled demo model)")
    src.add_argument("--random-init", metavar="CONFIG", help="a seeded random network of this model config instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per cell")
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    if args.random_init:
        torch.manual_seed(0)
        model = build_model(get_model_config(args.random_init)).eval()
        source = f"{args.random_init}, seeded random weights"
    else:
        model = load_model(Path(args.weights) if args.weights else None)
        source = f"{model.cfg.name} weights from {args.weights or 'the bundled demo model'}"
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, Path(tmp))
        engines: list[Engine] = [TorchEngine(model, args.device), OnnxRuntimeEngine(Path(tmp))]
        rows = []
        for size in SIZES:
            frames = synthetic_frames(8, size)
            for batch in BATCHES:
                fps = {e.name: frames_per_second(e, frames, batch, args.seconds) for e in engines}
                rows.append(
                    [
                        f"{size[1]}x{size[0]}",
                        batch,
                        f"{fps['torch']:.2f}",
                        f"{fps['onnxruntime']:.2f}",
                        f"{fps['onnxruntime'] / fps['torch']:.2f}x",
                    ]
                )
                print(rows[-1], flush=True)
        providers = ", ".join(engines[1].providers)  # type: ignore[attr-defined]
    table = markdown_table(["input (WxH)", "batch", "torch eager frames/s", "onnxruntime frames/s", "speed-up"], rows)
    print(table)
    if not args.no_record:
        body = (
            f"Model: {source} (input resized by the model to shorter side {model.cfg.min_size}, "
            f"longer at most {model.cfg.max_size}). ONNX Runtime providers: {providers}. torch threads: "
            f"{torch.get_num_threads()}. Goal: onnxruntime >= 1.3x torch eager at parity.\n\n{table}"
        )
        record("detector", "Detector: torch eager vs ONNX Runtime", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
