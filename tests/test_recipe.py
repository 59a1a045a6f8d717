"""The demo model's recipe in one command: every step runs, both losses are compared, a rerun skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.weights import read_weights
from training.recipe import RecipeSteps, format_comparison, run_recipe

# A few iterations of each step, on a smaller input: the recipe's plumbing, not its figures.
SCALE = 0.0015  # crops 1, roi 1, joint 2 (milestone 2), fine-tune 4 (milestone 3) iterations
SMALL = {
    "solver.images_per_batch": 2,
    "solver.warmup_iters": 1,
    "data.num_workers": 0,
    "model_overrides.min_size": 192,
    "model_overrides.max_size": 256,
    # The res5 head runs once per proposal: fewer of them is most of what makes a test-sized step cheap.
    "model_overrides.rpn_post_nms_top_n_train": 48,
    "model_overrides.rpn_post_nms_top_n_test": 16,
    "model_overrides.box_batch_size_per_image": 16,
}


def test_recipe_runs_every_step_for_both_losses_and_resumes_by_skipping(tiny_world: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    kwargs = dict(scale=SCALE, device="cpu", gallery_size=50, progress=False, train_overrides=SMALL)
    first = run_recipe(tiny_world, runs, losses=("oim",), **kwargs)  # type: ignore[arg-type]
    assert set(first["results"]) == {"untrained", "oim"}
    # The baseline in a second run: the comparison holds both losses, and the first run's timings stay.
    summary = run_recipe(tiny_world, runs, losses=("softmax",), **kwargs)  # type: ignore[arg-type]
    assert summary["steps"] == RecipeSteps().scaled(SCALE).__dict__
    for path in ("pretrain/r18-crops.pt", "pretrain/r18-roi.pt", "oim-r18-synth/model_final.pt",
                 "softmax-r18-synth/model_final.pt", "oim-r18-synth-ft/model_final.pt",
                 "softmax-r18-synth-ft/model_final.pt"):  # fmt: skip
        assert (runs / path).is_file(), path
    # Step 4 fine-tuned step 3's network with its own loss.
    config = read_weights(runs / "softmax-r18-synth-ft" / "model_final.pt")["meta"]["train_config"]
    assert config["loss"]["kind"] == "softmax" and config["init_weights"].endswith("softmax-r18-synth/model_final.pt")
    assert set(summary["results"]) == {"untrained", "oim", "softmax"}
    assert summary["results"]["oim"] == first["results"]["oim"]
    for result in summary["results"].values():
        assert set(result) >= {"mAP", "top1", "top5", "top10", "det_ap", "det_recall", "gt_mAP", "gt_top1"}
        assert result["gallery_size"] == 50
    assert json.loads((runs / "recipe.json").read_text())["results"] == summary["results"]
    table = format_comparison(summary)
    assert table.count("\n") == 4 and "| softmax |" in table and "gt_mAP" in table
    assert set(summary["seconds"]) == {"pretrain_crops", "pretrain_roi", "oim_joint", "oim_finetune",
                                       "softmax_joint", "softmax_finetune"}  # fmt: skip
    assert summary["seconds"]["oim_joint"] == first["seconds"]["oim_joint"]
    # Run again: every step's output is there, so nothing is trained twice and the figures are the same.
    finals = sorted(runs.glob("*/model_final.pt")) + sorted(runs.glob("pretrain/*.pt"))
    stamps = [p.stat().st_mtime_ns for p in finals]
    again = run_recipe(tiny_world, runs, **kwargs)  # type: ignore[arg-type]
    assert again["results"] == summary["results"]  # the evaluations are cached beside the weights too
    assert again["seconds"] == summary["seconds"]
    assert [p.stat().st_mtime_ns for p in finals] == stamps


def test_recipe_refuses_unknown_losses_and_a_missing_dataset(tmp_path: Path, tiny_world: Path) -> None:
    with pytest.raises(ValueError, match="losses must be among"):
        run_recipe(tiny_world, tmp_path, losses=("triplet",))
    with pytest.raises(FileNotFoundError, match="CUHK-SYSU layout"):
        run_recipe(tmp_path / "nothing", tmp_path)
    with pytest.raises(ValueError, match="scale"):
        RecipeSteps().scaled(0)


def test_recipe_trains_on_train_data_and_scores_on_data(tiny_world: Path, tmp_path: Path) -> None:
    """`personsearch recipe --train-data`: every step trains on one world, the evaluation uses the other's split."""
    from training.synth.world import PRESETS, generate_world

    other = tmp_path / "train-world"
    generate_world(other, seed=1, config=PRESETS["tiny"].model_copy(update={"train_identities": 6}), progress=False)
    runs = tmp_path / "runs"
    kwargs = dict(scale=SCALE, device="cpu", gallery_size=50, progress=False, train_overrides=SMALL)
    summary = run_recipe(tiny_world, runs, losses=("oim",), train_data=other, **kwargs)  # type: ignore[arg-type]
    assert summary["data"] == str(tiny_world) and summary["train_data"] == str(other)
    for run in ("oim-r18-synth", "oim-r18-synth-ft"):
        config = read_weights(runs / run / "model_final.pt")["meta"]["train_config"]
        assert config["data"]["root"] == str(other), run
    crops = json.loads((runs / "pretrain" / "r18-crops.json").read_text())
    assert crops["train_identities"] + crops["heldout_identities"] == 6, "pre-trained on the 6 identities of other"
    assert summary["results"]["oim"]["gallery_size"] == 50
    cache = json.loads((runs / "oim-r18-synth-ft" / "eval-g50.json").read_text())
    assert cache["data"] == str(tiny_world)
    with pytest.raises(FileNotFoundError, match="CUHK-SYSU layout"):
        run_recipe(tiny_world, tmp_path / "r2", train_data=tmp_path / "nothing")
