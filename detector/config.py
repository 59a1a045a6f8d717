"""Model configurations: the paper's ``oim-r50`` and the small CPU ``oim-r18-demo`` are two settings of one network."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Every architectural and inference hyperparameter of the joint detect-and-embed network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "oim-r50"
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    # "imagenet" downloads torchvision's weights (users with internet); "none" starts from random weights.
    pretrained: Literal["imagenet", "none"] = "imagenet"
    # A torchvision-format ResNet state dict to start from instead (e.g. `personsearch pretrain` on identity crops,
    # the demo's stand-in for ImageNet where nothing can be downloaded). Used when building for training only.
    backbone_weights: str | None = None
    # Paper: conv1 and the stem's BN are constant affine transforms. A network trained from scratch needs them learnt.
    freeze_conv1: bool = True
    freeze_stem_bn: bool = True
    # Resizing done by the model's transform (shorter side min_size, longer side at most max_size).
    min_size: int = 600
    max_size: int = 1000
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Pedestrian proposal net. Anchor sizes in input pixels; aspect ratios are height / width.
    anchor_sizes: tuple[int, ...] = (128, 256, 512)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 512
    rpn_pre_nms_top_n_train: int = 12000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # Identification net.
    roi_output_size: int = 14
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    embedding_dim: int = 256
    embedding_bn: bool = True  # BatchNorm1d between the projection and the L2 norm (see IdentificationHead)
    # The id-feat is projected from the conv5 map averaged over this many horizontal stripes (top to bottom),
    # concatenated, instead of over the whole box: 1 is the paper's global average. With stripes the projection sees
    # where on the body a feature is (hair above, trousers below). Must divide the conv5 map's height,
    # ceil(roi_output_size / 2). A network with 1 loads into one with more, unchanged (``expand_stripes``).
    embedding_stripes: int = Field(default=1, ge=1)
    # Inference post-processing (evaluation filters again at its own det_thresh).
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.4
    detections_per_img: int = 100
    min_box_size: float = 4.0

    @model_validator(mode="after")
    def _stripes_divide_the_map(self) -> ModelConfig:
        rows = -(-self.roi_output_size // 2)  # conv5 halves the RoI (3 x 3, stride 2, padding 1)
        if rows % self.embedding_stripes:
            raise ValueError(
                f"embedding_stripes ({self.embedding_stripes}) must divide the conv5 map's height ({rows} rows for "
                f"roi_output_size {self.roi_output_size})"
            )
        return self


class OIMConfig(BaseModel):
    """The identification loss: the paper's OIM, or the Softmax-classifier baseline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["oim", "softmax"] = "oim"
    num_labeled: int = Field(default=5532, description="size of the lookup table: labeled training identities")
    queue_size: int = 5000
    temperature: float = 0.1
    momentum: float = 0.5
    sub_sample: int | None = None


MODEL_CONFIGS: dict[str, ModelConfig] = {
    # The paper's network (Caffe OIM): ResNet-50, 600/1000 input, 9 anchors, 300 test proposals.
    "oim-r50": ModelConfig(),
    # Small CPU configuration of the same network, trained from scratch on the synthetic world for the demo.
    "oim-r18-demo": ModelConfig(
        name="oim-r18-demo",
        backbone="resnet18",
        pretrained="none",
        freeze_conv1=False,
        freeze_stem_bn=False,
        min_size=384,
        max_size=640,
        anchor_sizes=(32, 64, 128, 256, 512),
        anchor_ratios=(1.0, 2.0, 3.0),
        rpn_channels=256,
        rpn_pre_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_train=256,
        rpn_post_nms_top_n_test=64,
        # The res5 head on every sampled RoI is most of a CPU training step: 8x8 RoIs and 32 of them per image make a
        # step 3x cheaper than the paper's 14x14 and 128 (measured; see docs/hyperparameters.md).
        box_batch_size_per_image=32,
        roi_output_size=8,
        detections_per_img=50,
    ),
}


def get_model_config(name: str) -> ModelConfig:
    """Return a named model configuration, with a clear error for unknown names."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(sorted(MODEL_CONFIGS))}") from None
