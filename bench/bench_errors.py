"""Identification errors on a synthetic world: what outranks the true match, and which pairs fail.

Run: python bench/bench_errors.py [--data data/synth] [--model LABEL=WEIGHTS ...] [--results LABEL=NPZ ...]
     [--gallery-size 100] [--no-record]

Each model embeds every annotated person of the test images and every query, as `personsearch eval --gt-boxes` does
(identification alone: no detector), or a results file saved that way (`--save-results`) is read instead. The
world's `world.json` (written by `personsearch synth`) says what each gallery box is: the query's identity, another
labeled identity, a look-alike of the query (all attributes but one copied), a look-alike of someone else, or a
stranger; and how visible and how tall each person is. Three tables:

1. mAP and top-1 with the full galleries, without the query's look-alikes, and without any look-alike: how much of
   the loss look-alikes explain. Beside them the mean cosine to the query of its true matches, of its look-alikes
   and of everyone else.
2. Every (query, true match) pair by condition: mean cosine, and the share of pairs whose match outscores every
   other box of the gallery. A box is occluded at most 70% visible (the Occlusion subset's rule) and small under
   80 px tall.
3. The query's look-alikes that outscore its best true match, by the attribute they change.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from detector.engine import load_engine
from detector.weights import DEMO_WEIGHTS
from training.datasets.cuhk_sysu import CUHKSYSU
from training.evaluation import average_precision, load_results
from training.inference import evaluate_engine
from training.synth.render import LOOKALIKE_ATTRIBUTES
from training.synth.world import SynthConfig, load_world_truth

logger = logging.getLogger("bench_errors")

OCCLUDED_VISIBLE = SynthConfig().occlusion_visible_max  # the Occlusion subset's rule: at most 70% visible
SMALL_PX = 80
CLEAR_PX = 100
CATEGORIES = ("match", "look-alike of the query", "other look-alike", "other labeled", "stranger")


def _labelled(spec: str) -> tuple[str, str]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {spec!r}")
    return label, path


def gt_box_results(
    data: Path, weights: str, gallery_size: int, out: Path, input_size: tuple[int, int] | None = None
) -> Path:
    """Embed the annotated boxes and queries with ``weights`` (the --gt-boxes protocol) into a results file."""
    engine = load_engine("torch", weights=Path(weights), device="cpu", input_size=input_size)
    res = evaluate_engine(
        engine, CUHKSYSU(data), gallery_sizes=(gallery_size,), gt_boxes=True, results_path=out, progress=True
    )
    logger.info("%s: annotated-box mAP %.3f top-1 %.3f", weights, res[0]["mAP"], res[0]["top1"])
    return out


def analyse(data: Path, results: Path, gallery_size: int) -> dict:
    """Per-query and per-pair figures for one results file."""
    dataset = CUHKSYSU(data)
    truth = load_world_truth(data)
    annotated = {s.name: s.boxes for s in dataset.test_scenes()}
    loaded = load_results(results)
    per_image, qemb = loaded.per_image(), loaded.query_embeddings
    ap: dict[str, list[float]] = {"full": [], "no query look-alikes": [], "no look-alikes": []}
    top1: dict[str, list[float]] = {k: [] for k in ap}
    cos: dict[str, list[float]] = defaultdict(list)
    pairs: list[tuple[float, bool, float, float, float, float]] = []  # cos, beats all, q vis, q h, m vis, m h
    by_attr: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for qi, q in enumerate(dataset.queries(gallery_size)):
        qbox = [t for t, b in zip(truth[q.name], annotated[q.name]) if np.allclose(b, q.box)]
        if len(qbox) != 1 or qbox[0].identity != q.idname:
            raise ValueError(f"{q.name}: the query box of {q.idname} is not in world.json; wrong world?")
        qt, qh = qbox[0], float(q.box[3] - q.box[1])
        sims, cats, heights, vis, attrs = [], [], [], [], []
        for g in q.gallery:
            boxes, _, emb = per_image[g.name]
            if len(boxes) != len(truth[g.name]) or not np.allclose(boxes, annotated[g.name]):
                raise ValueError(f"{results}: {g.name} does not hold the annotated boxes; save it with --gt-boxes")
            for t, box, s in zip(truth[g.name], boxes, emb @ qemb[qi]):
                if t.identity == q.idname:
                    cat = "match"
                elif t.identity is not None:
                    cat = "other labeled"
                elif t.lookalike_of == q.idname:
                    cat = "look-alike of the query"
                elif t.lookalike_of is not None:
                    cat = "other look-alike"
                else:
                    cat = "stranger"
                sims.append(float(s))
                cats.append(cat)
                heights.append(float(box[3] - box[1]))
                vis.append(t.visible)
                attrs.append(t.changed)
        s, c = np.array(sims), np.array(cats)
        y = c == "match"
        masks = {
            "full": np.ones(len(s), bool),
            "no query look-alikes": c != "look-alike of the query",
            "no look-alikes": (c != "look-alike of the query") & (c != "other look-alike"),
        }
        for k, m in masks.items():
            ap[k].append(average_precision(y[m], s[m]))
            top1[k].append(bool(y[m][np.argmax(s[m])]))
        for cat in CATEGORIES:
            cos[cat].extend(s[c == cat].tolist())
        best_neg = s[~y].max() if (~y).any() else -np.inf
        best_match = s[y].max()
        for j in np.flatnonzero(y):
            pairs.append((s[j], s[j] > best_neg, qt.visible, qh, vis[j], heights[j]))
        for j in np.flatnonzero(c == "look-alike of the query"):
            by_attr[str(attrs[j])][0] += int(s[j] > best_match)
            by_attr[str(attrs[j])][1] += 1
    return {
        "queries": len(top1["full"]),
        "mAP": {k: float(np.mean(v)) for k, v in ap.items()},
        "top1": {k: float(np.mean(v)) for k, v in top1.items()},
        "cos": {k: float(np.mean(v)) if v else float("nan") for k, v in cos.items()},
        "pairs": np.array(pairs, dtype=np.float64).reshape(-1, 6),
        "by_attr": dict(by_attr),
    }


def pair_rows(pairs: np.ndarray) -> list[tuple[str, np.ndarray]]:
    cos, _beats, qv, qh, mv, mh = pairs.T
    clear = (qv > OCCLUDED_VISIBLE) & (mv > OCCLUDED_VISIBLE) & (qh >= CLEAR_PX) & (mh >= CLEAR_PX)
    return [
        ("all", np.ones(len(cos), bool)),
        (f"both clear (over {OCCLUDED_VISIBLE:.0%} visible, at least {CLEAR_PX} px)", clear),
        ("query occluded", qv <= OCCLUDED_VISIBLE),
        ("match occluded", mv <= OCCLUDED_VISIBLE),
        (f"query small (under {SMALL_PX} px)", qh < SMALL_PX),
        (f"match small (under {SMALL_PX} px)", mh < SMALL_PX),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synth", help="a synthetic world (with its world.json)")
    p.add_argument("--model", type=_labelled, action="append", default=[], help="LABEL=WEIGHTS, repeatable")
    p.add_argument("--results", type=_labelled, action="append", default=[], help="LABEL=NPZ saved with --gt-boxes")
    p.add_argument("--gallery-size", type=int, default=100)
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("SHORT", "CAP"), help="run every --model at this input size"
    )
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    models = args.model or ([] if args.results else [("bundled demo model", str(DEMO_WEIGHTS))])
    found: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, weights) in enumerate(models):
            npz = gt_box_results(data, weights, args.gallery_size, Path(tmp) / f"m{i}.npz", args.input_size)
            found.append((label, analyse(data, npz, args.gallery_size)))
    for label, npz in args.results:
        found.append((label, analyse(data, Path(npz), args.gallery_size)))

    t1 = markdown_table(
        [
            "model",
            "mAP",
            "mAP without the query's look-alikes",
            "mAP without any look-alike",
            "top-1",
            "top-1 without any look-alike",
            *[f"mean cosine: {c}" for c in CATEGORIES],
        ],
        [
            [
                label,
                f"{r['mAP']['full']:.3f}",
                f"{r['mAP']['no query look-alikes']:.3f}",
                f"{r['mAP']['no look-alikes']:.3f}",
                f"{r['top1']['full']:.3f}",
                f"{r['top1']['no look-alikes']:.3f}",
                *[f"{r['cos'][c]:.3f}" for c in CATEGORIES],
            ]
            for label, r in found
        ],
    )
    t2_rows = []
    for label, r in found:
        for name, m in pair_rows(r["pairs"]):
            n = int(m.sum())
            cos = f"{r['pairs'][m, 0].mean():.3f}" if n else "-"
            beats = f"{r['pairs'][m, 1].mean():.2f}" if n else "-"
            t2_rows.append([label, name, n, cos, beats])
    t2 = markdown_table(
        ["model", "(query, true match) pairs", "pairs", "mean cosine", "match above every other box"], t2_rows
    )
    t3 = markdown_table(
        ["attribute the look-alike changes", *[label for label, _ in found]],
        [
            [a, *[f"{r['by_attr'].get(a, [0, 0])[0]} of {r['by_attr'].get(a, [0, 0])[1]}" for _, r in found]]
            for a in LOOKALIKE_ATTRIBUTES
        ],
    )
    q = found[0][1]["queries"] if found else 0
    summary = (
        f"World `{data}`, TestG{args.gallery_size} ({q} queries), annotated boxes (identification alone). "
        f"Occluded: at most {OCCLUDED_VISIBLE:.0%} of the person visible; small: under {SMALL_PX} px tall."
    )
    body = f"{summary}\n\n{t1}\n\n{t2}\n\nThe query's look-alikes that outscore its best true match:\n\n{t3}"
    print(body)
    if not args.no_record:
        record("errors", "Identification errors: what outranks the true match", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
