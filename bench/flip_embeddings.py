"""Experiment: average each box's embedding with its mirror image's (test-time flip), scored on a synthetic world.

Not a product feature: the model card ("Flipped-image averaging of the embeddings") records what it measured and
why the engines do not do it. With ``--gallery annotated`` every embedding goes through ``Engine.embed``, so query
and gallery boxes are both averaged; with ``--gallery detected`` the gallery is the detector's own output and only
the queries are averaged (as watchlist photos and search queries would be).

    python bench/flip_embeddings.py --weights detector/weights/oim-r18-demo.pt --data data/synth-test200 \
        --gallery annotated [--no-flip] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table

from detector.engine import Engine, load_engine
from training.datasets.cuhk_sysu import CUHKSYSU
from training.inference import evaluate_engine


def flip_averaged(engine: Engine) -> None:
    """Make ``engine.embed`` return the normalised mean of each box's embedding and its mirror image's."""
    plain = engine.embed

    def embed(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        width = image.shape[1]
        mirrored = boxes.copy()
        mirrored[:, 0] = width - boxes[:, 2]
        mirrored[:, 2] = width - boxes[:, 0]
        both = plain(image, boxes) + plain(np.ascontiguousarray(image[:, ::-1]), mirrored)
        return both / np.linalg.norm(both, axis=1, keepdims=True)

    engine.embed = embed  # type: ignore[method-assign]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, default=None, help="weights file (default: the bundled demo model)")
    p.add_argument("--data", type=Path, default=Path("data/synth-test200"))
    p.add_argument("--gallery", choices=("annotated", "detected"), default="annotated")
    p.add_argument("--gallery-size", type=int, default=100)
    p.add_argument("--no-flip", action="store_true", help="score the plain embeddings (the baseline)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    engine = load_engine("torch", args.weights)
    if not args.no_flip:
        flip_averaged(engine)
    results = evaluate_engine(
        engine,
        CUHKSYSU(args.data),
        (args.gallery_size,),
        (None, "occlusion", "resolution"),
        gt_boxes=args.gallery == "annotated",
        progress=False,
    )
    keys = ("mAP", "top1", "top5", "top10", "det_ap", "det_recall")
    rows = [[r["subset"], *(f"{float(r[k]):.4f}" for k in keys)] for r in results]
    print(markdown_table(["subset", "mAP", "top-1", "top-5", "top-10", "det AP", "det recall"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
