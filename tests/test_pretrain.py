"""Backbone pre-training on identity crops, and the joint network starting from its weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from detector.config import ModelConfig, get_model_config
from detector.model import build_model
from detector.weights import load_model, save_weights
from training.pretrain import identity_crops, pretrain_backbone, pretrain_roi


def test_crops_are_the_labeled_training_boxes(tiny_world: Path) -> None:
    crops, labels = identity_crops(tiny_world, size=(64, 32))
    assert crops.shape[1:] == (3, 64, 32) and crops.dtype == torch.uint8
    assert len(crops) == len(labels) > 0 and int(labels.min()) >= 0


def test_pretrained_backbone_initialises_the_joint_network(tiny_world: Path, tmp_path: Path) -> None:
    out = tmp_path / "r18.pt"
    summary = pretrain_backbone(tiny_world, out, steps=3, batch_size=8, progress=False)
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["steps"] == 3
    assert 0.0 <= summary["heldout_nn_accuracy_after"] <= 1.0
    state = torch.load(out, weights_only=True)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "backbone_weights": str(out)})
    model = build_model(cfg)
    torch.testing.assert_close(model.backbone.body.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(model.roi_heads.box_head.trunk.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    # A saved model carries every weight itself: loading it needs no backbone file.
    saved = save_weights(model, tmp_path / "joint.pt")
    out.unlink()
    assert load_model(saved).cfg.backbone_weights is None


def test_the_roi_stage_trains_the_joint_networks_identity_path_and_saves_a_backbone(
    tiny_world: Path, tmp_path: Path
) -> None:
    crops = tmp_path / "r18.pt"
    pretrain_backbone(tiny_world, crops, steps=2, batch_size=8, progress=False)
    out = tmp_path / "r18-roi.pt"
    summary = pretrain_roi(tiny_world, out, crops, steps=2, images_per_batch=2, jitters=1, progress=False)
    assert summary["stage"] == "roi" and 0.0 <= summary["heldout_roi_nn_accuracy_after"] <= 1.0
    before, after = torch.load(crops, weights_only=True), torch.load(out, weights_only=True)
    assert set(after) == {k for k in before if not k.startswith("fc.")}  # a ResNet without its classifier
    assert not torch.equal(before["layer3.0.conv1.weight"], after["layer3.0.conv1.weight"])  # trained
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "backbone_weights": str(out)})
    model = build_model(cfg)
    torch.testing.assert_close(model.roi_heads.box_head.trunk.layer4[1].conv2.weight, after["layer4.1.conv2.weight"])
