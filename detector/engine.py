"""Inference engines behind one interface: plain torch (the reference) and ONNX Runtime (TensorRT / CUDA / CPU).

Every engine takes decoded RGB frames (H, W, 3) uint8 of any size and returns, per frame, person boxes in original
pixels, detection scores and unit-norm identity embeddings; and embeds given person boxes (the query graph).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detector.export import DETECT_GRAPH, MANIFEST, QUERY_GRAPH
from detector.model import OIMNet

logger = logging.getLogger(__name__)

# Preferred first; only those the installed onnxruntime offers are used.
ORT_PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class Detections:
    """The persons found in one frame."""

    boxes: np.ndarray  # (D, 4) float32 x1y1x2y2 in original pixels
    scores: np.ndarray  # (D,) float32 in [0, 1]
    embeddings: np.ndarray  # (D, E) float32, unit L2 norm

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image)


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
        raise ValueError("boxes must be x1y1x2y2 with x2 > x1 and y2 > y1")
    return boxes


class Engine(ABC):
    """The detect-and-embed network, however it is run."""

    name: str
    model_name: str  # the network's config name: embeddings of different models must never be compared

    @abstractmethod
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """images: RGB (H, W, 3) uint8, sizes may differ -> one Detections per image."""

    @abstractmethod
    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """image: RGB (H, W, 3) uint8; boxes: (K, 4) x1y1x2y2 pixels -> (K, E) unit-norm embeddings."""


class TorchEngine(Engine):
    """The reference engine: the PyTorch module, eager."""

    name = "torch"

    def __init__(self, model: OIMNet, device: str | torch.device = "cpu", threads: int = 0) -> None:
        if threads:  # torch's intra-op pool is per process: this sets it for every torch user in the process
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.model_name = model.cfg.name

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        image = _check_image(image)
        if not image.flags.writeable:  # torch wants writable memory; frames decoded from JPEG often are not
            image = image.copy()
        return torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255.0

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        if not images:
            return []
        out = self.model([self._tensor(img) for img in images])
        assert isinstance(out, list)
        return [
            Detections(
                r["boxes"].float().cpu().numpy(),
                r["scores"].float().cpu().numpy(),
                r["embeddings"].float().cpu().numpy(),
            )
            for r in out
        ]

    @torch.no_grad()
    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        b = torch.from_numpy(_check_boxes(boxes)).to(self.device)
        return self.model.embed_boxes([self._tensor(image)], [b])[0].float().cpu().numpy()


def _warn_on_shadowed_gpu_build(available: Sequence[str]) -> None:
    """onnxruntime and onnxruntime-gpu install the same ``onnxruntime`` package; with both, the CPU one may win."""
    from importlib import metadata

    installed = {str(d.metadata["Name"]).lower() for d in metadata.distributions()}
    if {"onnxruntime", "onnxruntime-gpu"} <= installed and "CUDAExecutionProvider" not in available:
        logger.warning(
            "onnxruntime-gpu is installed but the CPU build of onnxruntime shadows it (no CUDA provider); fix: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )


class OnnxRuntimeEngine(Engine):
    """The exported graphs under ONNX Runtime, on the best execution provider installed."""

    name = "onnxruntime"

    def __init__(self, model_dir: Path, providers: Sequence[str] | None = None, threads: int = 0) -> None:
        import onnxruntime as ort

        model_dir = Path(model_dir)
        for graph in (DETECT_GRAPH, QUERY_GRAPH):
            if not (model_dir / graph).is_file():
                raise FileNotFoundError(f"{model_dir / graph} missing: run `personsearch export` first")
        available = ort.get_available_providers()
        _warn_on_shadowed_gpu_build(available)
        chosen = [p for p in (providers or ORT_PROVIDER_PREFERENCE) if p in available] or ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.detect_session = ort.InferenceSession(str(model_dir / DETECT_GRAPH), opts, providers=chosen)
        self.query_session = ort.InferenceSession(str(model_dir / QUERY_GRAPH), opts, providers=chosen)
        self.providers = self.detect_session.get_providers()
        manifest = model_dir / MANIFEST
        self.config = json.loads(manifest.read_text())["config"] if manifest.is_file() else {}
        self.model_name = str(self.config.get("name", model_dir.name))
        logger.info("onnxruntime engine on %s", ", ".join(self.providers))

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        # The detection graph takes one image: frames of different cameras differ in size.
        results = []
        for image in images:
            boxes, scores, embeddings = self.detect_session.run(None, {"image": _check_image(image)})
            results.append(Detections(boxes, scores, embeddings))
        return results

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        (emb,) = self.query_session.run(None, {"image": _check_image(image), "boxes": _check_boxes(boxes)})
        return emb


ENGINES = ("torch", "onnxruntime")


def onnx_cache_dir(weights: Path, input_size: tuple[int, int] | None = None) -> Path:
    """Where the export of ``weights`` is cached: per content hash under the user's cache (site-packages may be
    read-only), ``$PERSONSEARCH_CACHE`` or ``~/.cache/personsearch``; an ``input_size`` other than the file's own
    (the resize is inside the graphs) gets its own folder."""
    import hashlib
    import os

    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("PERSONSEARCH_CACHE", Path.home() / ".cache" / "personsearch"))
    size = "" if input_size is None else f"-{input_size[0]}x{input_size[1]}"
    return root / "onnx" / f"{Path(weights).stem}-{digest}{size}"


def load_engine(
    kind: str = "torch",
    weights: Path | None = None,
    onnx_dir: Path | None = None,
    device: str = "cpu",
    threads: int = 0,
    input_size: tuple[int, int] | None = None,
) -> Engine:
    """Build an engine: ``torch`` from a weights file (default: the bundled demo), ``onnxruntime`` from an export.

    With ``onnxruntime`` and no ``onnx_dir``, the weights are exported once to a cache folder (``onnx_cache_dir``).
    ``threads``: CPU threads for inference (0: the runtime's default, one per core); fewer than the cores leaves
    the rest to the other workers of a one-machine deployment. ``input_size``: (shorter side, longer-side cap) every
    image is resized to instead of the weights file's own (``detector.weights.load_model``); an existing export
    (``onnx_dir``) has its size inside its graphs, so the two cannot be combined.
    """
    from detector.weights import DEMO_WEIGHTS, check_input_size, load_model

    if input_size is not None:
        input_size = check_input_size(input_size)
    if kind == "torch":
        return TorchEngine(load_model(weights, device, input_size), device, threads)
    if kind == "onnxruntime":
        if onnx_dir is None:
            from detector.export import export_onnx

            src = Path(weights) if weights is not None else DEMO_WEIGHTS
            onnx_dir = onnx_cache_dir(src, input_size)
            if not (onnx_dir / MANIFEST).is_file():  # the manifest is written last: its presence means complete
                export_onnx(load_model(src, input_size=input_size), onnx_dir)
        elif input_size is not None:
            raise ValueError(
                f"{onnx_dir} is an export: its input size is fixed inside its graphs; export again with "
                "`personsearch export --input-size` or give the weights file instead"
            )
        return OnnxRuntimeEngine(onnx_dir, threads=threads)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")
