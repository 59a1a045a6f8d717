"""What the model sees on the demo's cameras: detection recall, false detections, and how far the watched person's
boxes stand from look-alikes and strangers in cosine to the watchlist photo.

Run: python bench/bench_demo_model.py [--weights W] [--cameras 2] [--seconds 40] [--fps 5] [--no-record]

The cameras are those of `personsearch demo` (same seed, size and renderer; rendered into ``--out`` once). The frames
the demo samples (``--fps`` of the 10 fps videos) go through ``engine.detect`` at the detector service's threshold.
A ground-truth person counts for recall when the demo would count it (at least 60% visible, box at least 48 px
tall); a detection matches the best ground-truth box it overlaps with IoU >= 0.5 (any person, any visibility);
detections matching nobody are false. Each matched detection's embedding is compared with the watchlist photo's
(the photo the demo enrols, embedded with its box), grouped by who is under the box: the watched identity, its
look-alikes (one attribute changed), everyone else. The fraction of each group's boxes at or above the calibrated
threshold says what the matcher sees frame by frame; the demo's alerts also need a consensus over a tracklet.

A second table measures the operator's false-match feedback (`personsearch alerts ack --false-match`): the
best-scoring detection of the first look-alike track that crosses the threshold is rejected for the watched person,
as acknowledging its alert would, and each group's share of boxes that still vote for the person (the matcher's rule,
`watchlist.matcher.vote`, with one person on the watchlist: cosine >= threshold and at least the margin above the
cosine to the rejection) is shown beside the share that voted before. The look-alike's own later boxes should stop
voting; the watched person's should not.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from detector.engine import load_engine
from detector.service import DetectorOptions
from detector.weights import DEMO_WEIGHTS, read_weights
from index.tracker import box_iou
from personsearch.demo import MIN_HEIGHT_PX, MIN_VISIBLE, DemoOptions
from training.synth.video import CameraVideoConfig, load_ground_truth, render_camera_set
from watchlist.matcher import MatcherOptions, vote
from watchlist.store import decode_photo

logger = logging.getLogger("bench_demo_model")

Matched = tuple[str, str, int, float, float, np.ndarray]  # group, camera, track, cosine, detection score, embedding


def camera_dir(args: argparse.Namespace) -> Path:
    """The demo's camera set (rendered once, as `personsearch demo` names and renders it)."""
    opt = DemoOptions(out=Path(args.out), seed=args.seed, cameras=args.cameras, seconds=args.seconds)
    cams = opt.out / f"cameras-s{opt.seed}-c{opt.cameras}-{opt.seconds:g}s-{opt.width}x{opt.height}"
    if not (cams / "cameras.json").is_file():
        config = CameraVideoConfig(width=opt.width, height=opt.height, fps=10, seconds=opt.seconds)
        render_camera_set(cams, opt.seed, cameras=opt.cameras, watch_identities=2, config=config, progress=True)
    return cams


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="weights file (default: the bundled demo model)")
    p.add_argument("--out", default="data/demo", help="where the demo's cameras are (rendered when missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--fps", type=float, default=5.0, help="frames per second sampled, as the demo's cameras")
    p.add_argument("--threshold", type=float, help="match threshold (default: the model's calibrated one)")
    p.add_argument(
        "--input-size", type=int, nargs=2, metavar=("SHORT", "CAP"), help="instead of the weights file's input size"
    )
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cams = camera_dir(args)
    meta = json.loads((cams / "cameras.json").read_text())
    watched = meta["identities"][0]
    weights = Path(args.weights) if args.weights else DEMO_WEIGHTS
    engine = load_engine("torch", weights, input_size=args.input_size)
    threshold = args.threshold if args.threshold is not None else read_weights(weights)["meta"].get("match_threshold")
    det_thresh = DetectorOptions().det_thresh
    image, _ = decode_photo((cams / "photos" / f"{watched['name']}.jpg").read_bytes())
    box = watched.get("photo_box") or (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
    query = engine.embed(image, np.array([box], np.float32))[0]

    found = wanted = false = 0
    matched: list[Matched] = []
    started, frames_seen = time.perf_counter(), 0
    for cam in meta["cameras"]:
        truth = load_ground_truth(cams / Path(cam["ground_truth"]).name)
        lookalike = {t.track for t in truth.tracks if t.lookalike_of == watched["name"]}
        step = max(1, round(truth.fps / args.fps))
        with av.open(str(cams / Path(cam["video"]).name)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index % step:
                    continue
                people = truth.frames[index].people
                det = engine.detect([frame.to_ndarray(format="rgb24")])[0]
                keep = det.scores >= det_thresh
                boxes, embeddings, det_scores = det.boxes[keep], det.embeddings[keep], det.scores[keep]
                gt = np.array([q.box for q in people], np.float32).reshape(-1, 4)
                ious = box_iou(gt, boxes)
                countable = [
                    i for i, q in enumerate(people) if q.visible >= MIN_VISIBLE and q.box[3] - q.box[1] >= MIN_HEIGHT_PX
                ]
                wanted += len(countable)
                found += sum(1 for i in countable if len(boxes) and ious[i].max() >= 0.5)
                for j in range(len(boxes)):
                    if len(gt) == 0 or ious[:, j].max() < 0.5:
                        false += 1
                        continue
                    q = people[int(ious[:, j].argmax())]
                    group = (
                        "watched"
                        if q.identity == watched["name"]
                        else "look-alikes"
                        if q.track in lookalike
                        else "others"
                    )
                    cosine = float(embeddings[j] @ query)
                    matched.append((group, cam["camera"], q.track, cosine, float(det_scores[j]), embeddings[j]))
                frames_seen += 1
        logger.info("%s: %d frames so far", cam["camera"], frames_seen)
    seconds = time.perf_counter() - started

    rows = []
    for group in ("watched", "look-alikes", "others"):
        v = np.array([m[3] for m in matched if m[0] == group])
        above = f"{(v >= threshold).mean():.3f}" if threshold is not None and len(v) else "n/a"
        stats = (
            [f"{v.mean():.3f}", f"{np.percentile(v, 10):.3f}", f"{np.percentile(v, 90):.3f}", f"{v.max():.3f}"]
            if len(v)
            else ["n/a"] * 4
        )
        rows.append([group, len(v), *stats, above])
    table = markdown_table(
        ["boxes under", "detections", "mean cosine", "p10", "p90", "max", f"share >= threshold {threshold}"], rows
    )
    recall = found / max(1, wanted)
    summary = (
        f"Model: {engine.model_name} ({args.weights or 'the bundled demo model'}); the demo's {args.cameras} cameras "
        f"(seed {args.seed}, {args.seconds:g} s, {frames_seen} frames at {args.fps:g} frames/s, {seconds:.0f} s); "
        f"detection threshold {det_thresh}. Detection recall {recall:.3f} ({found} of {wanted} people at least "
        f"{MIN_VISIBLE:.0%} visible and {MIN_HEIGHT_PX} px tall), {false} false detections. Cosine of matched "
        f"detections to the watchlist photo of {watched['name']}:"
    )
    feedback = false_match_table(matched, threshold, MatcherOptions())
    print(summary, table, feedback, sep="\n\n")
    if not args.no_record:
        record("demo-model", "Demo cameras: what the model sees", f"{summary}\n\n{table}\n\n{feedback}")
    return 0


def false_match_table(matched: list[Matched], threshold: float | None, opt: MatcherOptions) -> str:
    """Votes for the watched person before and after rejecting the first look-alike that would have alerted."""
    if threshold is None:
        return "False-match feedback: no threshold, nothing to reject."
    crossing = [m for m in matched if m[0] == "look-alikes" and m[3] >= threshold]
    if not crossing:
        return f"False-match feedback: no look-alike box reaches the threshold {threshold}; nothing to reject."
    camera, track = crossing[0][1], crossing[0][2]
    chosen = max((m for m in crossing if m[1:3] == (camera, track)), key=lambda m: m[3])
    rejection = chosen[5]
    rows = []
    for name, keep in (
        ("watched", lambda m: m[0] == "watched"),
        ("the rejected look-alike (same track)", lambda m: m[0] == "look-alikes" and m[1:3] == (camera, track)),
        ("other look-alikes", lambda m: m[0] == "look-alikes" and m[1:3] != (camera, track)),
        ("others", lambda m: m[0] == "others"),
    ):
        group = [m for m in matched if keep(m)]
        if not group:
            rows.append([name, 0, "n/a", "n/a", "n/a", "n/a"])
            continue
        score = np.array([m[3] for m in group])
        to_rejection = np.array([float(m[5] @ rejection) for m in group])
        thresholds = np.array([threshold], np.float32)
        no_rejection = np.array([-np.inf])
        before = np.array([vote(np.array([m[3]]), no_rejection, m[4], thresholds, opt) == 0 for m in group])
        after = np.array(
            [vote(np.array([m[3]]), np.array([r]), m[4], thresholds, opt) == 0 for m, r in zip(group, to_rejection)]
        )
        rows.append(
            [name, len(group), f"{score.mean():.3f}", f"{to_rejection.mean():.3f}", f"{before.mean():.3f}",
             f"{after.mean():.3f}"]
        )  # fmt: skip
    columns = ["boxes under", "detections", "mean cosine to the photo", "mean cosine to the rejection"]
    columns += ["voting before", "voting after the rejection"]
    return (
        f"False-match feedback: the detection of look-alike track {track} on {camera} with cosine {chosen[3]:.3f} "
        f"rejected for the watched person (margin {opt.margin}). Share of boxes voting for the watched person:\n\n"
        + markdown_table(columns, rows)
    )


if __name__ == "__main__":
    sys.exit(main())
