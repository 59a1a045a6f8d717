"""The OIM joint detect-and-embed network (Xiao et al., CVPR 2017) built from torchvision's detection components.

    image -> transform (normalise, resize) -> stem (ResNet conv1..conv4_x, stride 16)
          -> pedestrian proposal net (RPN)  -> RoIAlign 14x14 on the stem
          -> identification net (ResNet conv5_x + global average pool)
          -> person/background classifier + box regression, and the 256-d L2-normalised id-feat.

The network defines the objective's inputs, not the objective: in training it returns the detection losses and the
id-feats of the sampled foreground proposals with their identity labels; ``training.losses`` turns those into the
OIM (or Softmax) loss. Identity labels follow ``training.datasets.records``: 0..L-1 labeled, -1 unlabeled.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import ModelConfig

logger = logging.getLogger(__name__)

FEATURE_KEY = "res4"
# Label given to identity slots of background proposals; they never reach the identification loss.
BACKGROUND_PID = -2


@dataclass
class TrainingOutput:
    """What one training forward pass yields."""

    losses: dict[str, Tensor]  # detection losses: loss_objectness, loss_rpn_box_reg, loss_classifier, loss_box_reg
    id_features: Tensor  # (R, D) L2-normalised id-feats of foreground proposals
    id_labels: Tensor  # (R,) int64 identity labels (0..L-1 labeled, -1 unlabeled)


def _freeze_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a FrozenBatchNorm2d carrying the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_bn(child)
    return module


def build_resnet_parts(cfg: ModelConfig) -> tuple[nn.Sequential, nn.Sequential, int, int]:
    """Split a torchvision ResNet into the stem (conv1..conv4_x) and the identification trunk (conv5_x + GAP).

    Returns (stem, trunk, stem_channels, trunk_channels).
    """
    weights = None
    if cfg.pretrained == "imagenet":
        weights = torchvision.models.get_model_weights(cfg.backbone).DEFAULT  # downloads on first use
    resnet = torchvision.models.get_model(cfg.backbone, weights=weights)
    if cfg.backbone_weights:
        state = torch.load(cfg.backbone_weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier of pre-training
        missing, unexpected = resnet.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("fc.")]:
            raise ValueError(f"{cfg.backbone_weights} is not a {cfg.backbone} state dict: {unexpected or missing}")
    stem = nn.Sequential(
        OrderedDict(
            conv1=resnet.conv1,
            bn1=resnet.bn1,
            relu=resnet.relu,
            maxpool=resnet.maxpool,
            layer1=resnet.layer1,
            layer2=resnet.layer2,
            layer3=resnet.layer3,
        )
    )
    if cfg.freeze_stem_bn:
        _freeze_bn(stem)
    if cfg.freeze_conv1:
        for p in stem.get_submodule("conv1").parameters():
            p.requires_grad_(False)
    trunk = nn.Sequential(OrderedDict(layer4=resnet.layer4, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    stem_channels = resnet.layer3[-1].conv1.in_channels
    trunk_channels = resnet.fc.in_features
    return stem, trunk, stem_channels, trunk_channels


class Stem(nn.Module):
    """ResNet conv1..conv4_x returning the stride-16 feature map under ``FEATURE_KEY``."""

    def __init__(self, body: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, 3, H, W) normalised -> {"res4": (B, C, H/16, W/16)}."""
        return OrderedDict([(FEATURE_KEY, self.body(x))])


