"""Model weight files: one ``.pt`` holding the configuration, the state dict and provenance, and the bundled demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from detector.config import ModelConfig
from detector.model import OIMNet

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "personsearch-oim/1"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEMO_WEIGHTS = WEIGHTS_DIR / "oim-r18-demo.pt"


def save_weights(model: OIMNet, path: Path, half: bool = False, meta: dict[str, Any] | None = None) -> Path:
    """Write the model's weights with its config; ``half`` stores floating tensors as fp16 (halves the file)."""
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"format": WEIGHTS_FORMAT, "config": model.cfg.model_dump(), "state_dict": state, "meta": meta or {}},
        path,
    )
    return path


def check_input_size(input_size: tuple[int, int] | list[int]) -> tuple[int, int]:
    """(shorter side, longer-side cap) in pixels, checked: the shorter side at least 32, the cap at least that."""
    if len(input_size) != 2:
        raise ValueError(f"input size is (shorter side, longer-side cap), got {list(input_size)}")
    short, cap = (int(v) for v in input_size)
    if short < 32 or cap < short:
        raise ValueError(f"input size {short}, {cap}: the shorter side must be >= 32 and the cap >= the shorter side")
    return short, cap


def read_weights(path: Path) -> dict[str, Any]:
    """Read a weights file (or a training checkpoint, which embeds one) and check its format."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(blob, dict) and "weights" in blob and isinstance(blob["weights"], dict):
        blob = blob["weights"]  # a training checkpoint
    if not isinstance(blob, dict) or blob.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a personsearch weights file (expected format {WEIGHTS_FORMAT})")
    return blob


def float_state(blob: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a weights file with fp16 tensors (``save_weights(..., half=True)``) back in fp32."""
    return {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}


def expand_stripes(state: dict[str, torch.Tensor], stripes_from: int, stripes_to: int) -> dict[str, torch.Tensor]:
    """A state dict whose id-feat projection reads ``stripes_from`` horizontal stripes, made to read ``stripes_to``
    (a multiple) and compute the same id-feats: each new stripe gets its old stripe's weights over the number of
    new stripes in it, since that old stripe's average is their mean. Training then lets the stripes differ."""
    if stripes_to == stripes_from:
        return state
    if stripes_to % stripes_from:
        raise ValueError(f"cannot expand {stripes_from} embedding stripes to {stripes_to}: not a multiple")
    key = "roi_heads.box_head.embedding.weight"
    weight = state[key]
    dim, columns = weight.shape
    r = stripes_to // stripes_from
    expanded = weight.reshape(dim, columns // stripes_from, stripes_from).repeat_interleave(r, dim=2) / r
    return {**state, key: expanded.reshape(dim, columns * r)}


def load_model(
    path: Path | None = None, device: str | torch.device = "cpu", input_size: tuple[int, int] | None = None
) -> OIMNet:
    """Build the network described by a weights file and load it in eval mode (default: the bundled demo model).

    ``input_size`` (shorter side, longer-side cap in pixels) replaces the size the file's config resizes every image
    to (``min_size``, ``max_size``). The weights do not depend on it (the network is convolutional), but what the
    network was trained at is where it is known to work, and a watchlist threshold calibrated at one size is not
    calibrated at another.
    """
    path = Path(path) if path is not None else DEMO_WEIGHTS
    blob = read_weights(path)
    # The file has every weight: download nothing, read no backbone file.
    sizes = {} if input_size is None else dict(zip(("min_size", "max_size"), check_input_size(input_size)))
    cfg = ModelConfig(**{**blob["config"], "pretrained": "none", "backbone_weights": None, **sizes})
    model = OIMNet(cfg)
    model.load_state_dict(float_state(blob))
    logger.info("loaded %s (%s) from %s", cfg.name, blob.get("meta", {}).get("description", ""), path)
    return model.to(device).eval()
