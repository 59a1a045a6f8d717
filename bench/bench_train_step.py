"""Training speed: seconds per iteration of the demo model's joint training, full precision against autocast.

Run: python bench/bench_train_step.py [--data data/synth] [--config oim-r18-synth] [--steps 12] [--device cpu]
     [--no-record]

On the CPU it compares fp32 with bf16 autocast (`solver.cpu_bf16`), on CUDA fp32 with fp16 autocast (`solver.amp`).
Each precision gets its own trainer of the same config and seed, fed the same batches of the training split; the
precisions take turns (a few steps each) so that a change in the machine's load hits them alike, and the first two
steps of each are not counted (allocator and kernel warm-up). The table gives the median over the counted steps.
Without `--data`'s dataset, the default synthetic world is generated into a temporary folder first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from training.config import load_train_config
from training.engine import Trainer, build_trainer

WARMUP = 2
TURN = 2  # steps per turn


def cpu_bf16_units() -> str:
    """What the CPU has for bf16 arithmetic, from its flags: AMX tiles, AVX-512 BF16, or none (emulated)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    units = [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]
    return ", ".join(units) or "none (emulated)"


def make_trainer(config: str, data: Path, device: str, precision: str, out: Path) -> Trainer:
    overrides: dict[str, Any] = {
        "data.root": str(data),
        "device": device,
        "output_dir": str(out / precision),
        "solver.amp": precision == "fp16",
        "solver.cpu_bf16": precision == "bf16",
        "data.num_workers": 0,
        "log_period": 10**9,
        "eval_period": -1,
        # Speed does not depend on where the weights start; the pre-trained backbone may not exist here.
        "model_overrides.backbone_weights": None,
    }
    return build_trainer(load_train_config(config, overrides), resume=False, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/synth", help="a dataset in the CUHK-SYSU layout (personsearch synth)")
    ap.add_argument("--config", default="oim-r18-synth", help="training config (bundled name or YAML file)")
    ap.add_argument("--steps", type=int, default=12, help="counted steps per precision")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    device = torch.device(args.device)
    precisions = ["fp32", "bf16"] if device.type == "cpu" else ["fp32", "fp16"]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data = Path(args.data)
        if not (data / "annotation").is_dir():
            from training.synth.world import main_synth

            data = Path(tmp) / "synth"
            print(f"{args.data} is not a dataset: generating the default synthetic world into {data}", flush=True)
            main_synth(data, seed=0)
        trainers = {p: make_trainer(args.config, data, args.device, p, Path(tmp)) for p in precisions}
        first = trainers[precisions[0]]
        ipb = first.cfg.solver.images_per_batch
        loader = iter(first._loader())
        batches = [next(loader)[:2] for _ in range(WARMUP + args.steps)]
        times: dict[str, list[float]] = {p: [] for p in precisions}
        losses: dict[str, list[float]] = {p: [] for p in precisions}
        for t in trainers.values():
            t.model.train()
            t.id_loss.train()
        for start in range(0, len(batches), TURN):
            for p in precisions:
                for images, targets in batches[start : start + TURN]:
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    row = trainers[p].step(images, targets)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[p].append(time.perf_counter() - t0)
                    losses[p].append(row["loss"])
            print(f"step {min(start + TURN, len(batches))}/{len(batches)}", flush=True)
    base = statistics.median(times[precisions[0]][WARMUP:])
    rows: list[list[object]] = []
    for p in precisions:
        med = statistics.median(times[p][WARMUP:])
        rows.append([p, f"{med:.2f}", f"{ipb / med:.2f}", f"{base / med:.2f}x", f"{losses[p][-1]:.2f}"])
    table = markdown_table(
        ["precision", "s / iteration (median)", "images / s", "speed-up vs fp32", f"loss at step {len(batches)}"], rows
    )
    print(table)
    if not args.no_record:
        where = f"the CPU (bf16 units: {cpu_bf16_units()})" if device.type == "cpu" else torch.cuda.get_device_name(0)
        body = (
            f"Config `{args.config}` ({ipb} images per iteration, the recipe's step 3), {args.steps} counted steps per "
            f"precision on {where}.\n\n{table}"
        )
        record(f"train-step-{device.type}", f"Training step: full precision vs autocast ({device.type})", body)


if __name__ == "__main__":
    main()
