"""The demo model's whole recipe in one command: `personsearch recipe --data data/synth`.

Runs the four steps of docs/model-card.md for each loss asked for (OIM and the Softmax baseline by default), from the
same two pre-training stages, then evaluates every final network, and the untrained one, on the test split:

1. ``pretrain_backbone``: ResNet classifies identity crops (the stand-in for ImageNet initialisation);
2. ``pretrain_roi``: the same network classifies identities through the joint network's RoI path;
3. joint training (``<loss>-r18-synth``), from step 2's weights;
4. fine-tuning (``oim-r18-synth-ft`` with the loss swapped), from step 3's whole network.

``scale`` multiplies every step's iterations and learning-rate milestones (1.0: the recipe as run on the CPU; a GPU
affords 10 or more). Every step is skipped when its output exists, so an interrupted recipe resumes where it stopped
(the trainer itself resumes mid-run from its last checkpoint). The comparison goes to ``<runs>/recipe.json`` and is
printed as a table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import load_train_config

logger = logging.getLogger(__name__)

LOSSES = ("oim", "softmax")


@dataclass(frozen=True)
class RecipeSteps:
    """Iterations of each step at scale 1 (docs/model-card.md); milestones are where the learning rate drops."""

    crops: int = 600
    roi: int = 700
    joint: int = 1400
    joint_milestone: int = 1100
    finetune: int = 2800
    finetune_milestone: int = 2200

    def scaled(self, scale: float) -> RecipeSteps:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return RecipeSteps(**{k: max(1, round(v * scale)) for k, v in self.__dict__.items()})


def _train(config: str, overrides: dict[str, Any], final: Path, progress: bool) -> float | None:
    """Run one training (resuming a partial run) unless its final weights exist; returns the seconds it took."""
    from training.engine import build_trainer

    if final.is_file():
        logger.info("recipe: %s exists, skipping", final)
        return None
    start = time.perf_counter()
    build_trainer(load_train_config(config, overrides), resume=True, progress=progress).train()
    return time.perf_counter() - start


def _evaluate(
    weights: Path, data: Path, gallery_size: int, device: str, progress: bool, untrained: bool = False
) -> dict[str, Any]:
    """Search and detection figures of ``weights`` on the test split, cached beside them (``eval-g<N>.json``).

    Two protocols: the detector's boxes (``mAP`` ... ``det_recall``, the paper's table) and the annotated boxes
    (``gt_mAP``, ``gt_top1``: identification alone, ``personsearch eval --gt-boxes``), so a loss that helps the
    identity feature but costs detection shows as such.
    ``untrained``: the same architecture with seeded random weights instead (the model card's baseline).
    """
    import torch

    from detector.engine import TorchEngine
    from detector.model import build_model
    from detector.weights import load_model
    from training.datasets.cuhk_sysu import CUHKSYSU
    from training.inference import evaluate_engine

    cache = weights.parent / f"eval{'-untrained' if untrained else ''}-g{gallery_size}.json"
    if cache.is_file() and cache.stat().st_mtime >= weights.stat().st_mtime:
        cached = dict(json.loads(cache.read_text()))
        # A cache written before the annotated-box protocol, or for another test split, is recomputed.
        if "gt_mAP" in cached and cached.get("data", str(data)) == str(data):
            return cached
    model = load_model(weights, device)
    if untrained:
        torch.manual_seed(0)
        model = build_model(model.cfg).to(device).eval()
    engine, dataset = TorchEngine(model, device), CUHKSYSU(data)
    (result,) = evaluate_engine(engine, dataset, (gallery_size,), progress=progress)
    (gt,) = evaluate_engine(engine, dataset, (gallery_size,), progress=progress, gt_boxes=True)
    out = {k: result[k] for k in ("mAP", "top1", "top5", "top10", "det_ap", "det_recall", "gallery_size")}
    out.update(gt_mAP=gt["mAP"], gt_top1=gt["top1"], data=str(data))
    cache.write_text(json.dumps(out, indent=2))
    return out


def run_recipe(
    data: Path,
    runs: Path,
    losses: tuple[str, ...] = LOSSES,
    scale: float = 1.0,
    device: str = "auto",
    gallery_size: int = 100,
    progress: bool = True,
    train_overrides: dict[str, Any] | None = None,
    train_data: Path | None = None,
) -> dict[str, Any]:
    """Steps 1-4 for every loss in ``losses``, then the evaluation; returns (and saves) the comparison.

    ``train_overrides``: dotted training-config keys applied to steps 3 and 4 (e.g. ``solver.images_per_batch``).
    ``train_data``: train every step on this dataset instead of ``data`` (e.g. a synthetic world with many more
    identities); the networks are still evaluated on ``data``'s test split.
    """
    from training.pretrain import pretrain_backbone, pretrain_roi

    unknown = set(losses) - set(LOSSES)
    if unknown or not losses:
        raise ValueError(f"losses must be among {', '.join(LOSSES)}; got {', '.join(losses) or 'none'}")
    train_root = data if train_data is None else train_data
    for root in {data, train_root}:
        if not (root / "annotation").is_dir():
            raise FileNotFoundError(f"{root} is not a dataset in the CUHK-SYSU layout (make one: personsearch synth)")
    steps = RecipeSteps().scaled(scale)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Timings of steps an earlier run of the same recipe trained (they are skipped now) are kept.
    previous = _previous_summary(runs, data, steps, train_root)
    seconds: dict[str, float] = dict(previous.get("seconds", {}))
    crops, roi = runs / "pretrain" / "r18-crops.pt", runs / "pretrain" / "r18-roi.pt"
    for name, out, make in (
        ("crops", crops, lambda: pretrain_backbone(train_root, crops, steps=steps.crops, progress=progress)),
        ("roi", roi, lambda: pretrain_roi(train_root, roi, crops, steps=steps.roi, progress=progress)),
    ):
        if out.is_file():
            logger.info("recipe: %s exists, skipping", out)
            continue
        start = time.perf_counter()
        make()
        seconds[f"pretrain_{name}"] = round(time.perf_counter() - start, 1)
    common = {**(train_overrides or {}), "data.root": str(train_root), "device": device}
    finals: dict[str, Path] = {}
    for loss in losses:
        joint, finetune = runs / f"{loss}-r18-synth", runs / f"{loss}-r18-synth-ft"
        stages = (  # (stage, config, run folder, what it starts from, iterations, milestone)
            ("joint", f"{loss}-r18-synth", joint, {"model_overrides.backbone_weights": str(roi)}, steps.joint,
             steps.joint_milestone),
            ("finetune", "oim-r18-synth-ft", finetune,
             {"init_weights": str(joint / "model_final.pt"), "loss.kind": loss}, steps.finetune,
             steps.finetune_milestone),
        )  # fmt: skip
        for stage, config, out, start_from, iters, milestone in stages:
            overrides = {
                **common,
                **start_from,
                "output_dir": str(out),
                "solver.max_iters": iters,
                "solver.steps": [milestone],
                "checkpoint_period": max(1, iters // 4),
                "eval_period": -1,
            }
            took = _train(config, overrides, out / "model_final.pt", progress)
            if took is not None:
                seconds[f"{loss}_{stage}"] = round(took, 1)
        finals[loss] = finetune / "model_final.pt"
    # Losses finished by an earlier run (`--losses oim`, then `--losses softmax`) join the comparison.
    for loss in LOSSES:
        if loss not in finals and (runs / f"{loss}-r18-synth-ft" / "model_final.pt").is_file():
            finals[loss] = runs / f"{loss}-r18-synth-ft" / "model_final.pt"
    finals = {loss: finals[loss] for loss in LOSSES if loss in finals}
    first = next(iter(finals.values()))
    results = {"untrained": _evaluate(first, data, gallery_size, device, progress, untrained=True)}
    results.update({loss: _evaluate(path, data, gallery_size, device, progress) for loss, path in finals.items()})
    summary = {
        "data": str(data),
        "train_data": str(train_root),
        "scale": scale,
        "steps": steps.__dict__,
        "device": device,
        "seconds": seconds,
        "results": results,
        "weights": {loss: str(path) for loss, path in finals.items()},
    }
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "recipe.json").write_text(json.dumps(summary, indent=2))
    return summary


def _previous_summary(runs: Path, data: Path, steps: RecipeSteps, train_data: Path) -> dict[str, Any]:
    """``<runs>/recipe.json`` when it describes the same data and step counts, else an empty dict."""
    try:
        summary = dict(json.loads((runs / "recipe.json").read_text()))
    except (OSError, ValueError):
        return {}
    same = summary.get("data") == str(data) and summary.get("train_data", str(data)) == str(train_data)
    return summary if same and summary.get("steps") == steps.__dict__ else {}


def format_comparison(summary: dict[str, Any]) -> str:
    """The recipe's results as a markdown table, one row per network (``gt_*``: on the annotated boxes)."""
    keys = ("mAP", "top1", "top5", "top10", "det_ap", "det_recall", "gt_mAP", "gt_top1")
    lines = ["| network | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, res in summary["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{res[k]:.3f}" if k in res else "-" for k in keys) + " |")
    return "\n".join(lines)
