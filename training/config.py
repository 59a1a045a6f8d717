"""Training configuration: one pydantic model read from YAML (``personsearch train --config FILE|NAME``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from detector.config import ModelConfig, OIMConfig, get_model_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class SolverConfig(BaseModel):
    """SGD with linear warm-up and step decay (the paper: lr 0.001, x0.1 at 40k of 50k iterations)."""

    model_config = ConfigDict(extra="forbid")

    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    max_iters: int = 50_000
    steps: tuple[int, ...] = (40_000,)
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.01
    clip_grad_norm: float | None = 10.0
    images_per_batch: int = 2  # per process
    amp: bool = True  # fp16 autocast with a gradient scaler; only takes effect on CUDA
    # bf16 autocast for training on the CPU. About 1.6x faster per step on CPUs with bf16 matrix units (Intel AMX,
    # docs/benchmarks.md "Training step"); slower where bf16 is emulated. Off by default.
    cpu_bf16: bool = False


class DataConfig(BaseModel):
    """Which dataset, and how images reach the network."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Path("data/cuhk_sysu")
    # Evaluate on this dataset's test split instead of root's (None: root's). Train on one world, e.g. a synthetic one
    # with many more identities, and score on another's protocol.
    eval_root: Path | None = None
    hflip: bool = True
    num_workers: int = 2
    eval_gallery_size: int = 100
    # Evaluate on at most this many queries during training (None: all) to keep periodic evaluation cheap.
    eval_max_queries: int | None = None


class TrainConfig(BaseModel):
    """Everything ``personsearch train`` needs."""

    model_config = ConfigDict(extra="forbid")

    model: str = "oim-r50"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    # Fine-tuning: a whole joint network to start from (a weights file or a training checkpoint, e.g. the bundled
    # demo model or an earlier run's model_final.pt) instead of only a backbone. Its architecture must match.
    init_weights: Path | None = None
    # Before the first iteration of a fresh run, fill OIM's lookup table with each labeled identity's mean embedding
    # (and the queue with unlabeled persons) as the starting network computes them on training images that show
    # every labeled identity at least once, instead of starting both at zero. Meant for fine-tuning (init_weights);
    # costs one inference pass over those images. Ignored by the Softmax baseline and on resume (the checkpoint
    # holds the tables).
    init_tables: bool = False
    loss: OIMConfig = OIMConfig()
    loss_weight_id: float = 1.0
    solver: SolverConfig = SolverConfig()
    data: DataConfig = DataConfig()
    output_dir: Path = Path("runs/oim-r50")
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when present, else CPU
    log_period: int = 20
    checkpoint_period: int = 2000
    eval_period: int = 5000  # 0: evaluate only at the end; -1: never

    def build_model_config(self) -> ModelConfig:
        """The named model configuration with this run's overrides applied."""
        base = get_model_config(self.model)
        return ModelConfig(**{**base.model_dump(), **self.model_overrides})


def load_train_config(spec: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load a config by path or by bundled name (e.g. ``oim-r50-cuhk``); ``overrides`` use dotted keys."""
    path = Path(spec)
    if not path.is_file():
        path = CONFIG_DIR / f"{spec}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no config file {spec!r} (bundled configs: {names})")
    raw = yaml.safe_load(path.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return TrainConfig(**raw)