class PedestrianProposalHead(nn.Module):
    """The paper's 512x3x3 conv followed by per-anchor objectness and box regression."""

    def __init__(self, in_channels: int, mid_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        # Two-way softmax objectness of the paper is a sigmoid on one logit: same function, half the outputs.
        self.cls_logits = nn.Conv2d(mid_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(mid_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]  # Conv2d built with bias=True

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """features: list of (B, C, h, w) -> ([(B, A, h, w)], [(B, 4A, h, w)])."""
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class IdentificationHead(nn.Module):
    """conv5_x + GAP on the pooled RoIs, then classifier, box regression and the L2-normalised id-feat."""

    def __init__(
        self, trunk: nn.Module, trunk_channels: int, embedding_dim: int, embedding_bn: bool = True, stripes: int = 1
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.stripes = stripes
        self.cls_score = nn.Linear(trunk_channels, 2)
        self.bbox_pred = nn.Linear(trunk_channels, 2 * 4)
        self.embedding = nn.Linear(trunk_channels * stripes, embedding_dim)
        # Pooled ReLU features share a large common component, so without centring every projected id-feat starts
        # out nearly parallel; OIM then fills its tables with one vector, where its gradient vanishes (Eq. 4 is
        # v_t - sum p v = 0) and training never leaves that point. BN before the L2 norm removes the common mode.
        self.embedding_norm: nn.Module = nn.BatchNorm1d(embedding_dim) if embedding_bn else nn.Identity()
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.normal_(self.embedding.weight, std=0.01)
        for layer in (self.cls_score, self.bbox_pred, self.embedding):
            nn.init.zeros_(layer.bias)

    def _features(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """pooled: (R, C, S, S) -> the conv5 map's global average (R, C') and what the id-feat is projected from:
        the same, or with stripes its average over each horizontal stripe, (R, C' * stripes) ordered (C', stripe)."""
        if self.stripes == 1:
            x = self.trunk(pooled)
            return x, x
        conv5 = self.trunk.get_submodule("layer4")(pooled)  # (R, C', h, w)
        striped = conv5.unflatten(2, (self.stripes, -1)).mean(dim=(3, 4))  # (R, C', stripes)
        return striped.mean(dim=2), striped.flatten(1)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """pooled: (R, C, S, S) -> class logits (R, 2), box deltas (R, 8), id-feats (R, D) unit norm."""
        x, e = self._features(pooled)
        return self.cls_score(x), self.bbox_pred(x), F.normalize(self.embedding_norm(self.embedding(e)), dim=1)

    def embed(self, pooled: Tensor) -> Tensor:
        """pooled: (R, C, S, S) -> id-feats (R, D) unit norm, without the detection outputs."""
        return F.normalize(self.embedding_norm(self.embedding(self._features(pooled)[1])), dim=1)


class OIMRoIHeads(RoIHeads):
    """torchvision's RoIHeads (sampling, box coding, Fast R-CNN loss) extended with identity labels and id-feats."""

    def __init__(self, head: IdentificationHead, roi_pool: MultiScaleRoIAlign, cfg: ModelConfig) -> None:
        super().__init__(
            box_roi_pool=roi_pool,
            box_head=head,
            box_predictor=nn.Identity(),  # predictions come from ``head``; the base class only needs the attribute
            fg_iou_thresh=cfg.box_fg_iou_thresh,
            bg_iou_thresh=cfg.box_bg_iou_thresh,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=cfg.box_positive_fraction,
            bbox_reg_weights=None,
            score_thresh=cfg.box_score_thresh,
            nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.detections_per_img,
        )
        self.min_box_size = cfg.min_box_size

    def forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Sample proposals, run the head; return losses, foreground id-feats (R, D) and their pids (R,)."""
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        pids = []
        for t, midx, lab in zip(targets, matched_idxs, labels):
            pid = t["pids"][midx] if t["pids"].numel() else torch.full_like(midx, BACKGROUND_PID)
            pids.append(torch.where(lab > 0, pid, torch.full_like(pid, BACKGROUND_PID)))
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression, id_feats = self.box_head(pooled)
        loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
        pid_all = torch.cat(pids)
        fg = pid_all != BACKGROUND_PID
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        return losses, id_feats[fg], pid_all[fg]

    def forward_test(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Score and refine proposals; per image boxes (D, 4), scores (D,), embeddings (D, E) in input pixels."""
        pooled = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression, id_feats = self.box_head(pooled)
        pred_boxes = self.box_coder.decode(box_regression, proposals)[:, 1]
        pred_scores = F.softmax(class_logits, -1)[:, 1]
        counts = [p.shape[0] for p in proposals]
        results = []
        for boxes, scores, feats, shape in zip(
            pred_boxes.split(counts), pred_scores.split(counts), id_feats.split(counts), image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, feats = boxes[keep], scores[keep], feats[keep]
            keep = box_ops.remove_small_boxes(boxes, self.min_box_size)
            boxes, scores, feats = boxes[keep], scores[keep], feats[keep]
            keep = box_ops.nms(boxes, scores, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "scores": scores[keep], "embeddings": feats[keep]})
        return results


class OIMNet(nn.Module):
    """The joint network: a list of images of any size in, per image boxes, scores and id-feats out."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        body, trunk, stem_channels, trunk_channels = build_resnet_parts(cfg)
        self.transform = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, list(cfg.image_mean), list(cfg.image_std))
        self.backbone = Stem(body, stem_channels)
        anchors = AnchorGenerator(sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=(tuple(cfg.anchor_ratios),))
        self.rpn = RegionProposalNetwork(
            anchors,
            PedestrianProposalHead(stem_channels, cfg.rpn_channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=cfg.rpn_fg_iou_thresh,
            bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image,
            positive_fraction=cfg.rpn_positive_fraction,
            pre_nms_top_n={"training": cfg.rpn_pre_nms_top_n_train, "testing": cfg.rpn_pre_nms_top_n_test},
            post_nms_top_n={"training": cfg.rpn_post_nms_top_n_train, "testing": cfg.rpn_post_nms_top_n_test},
            nms_thresh=cfg.rpn_nms_thresh,
        )
        roi_pool = MultiScaleRoIAlign([FEATURE_KEY], output_size=cfg.roi_output_size, sampling_ratio=2)
        self.roi_heads = OIMRoIHeads(
            IdentificationHead(trunk, trunk_channels, cfg.embedding_dim, cfg.embedding_bn, cfg.embedding_stripes),
            roi_pool,
            cfg,
        )

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> TrainingOutput | list[dict[str, Tensor]]:
        """images: list of (3, H, W) float in [0, 1].

        Training (targets given, each {"boxes": (K, 4) x1y1x2y2 pixels, "pids": (K,) int64}): a TrainingOutput.
        Inference: per image {"boxes": (D, 4) x1y1x2y2 original pixels, "scores": (D,), "embeddings": (D, E)}.
        """
        # Kept as shape values (not ints) so an ONNX trace maps boxes back to each input's own size.
        original_sizes: list[tuple[int, int]] = [(img.shape[-2], img.shape[-1]) for img in images]
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets")
            targets = [{**t, "labels": torch.ones_like(t["pids"])} for t in targets]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        if self.training:
            assert targets is not None
            det_losses, feats, pids = self.roi_heads.forward_train(features, proposals, image_list.image_sizes, targets)
            return TrainingOutput({**rpn_losses, **det_losses}, feats, pids)
        results = self.roi_heads.forward_test(features, proposals, image_list.image_sizes)
        for res, size, orig in zip(results, image_list.image_sizes, original_sizes):
            res["boxes"] = resize_boxes(res["boxes"], size, orig)
        return results

    def embed_boxes(self, images: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """The paper's query embedding: pool the given person boxes and return their id-feats.

        images: list of (3, H, W) float in [0, 1]; boxes: list of (K, 4) x1y1x2y2 in original pixels
        -> list of (K, E) unit-norm embeddings.
        """
        targets = [{"boxes": b} for b in boxes]
        was_training = self.transform.training
        self.transform.eval()  # fixed-size resize, as at inference
        try:
            image_list, scaled = self.transform(images, targets)
        finally:
            self.transform.train(was_training)
        assert scaled is not None
        features = self.backbone(image_list.tensors)
        rois = [t["boxes"] for t in scaled]
        pooled = self.roi_heads.box_roi_pool(features, rois, image_list.image_sizes)
        feats = self.roi_heads.box_head.embed(pooled)
        return list(feats.split([r.shape[0] for r in rois]))


def build_model(cfg: ModelConfig) -> OIMNet:
    """Build the network for a configuration (downloads ImageNet weights only when cfg.pretrained asks)."""
    return OIMNet(cfg)
