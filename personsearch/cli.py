"""The ``personsearch`` command: one CLI, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("personsearch")


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``key.sub=value`` pairs; values parsed as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_synth(args: argparse.Namespace) -> int:
    from training.synth.world import main_synth

    overrides = _parse_set(args.set)
    summary = main_synth(Path(args.out), seed=args.seed, preset=args.preset, **overrides)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_train_config
    from training.engine import build_trainer, init_distributed

    overrides = _parse_set(args.set)
    if args.data:
        overrides["data.root"] = args.data
    if args.output:
        overrides["output_dir"] = args.output
    if args.device:
        overrides["device"] = args.device
    init_distributed()
    cfg = load_train_config(args.config, overrides)
    trainer = build_trainer(cfg, resume=not args.no_resume)
    trainer.train()
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.datasets.cuhk_sysu import CUHKSYSU
    from training.evaluation import evaluate_results, format_table, load_results

    dataset = CUHKSYSU(Path(args.data))
    subsets = [None if s == "all" else s for s in args.subset]
    results: list[dict[str, Any]] = []
    if args.results:
        saved = load_results(Path(args.results))
        for g in args.gallery_size:
            for s in subsets:
                res = evaluate_results(
                    saved,
                    dataset.test_scenes(),
                    dataset.queries(g, subset=s),
                    args.det_thresh,
                    reference_queries=dataset.queries(g),
                    subset=s,
                )
                res["subset"] = s or "all"
                results.append(res)
    else:
        from detector.engine import load_engine
        from training.inference import evaluate_engine

        engine = load_engine(args.engine, Path(args.weights) if args.weights else None, device=args.device)
        results = evaluate_engine(
            engine,
            dataset,
            args.gallery_size,
            subsets,
            det_thresh=args.det_thresh,
            max_queries=args.max_queries,
            results_path=Path(args.save_results) if args.save_results else None,
        )
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload: Any = results[0] if len(results) == 1 else results
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from detector.export import export_onnx
    from detector.weights import load_model

    paths = export_onnx(load_model(Path(args.weights) if args.weights else None), Path(args.out))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personsearch", description="Person search for live video (OIM).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic person-search world in the CUHK-SYSU layout")
    s.add_argument("--out", required=True, help="output folder (the dataset root)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--preset", default="default", help="size preset: default or tiny")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SynthConfig field")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="train the joint model (torchrun for several GPUs)")
    t.add_argument("--config", required=True, help="a YAML file, or a bundled name such as oim-r18-synth")
    t.add_argument("--data", help="dataset root (overrides data.root)")
    t.add_argument("--output", help="run folder (overrides output_dir)")
    t.add_argument("--device", help="cpu, cuda or auto")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. solver.max_iters=100"
    )
    t.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="score a model (or a saved results file) with the person-search protocol")
    e.add_argument("--data", required=True, help="dataset root in the CUHK-SYSU layout")
    e.add_argument("--gallery-size", type=int, nargs="+", default=[100])
    e.add_argument("--subset", nargs="+", default=["all"], choices=["all", "occlusion", "resolution"])
    src = e.add_mutually_exclusive_group()
    src.add_argument("--weights", help="weights file or training checkpoint (default: the bundled demo model)")
    src.add_argument("--results", help="a saved results file (.npz, docs/evaluation.md) to score instead of a model")
    e.add_argument("--engine", default="torch", choices=["torch", "onnxruntime"])
    e.add_argument("--device", default="cpu")
    e.add_argument("--det-thresh", type=float, default=0.5)
    e.add_argument("--max-queries", type=int, default=None)
    e.add_argument("--json", help="write the results as JSON here")
    e.add_argument("--save-results", help="also save detections and query embeddings as a results file")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export the detection and query graphs to ONNX")
    x.add_argument("--weights", help="weights file (default: the bundled demo model)")
    x.add_argument("--out", required=True, help="output folder for detect.onnx, query.onnx, model.json")
    x.set_defaults(func=cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
