"""The training loop and its hooks (checkpointing, metrics, evaluation, plotting), detectron2-style.

The loop does one thing: draw a batch, compute detection + identification losses, step the optimiser. Everything
periodic is a hook. Multi-GPU runs under ``torchrun``: the model is wrapped in DDP and the OIM lookup table and
queue are updated from the features of every rank, so they stay identical everywhere (training.losses).
"""

from __future__ import annotations

import csv
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.engine import TorchEngine
from detector.model import OIMNet, TrainingOutput
from detector.weights import WEIGHTS_FORMAT, expand_stripes, float_state, read_weights, save_weights
from training.config import TrainConfig
from training.data import IterationSampler, SceneDataset, collate_scenes, scenes_covering_identities
from training.datasets.cuhk_sysu import CUHKSYSU
from training.evaluation import format_table
from training.inference import embed_scene_persons, evaluate_engine
from training.losses import OIMLoss, build_id_loss

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last_checkpoint.pt"


def lr_factor(iteration: int, warmup_iters: int, warmup_factor: float, steps: tuple[int, ...], gamma: float) -> float:
    """Linear warm-up from ``warmup_factor`` to 1, then x``gamma`` at every step boundary passed."""
    factor = gamma ** sum(iteration >= s for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class Hook:
    """Something done around training steps; hooks see the trainer and change nothing but their own output."""

    def before_train(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...


class Trainer:
    """Builds model, loss, optimiser and data from a TrainConfig and runs the loop with hooks."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.device = self._pick_device(cfg.device)
        self.output_dir = Path(cfg.output_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.seed + self.rank)

        self.dataset = CUHKSYSU(cfg.data.root)
        self.eval_dataset = CUHKSYSU(cfg.data.eval_root) if cfg.data.eval_root is not None else self.dataset
        train_scenes = self.dataset.train_scenes()
        num_labeled = self.dataset.num_train_identities
        if num_labeled != cfg.loss.num_labeled:
            logger.info("lookup table sized to the dataset: %d labeled identities", num_labeled)
        self.model_cfg = cfg.build_model_config()
        self.model: OIMNet = OIMNet(self.model_cfg)
        if cfg.init_weights is not None:
            self._load_init_weights(Path(cfg.init_weights))
        self.model.to(self.device)
        loss_kwargs = cfg.loss.model_dump(exclude={"kind"})
        loss_kwargs.update(num_labeled=num_labeled, num_features=self.model_cfg.embedding_dim)
        if cfg.loss.kind == "softmax":
            # Same temperature as OIM on the same unit-norm features: with scale 1 the logits of a unit vector
            # cannot leave [-|w|, |w|] and the baseline would be crippled rather than compared.
            loss_kwargs = {
                "num_features": self.model_cfg.embedding_dim,
                "num_labeled": num_labeled,
                "scale": 1.0 / cfg.loss.temperature,
            }
        self.id_loss: nn.Module = build_id_loss(cfg.loss.kind, **loss_kwargs).to(self.device)
        self.train_model: nn.Module = self.model
        if self.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in list(self.model.parameters()) + list(self.id_loss.parameters()) if p.requires_grad]
        s = cfg.solver
        self.optimizer = torch.optim.SGD(params, lr=s.base_lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: lr_factor(it, s.warmup_iters, s.warmup_factor, tuple(s.steps), s.gamma)
        )
        self.use_amp = s.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.use_cpu_bf16 = s.cpu_bf16 and self.device.type == "cpu"  # bf16 needs no gradient scaler
        self.iteration = 0
        self.history: list[dict[str, Any]] = []  # one row per logged step or evaluation
        if resume and (self.output_dir / CHECKPOINT_NAME).is_file():
            self.load_checkpoint(self.output_dir / CHECKPOINT_NAME)
        self.train_set = SceneDataset(train_scenes)
        self.hooks: list[Hook] = []
        self.last_row: dict[str, Any] = {}

    def _load_init_weights(self, path: Path) -> None:
        """Start from a whole trained network (fine-tuning); a resumed checkpoint later overrides it."""
        blob = read_weights(path)
        state = float_state(blob)
        stripes = blob["config"].get("embedding_stripes", 1)
        if stripes != self.model_cfg.embedding_stripes:
            state = expand_stripes(state, stripes, self.model_cfg.embedding_stripes)
            logger.info("id-feat projection expanded from %d to %d stripes", stripes, self.model_cfg.embedding_stripes)
        try:
            self.model.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path} does not fit {self.model_cfg.name}: {str(exc).splitlines()[0]}") from exc
        logger.info("initialised the whole network from %s (%s)", path, blob["config"].get("name"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _pick_device(self, spec: str) -> torch.device:
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        if spec == "cuda" and self.distributed:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device(spec)

    def _loader(self) -> DataLoader:
        ipb = self.cfg.solver.images_per_batch
        sampler = IterationSampler(
            len(self.train_set),
            self.cfg.seed,
            self.cfg.data.hflip,
            self.rank,
            self.world_size,
            start=self.iteration * ipb,
        )
        return DataLoader(
            self.train_set,
            batch_size=ipb,
            sampler=sampler,
            collate_fn=collate_scenes,
            num_workers=self.cfg.data.num_workers,
            persistent_workers=False,
            # Its own generator, so starting a loader draws nothing from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    def step(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimisation step; returns the losses and the learning rate."""
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in targets]
        with (
            torch.autocast("cuda", enabled=self.use_amp),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.use_cpu_bf16),
        ):
            out = self.train_model(images, targets)
        assert isinstance(out, TrainingOutput)
        losses = dict(out.losses)
        losses["loss_id"] = self.cfg.loss_weight_id * self.id_loss(out.id_features.float(), out.id_labels)
        total = sum(losses.values())
        assert isinstance(total, torch.Tensor)
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss is {total.item()} at iteration {self.iteration}: {losses}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.distributed:
            self._average_id_loss_grads()
        if self.cfg.solver.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.solver.clip_grad_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        row = {k: float(v.detach()) for k, v in losses.items()}
        row["loss"] = float(total.detach())
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        return row

    def fill_id_tables(self) -> None:
        """``init_tables``: OIM's lookup table and queue from the current network's embeddings of the training persons.

        Embeds the persons of the training images that together show every labeled identity at least once
        (``scenes_covering_identities``; on ``train3k`` 2,051 of 6,000 images, about 4 per second at 480 x 800 on
        this project's 2-core CPU), so each row starts as its identity's mean embedding over those images.

        Every rank embeds the same images, then takes rank 0's tables, so they start identical (as the DDP test
        requires of them throughout).
        """
        if not isinstance(self.id_loss, OIMLoss):
            logger.info("init_tables: the %s loss has no tables to fill", self.cfg.loss.kind)
            return
        start = time.perf_counter()
        scenes = scenes_covering_identities(self.train_set.scenes)
        feats, labels = embed_scene_persons(self.model, scenes, self.device, progress=self.progress and self.is_main)
        if feats.numel() == 0:
            logger.warning("init_tables: no annotated person in the training images; the tables stay empty")
            return
        rows, queued = self.id_loss.fill_tables(feats, labels)
        if self.distributed:
            for buf in (self.id_loss.lut, self.id_loss.queue, self.id_loss.queue_ptr, self.id_loss.queue_len):
                dist.broadcast(buf, src=0)
        logger.info(
            "init_tables: filled %d of %d lookup-table rows and %d queue entries from %d persons (%d images, %.0f s)",
            rows,
            self.id_loss.num_labeled,
            queued,
            len(labels),
            len(scenes),
            time.perf_counter() - start,
        )

    def _average_id_loss_grads(self) -> None:
        # The identification loss sits outside DDP (OIM's tables sync themselves); the Softmax baseline's
        # classifier has parameters, so average its gradients here as DDP does for the network's.
        for p in self.id_loss.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world_size

    def train(self) -> None:
        """Run from the current iteration to ``solver.max_iters``, calling the hooks."""
        for h in self.hooks:
            h.before_train(self)
        max_iters = self.cfg.solver.max_iters
        if self.cfg.init_tables and self.iteration == 0:
            self.fill_id_tables()  # before the training bar: the fill shows its own
        self.model.train()
        self.id_loss.train()
        bar = tqdm(
            total=max_iters,
            initial=self.iteration,
            desc="train",
            unit="it",
            disable=not (self.progress and self.is_main),
            dynamic_ncols=True,
        )
        loader = iter(self._loader())
        while self.iteration < max_iters:
            t0 = time.perf_counter()
            images, targets, _ = next(loader)
            row = self.step(images, targets)
            self.iteration += 1
            row["iteration"] = self.iteration
            row["time_per_iter"] = time.perf_counter() - t0  # data loading included
            self.last_row = row
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2g}")
            for h in self.hooks:
                h.after_step(self)
        bar.close()
        for h in self.hooks:
            h.after_train(self)

    # --- checkpoints -------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run is (weights-file keys included)."""
        return {
            "format": WEIGHTS_FORMAT,
            "config": self.model_cfg.model_dump(),
            "state_dict": self.model.state_dict(),
            "meta": {"train_config": self.cfg.model_dump(mode="json"), "iteration": self.iteration},
            "iteration": self.iteration,
            "id_loss": self.id_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "rng": _rng_state(),
        }

    def save_checkpoint(self, path: Path | None = None) -> Path:
        path = path or self.output_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint_state(), tmp)
        tmp.replace(path)  # a crash mid-write never leaves a torn checkpoint
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["state_dict"])
        self.id_loss.load_state_dict(state["id_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.history = list(state.get("history", []))
        _set_rng_state(state["rng"])
        logger.info("resumed from %s at iteration %d", path, self.iteration)

    def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate the current weights on the test split (``data.eval_root``'s if set) at the eval gallery size."""
        self.model.eval()
        try:
            results = evaluate_engine(
                TorchEngine(self.model, self.device),
                self.eval_dataset,
                (self.cfg.data.eval_gallery_size,),
                max_queries=self.cfg.data.eval_max_queries,
                progress=self.progress,
            )
        finally:
            self.model.train()
        return results


class CheckpointHook(Hook):
    """Save the full training state every ``period`` iterations and at the end (main process only)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self, trainer: Trainer) -> None:
        if trainer.is_main and self.period and trainer.iteration % self.period == 0:
            trainer.save_checkpoint()

    def after_train(self, trainer: Trainer) -> None:
        if trainer.is_main:
            trainer.save_checkpoint()
            save_weights(
                trainer.model,
                trainer.output_dir / "model_final.pt",
                meta={"iteration": trainer.iteration, "train_config": trainer.cfg.model_dump(mode="json")},
            )


class MetricsHook(Hook):
    """Log losses every ``period`` iterations to metrics.csv (and TensorBoard when installed)."""

    FIELDS = (
        "iteration",
        "loss",
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_id",
        "lr",
        "time_per_iter",
        "mAP",
        "top1",
        "det_ap",
        "det_recall",
    )

    def __init__(self, period: int) -> None:
        self.period = period
        self.tb: Any = None

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(trainer.output_dir / "tensorboard"))
        except ImportError:
            logger.info("tensorboard not installed: metrics go to metrics.csv only")

    def after_step(self, trainer: Trainer) -> None:
        if trainer.is_main and (trainer.iteration % self.period == 0 or trainer.iteration == 1):
            self.write(trainer, trainer.last_row)

    def write(self, trainer: Trainer, row: dict[str, Any]) -> None:
        trainer.history.append(dict(row))
        self._rewrite_csv(trainer)
        if self.tb is not None:
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["iteration"])

    def _rewrite_csv(self, trainer: Trainer) -> None:
        # Rewritten whole from the history, so a resumed run's CSV has no duplicated or lost rows.
        with open(trainer.output_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(trainer.history)

    def after_train(self, trainer: Trainer) -> None:
        if self.tb is not None:
            self.tb.close()


class EvalHook(Hook):
    """Evaluate every ``period`` iterations and at the end; results go into the history and eval.json."""

    def __init__(self, period: int, metrics: MetricsHook) -> None:
        self.period = period
        self.metrics = metrics

    def _run(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        results = trainer.evaluate()
        logger.info("iteration %d\n%s", trainer.iteration, format_table(results))
        res = results[0]
        self.metrics.write(
            trainer,
            {"iteration": trainer.iteration, **{k: res[k] for k in ("mAP", "top1", "det_ap", "det_recall")}},
        )

    def after_step(self, trainer: Trainer) -> None:
        if (
            self.period > 0
            and trainer.iteration % self.period == 0
            and trainer.iteration < trainer.cfg.solver.max_iters
        ):
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        if self.period >= 0:
            self._run(trainer)


class PlotHook(Hook):
    """Draw the loss and mAP curves to curves.png at the end (and whenever an evaluation happened)."""

    def after_train(self, trainer: Trainer) -> None:
        if trainer.is_main:
            plot_history(trainer.history, trainer.output_dir / "curves.png")


def plot_history(history: list[dict[str, Any]], path: Path) -> Path:
    """Plot losses against iterations (left) and mAP / top-1 / detection recall (right) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_id", "loss_classifier", "loss_objectness"):
        pts = [(r["iteration"], r[key]) for r in history if key in r]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set(xlabel="iteration", ylabel="loss", yscale="log", title="training losses")
    ax_loss.legend()
    for key in ("mAP", "top1", "det_recall"):
        pts = [(r["iteration"], r[key]) for r in history if key in r]
        if pts:
            ax_map.plot(*zip(*pts), marker="o", label=key)
    ax_map.set(xlabel="iteration", ylabel="score", ylim=(0, 1), title="evaluation")
    if ax_map.lines:
        ax_map.legend()
    else:  # eval_period < 0, or a run shorter than its first evaluation: say so instead of leaving an empty frame
        ax_map.text(0.5, 0.5, "no evaluation during this run", ha="center", va="center", transform=ax_map.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_metrics(run: Path) -> list[dict[str, float]]:
    """A run folder's ``metrics.csv`` as rows of numbers (empty cells left out)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no metrics.csv: is it a training run folder?")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def plot_runs(runs: dict[str, Path], key: str, path: Path, smooth: int = 1, marks: list[float] | None = None) -> Path:
    """Compare runs: one metric (e.g. ``loss_id``) against iterations, one line per run, to a PNG.

    ``runs`` maps a legend label to a run folder; ``smooth`` > 1 draws the moving mean over that many logged points;
    ``marks`` draws horizontal reference lines (e.g. chance for the loss). Raises ValueError when a run never logged
    ``key``, naming the keys it has.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if smooth < 1:
        raise ValueError(f"smooth must be >= 1, got {smooth}")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for label, run in runs.items():
        rows = read_metrics(run)
        pts = [(r["iteration"], r[key]) for r in rows if key in r and "iteration" in r]
        if not pts:
            have = sorted({k for r in rows for k in r} - {"iteration"})
            raise ValueError(f"{run} never logged {key!r}; it has {', '.join(have) or 'nothing'}")
        xs, ys = zip(*pts)
        means = [float(np.mean(ys[max(0, i - smooth + 1) : i + 1])) for i in range(len(ys))]
        ax.plot(xs, means, label=label, marker="o" if len(xs) < 20 else None)
    for y in marks or []:
        ax.axhline(y, color="grey", ls="--", lw=1)
    suffix = f" (moving mean over {smooth} logged points)" if smooth > 1 else ""
    ax.set(xlabel="iteration", ylabel=key + suffix)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def build_trainer(cfg: TrainConfig, resume: bool = True, progress: bool = True) -> Trainer:
    """A trainer with the standard hooks: metrics, checkpoints, evaluation, plot."""
    trainer = Trainer(cfg, resume=resume, progress=progress)
    metrics = MetricsHook(cfg.log_period)
    trainer.hooks = [
        metrics,
        CheckpointHook(cfg.checkpoint_period),
        EvalHook(cfg.eval_period, metrics),
        PlotHook(),
    ]
    return trainer


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def init_distributed() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); NCCL on CUDA, gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return True
