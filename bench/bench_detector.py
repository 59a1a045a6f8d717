"""Detector throughput: frames/s of torch eager vs ONNX Runtime, two input sizes, batch 1 and 4, same weights.

Run: python bench/bench_detector.py [--weights W | --random-init CONFIG] [--device cpu] [--seconds 20] [--no-record]

Frames: a synthetic camera at each size (people walking through a street scene), rendered and H.264-decoded.
The bundled demo model is the default. Speed depends mostly on the architecture, not on the weights' values (the
heads run on at most rpn_post_nms_top_n_test proposals), so a seeded random network of the same config stands in
when no trained weights are at hand; a random RPN's proposals survive NMS differently, so prefer trained weights.
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
ROUNDS = 4  # alternating turns per engine and cell


def synthetic_frames(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of a synthetic camera (people walking through a street scene) at the given size, decoded from
    the H.264 video the world's renderer writes, as a camera would deliver them."""
    import av

    from training.synth.video import CameraVideoConfig, render_camera_set

    h, w = size
    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        config = CameraVideoConfig(width=w, height=h, fps=5, seconds=n / 5 + 1)
        video = render_camera_set(Path(tmp), seed, cameras=1, watch_identities=1, config=config, progress=False)
        with av.open(str(video.cameras[0].video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # Skip the first second: people are still entering the scene.
    return frames[5 : 5 + n]


def timed_batches(engine: Engine, frames: list[np.ndarray], batch: int, seconds: float) -> tuple[int, float]:
    """Run batches until ``seconds`` elapsed: (frames processed, seconds taken)."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.detect(frames[done % len(frames) : done % len(frames) + batch] or frames[:batch])
        done += batch
    return done, time.perf_counter() - start


def frames_per_second(
    engines: list[Engine], frames: list[np.ndarray], batch: int, seconds: float, rounds: int = ROUNDS
) -> dict[str, float]:
    """Frames/s of each engine over ``seconds``, taken in ``rounds`` turns that alternate between the engines, so
    that drifting background load on the machine hits them alike (after one warm-up batch each)."""
    done = dict.fromkeys((e.name for e in engines), 0)
    spent = dict.fromkeys(done, 0.0)
    for engine in engines:
        engine.detect(frames[:batch])
    for _ in range(rounds):
        for engine in engines:
            n, t = timed_batches(engine, frames, batch, seconds / rounds)
            done[engine.name] += n
            spent[engine.name] += t
    return {name: done[name] / spent[name] for name in done}


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
                fps = frames_per_second(engines, frames, batch, args.seconds)
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
            f"{torch.get_num_threads()}. Each cell: {args.seconds:g} s per engine in {ROUNDS} alternating turns, "
            f"on {len(frames)} rendered camera frames with people. Goal: onnxruntime >= 1.3x torch eager at "
            f"parity.\n\n{table}"
        )
        record("detector", "Detector: torch eager vs ONNX Runtime", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
