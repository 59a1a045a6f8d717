"""Export the joint network to ONNX: the detection graph and the query graph, both with dynamic image size.

detect.onnx:  image uint8 (H, W, 3) RGB -> boxes (D, 4) float32 x1y1x2y2 original pixels, scores (D,), embeddings (D, E)
query.onnx:   image uint8 (H, W, 3) RGB, boxes (K, 4) float32 x1y1x2y2 original pixels -> embeddings (K, E)

Pre-processing (to float, normalise, resize) is inside the graphs, so a client sends decoded pixels and nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.model import OIMNet

logger = logging.getLogger(__name__)

DETECT_GRAPH = "detect.onnx"
QUERY_GRAPH = "query.onnx"
MANIFEST = "model.json"
OPSET = 17


def _to_chw_float(image: Tensor) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return image.permute(2, 0, 1).float() / 255.0


class DetectGraph(nn.Module):
    """The inference pass of one image as an exportable module."""

    def __init__(self, model: OIMNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image: (H, W, 3) uint8 -> boxes (D, 4), scores (D,), embeddings (D, E)."""
        out = self.model([_to_chw_float(image)])
        assert isinstance(out, list)
        return out[0]["boxes"], out[0]["scores"], out[0]["embeddings"]


class QueryGraph(nn.Module):
    """The query embedding (pool given boxes) of one image as an exportable module."""

    def __init__(self, model: OIMNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor, boxes: Tensor) -> Tensor:
        """image: (H, W, 3) uint8, boxes: (K, 4) x1y1x2y2 pixels -> embeddings (K, E)."""
        return self.model.embed_boxes([_to_chw_float(image)], [boxes])[0]


def export_onnx(model: OIMNet, out_dir: Path, sample_size: tuple[int, int] = (480, 640)) -> dict[str, Path]:
    """Export both graphs of ``model`` into ``out_dir``; returns their paths (and the manifest's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    h, w = sample_size
    image = torch.randint(0, 255, (h, w, 3), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20.0, 80.0, 200.0], [100.0, 50.0, 180.0, 300.0]])
    paths = {"detect": out_dir / DETECT_GRAPH, "query": out_dir / QUERY_GRAPH, "manifest": out_dir / MANIFEST}
    with torch.no_grad():
        torch.onnx.export(
            DetectGraph(model),
            (image,),
            str(paths["detect"]),
            input_names=["image"],
            output_names=["boxes", "scores", "embeddings"],
            dynamic_axes={
                "image": {0: "height", 1: "width"},
                "boxes": {0: "detections"},
                "scores": {0: "detections"},
                "embeddings": {0: "detections"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
        torch.onnx.export(
            QueryGraph(model),
            (image, boxes),
            str(paths["query"]),
            input_names=["image", "boxes"],
            output_names=["embeddings"],
            dynamic_axes={
                "image": {0: "height", 1: "width"},
                "boxes": {0: "persons"},
                "embeddings": {0: "persons"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    paths["manifest"].write_text(
        json.dumps(
            {"config": model.cfg.model_dump(), "opset": OPSET, "detect": DETECT_GRAPH, "query": QUERY_GRAPH},
            indent=2,
        )
    )
    logger.info("exported %s and %s to %s", DETECT_GRAPH, QUERY_GRAPH, out_dir)
    return paths
