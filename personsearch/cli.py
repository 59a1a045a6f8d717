"""The ``personsearch`` command: one CLI, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from personsearch.cli_ops import add_commands
from personsearch.runtime import WORKERS as WORKER_NAMES

logger = logging.getLogger("personsearch")


def _add_input_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("SHORT", "CAP"),
        help="resize every image to this shorter side, the longer side capped at CAP, instead of the weights file's "
        "own size (e.g. 480 800 for 640 x 480 images at their native resolution)",
    )


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


def cmd_synth_video(args: argparse.Namespace) -> int:
    from training.synth.video import main_synth_video

    overrides = _parse_set(args.set)
    overrides.update(seconds=args.seconds, fps=args.fps, width=args.width, height=args.height)
    summary = main_synth_video(
        Path(args.out), seed=args.seed, cameras=args.cameras, identities=args.identities, **overrides
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import load_train_config
    from training.engine import build_trainer, init_distributed

    overrides = _parse_set(args.set)
    if args.data:
        overrides["data.root"] = args.data
    if args.eval_data:
        overrides["data.eval_root"] = args.eval_data
    if args.output:
        overrides["output_dir"] = args.output
    if args.device:
        overrides["device"] = args.device
    init_distributed()
    cfg = load_train_config(args.config, overrides)
    trainer = build_trainer(cfg, resume=not args.no_resume)
    trainer.train()
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from training.engine import plot_runs

    runs: dict[str, Path] = {}
    for spec in args.runs:
        label, _, folder = spec.rpartition("=")
        runs[label or Path(folder).name] = Path(folder)
    out = plot_runs(runs, args.key, Path(args.out), smooth=args.smooth, marks=args.mark)
    print(f"wrote {out}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from training.pretrain import pretrain_backbone, pretrain_roi

    if args.stage == "roi":
        if not args.init:
            raise ValueError("--stage roi starts from the crop stage's weights: give them with --init")
        summary = pretrain_roi(
            Path(args.data), Path(args.out), Path(args.init), model_name=args.model, steps=args.steps, seed=args.seed
        )
    else:
        summary = pretrain_backbone(
            Path(args.data), Path(args.out), backbone=args.backbone, steps=args.steps, seed=args.seed
        )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from training.recipe import format_comparison, run_recipe

    summary = run_recipe(
        Path(args.data), Path(args.runs), tuple(args.losses), scale=args.scale, device=args.device,
        gallery_size=args.gallery_size, train_overrides=_parse_set(args.set),
        train_data=Path(args.train_data) if args.train_data else None,
    )  # fmt: skip
    print(format_comparison(summary))
    print(f"written: {Path(args.runs) / 'recipe.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from training.datasets.cuhk_sysu import CUHKSYSU
    from training.evaluation import evaluate_results, format_table, load_results

    if args.results and args.gt_boxes:
        raise ValueError("--gt-boxes embeds the annotated boxes with a model; a saved results file has no model")
    if args.results and args.input_size:
        raise ValueError("--input-size resizes a model's input; a saved results file has no model")
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

        engine = load_engine(
            args.engine, Path(args.weights) if args.weights else None, device=args.device, input_size=args.input_size
        )
        results = evaluate_engine(
            engine,
            dataset,
            args.gallery_size,
            subsets,
            det_thresh=args.det_thresh,
            max_queries=args.max_queries,
            results_path=Path(args.save_results) if args.save_results else None,
            gt_boxes=args.gt_boxes,
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

    model = load_model(Path(args.weights) if args.weights else None, input_size=args.input_size)
    paths = export_onnx(model, Path(args.out))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _settings(args: argparse.Namespace) -> Any:
    from personsearch.settings import load_settings

    return load_settings(Path(args.config) if getattr(args, "config", None) else None)


def _redis_for_cli(args: argparse.Namespace) -> Any:
    """The configured Redis; with none configured, the private server of `personsearch up` (in data_dir)."""
    from personsearch.redis_server import PrivateRedis
    from personsearch.runtime import connect

    settings = _settings(args)
    if settings.redis_url:
        return connect(settings.redis_url), None
    server = PrivateRedis(Path(settings.data_dir) / "redis")
    if server.socket.exists():
        client = server.client()
        try:
            client.ping()
            return client, None  # `personsearch up` is running: talk to its Redis
        except Exception:
            pass
    return server.start().client(), server  # nothing running: open the persistent data directly


def cmd_up(args: argparse.Namespace) -> int:
    from personsearch.runtime import up

    return up(_settings(args), workers=args.workers or None, duration_s=args.duration)


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from personsearch.runtime import run_worker

    settings = _settings(args)
    if not settings.redis_url:
        raise ValueError("a lone worker needs redis_url (PERSONSEARCH_REDIS_URL or the settings file)")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logging.getLogger().setLevel(settings.log_level)
    if settings.metrics_port:  # a lone worker (a container) serves its own metrics
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
        logger.info("metrics on http://0.0.0.0:%d/metrics", settings.metrics_port)
    run_worker(args.name, settings, settings.redis_url, stop)
    return 0


def cmd_cameras(args: argparse.Namespace) -> int:
    from ingest.cameras import CameraConfig, CameraRegistry, load_cameras_file
    from personsearch.streams import Keys

    r, server = _redis_for_cli(args)
    try:
        registry = CameraRegistry(r, Keys(_settings(args).key_prefix))
        if args.action == "add":
            cfg = CameraConfig(
                id=args.id, url=args.url, fps=args.fps, max_size=args.max_size, loop=args.loop,
                enabled=not args.disabled, name=args.name or "",
            )  # fmt: skip
            registry.add(cfg)
            print(f"camera {cfg.id} added")
        elif args.action == "import":
            for cfg in load_cameras_file(Path(args.file)):
                registry.add(cfg)
                print(f"camera {cfg.id} added")
        elif args.action == "update":
            changes = _parse_set(args.set)
            print(registry.update(args.id, **changes).model_dump_json(indent=2))
        elif args.action == "remove":
            registry.remove(args.id)
            print(f"camera {args.id} removed")
        else:  # list / status
            rows = []
            for c in registry.list():
                st = registry.status(c.id)
                rows.append(
                    f"{c.id:<16} {st.state.value:<12} {st.fps:>5.1f} fps  frames {st.frames:<7} dropped "
                    f"{st.dropped:<5} corrupt {st.corrupt:<4} reconnects {st.reconnects:<4} {c.describe()}"
                    + (f"\n{'':<16} last error: {st.last_error}" if st.last_error else "")
                )
            print("\n".join(rows) if rows else "no cameras registered")
    finally:
        if server is not None:
            server.stop()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from personsearch.settings import Settings

    if args.action == "schema":
        print(json.dumps(Settings.model_json_schema(), indent=2))
    else:
        print(_settings(args).model_dump_json(indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="personsearch", description="Person search for live video (OIM).")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate a synthetic person-search world in the CUHK-SYSU layout")
    s.add_argument("--out", required=True, help="output folder (the dataset root)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--preset", default="default",
        help="default (the test split everything is scored on), tiny (tests), train3k (3,000 rarely seen identities), "
        "test200 (200 query identities, for choosing between networks)",
    )  # fmt: skip
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a SynthConfig field")
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("synth-video", help="render synthetic surveillance videos with per-frame ground truth")
    v.add_argument("--out", required=True, help="output folder (videos, ground truth, photos, cameras.json)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--cameras", type=int, default=2)
    v.add_argument("--identities", type=int, default=3, help="named identities who pass several cameras")
    v.add_argument("--seconds", type=float, help="video length (default 20)")
    v.add_argument("--fps", type=int, help="frames per second (default 10)")
    v.add_argument("--width", type=int, help="frame width in pixels, even (default 640)")
    v.add_argument("--height", type=int, help="frame height in pixels, even (default 480)")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a CameraVideoConfig field")
    v.set_defaults(func=cmd_synth_video)

    t = sub.add_parser("train", help="train the joint model (torchrun for several GPUs)")
    t.add_argument("--config", required=True, help="a YAML file, or a bundled name such as oim-r18-synth")
    t.add_argument("--data", help="dataset root (overrides data.root)")
    t.add_argument("--eval-data", help="evaluate on this dataset's test split instead (overrides data.eval_root)")
    t.add_argument("--output", help="run folder (overrides output_dir)")
    t.add_argument("--device", help="cpu, cuda or auto")
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. solver.max_iters=100"
    )
    t.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    t.set_defaults(func=cmd_train)

    cv = sub.add_parser("curves", help="compare training runs: one logged metric against iterations, to a PNG")
    cv.add_argument("runs", nargs="+", metavar="[LABEL=]RUN", help="run folders (with metrics.csv), optionally labeled")
    cv.add_argument("--key", default="loss_id", help="the metrics.csv column to plot (default loss_id)")
    cv.add_argument("--smooth", type=int, default=1, help="moving mean over this many logged points")
    cv.add_argument("--mark", type=float, action="append", default=[], help="a horizontal reference line (repeatable)")
    cv.add_argument("--out", required=True, help="the PNG to write")
    cv.set_defaults(func=cmd_curves)

    pt = sub.add_parser("pretrain", help="pre-train a backbone on the training identities (crops, then RoIs)")
    pt.add_argument(
        "--stage", choices=["crops", "roi"], default="crops",
        help="crops: classify identity crops; roi: classify identities through the joint network's RoI path",
    )  # fmt: skip
    pt.add_argument("--init", help="roi stage: the crop stage's state dict")
    pt.add_argument("--model", default="oim-r18-demo", help="roi stage: the network configuration")
    pt.add_argument("--data", required=True, help="dataset root in the CUHK-SYSU layout")
    pt.add_argument("--out", required=True, help="state dict to write (a JSON summary goes beside it)")
    pt.add_argument("--backbone", default="resnet18")
    pt.add_argument("--steps", type=int, default=600)
    pt.add_argument("--seed", type=int, default=0)
    pt.set_defaults(func=cmd_pretrain)

    rc = sub.add_parser(
        "recipe", help="the demo model's whole recipe (pre-training, joint training, fine-tuning) for OIM and Softmax"
    )
    rc.add_argument("--data", required=True, help="dataset root in the CUHK-SYSU layout (personsearch synth)")
    rc.add_argument("--runs", default="runs/recipe", help="folder of every step's output; finished steps are skipped")
    rc.add_argument("--train-data", help="train every step on this dataset instead (evaluation stays on --data)")
    rc.add_argument("--losses", nargs="+", default=["oim", "softmax"], choices=["oim", "softmax"])
    rc.add_argument("--scale", type=float, default=1.0, help="multiplies every step's iterations (GPU: 10 or more)")
    rc.add_argument("--device", default="auto", help="cpu, cuda or auto")
    rc.add_argument("--gallery-size", type=int, default=100)
    rc.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="training-config override for the joint and fine-tuning steps, e.g. solver.cpu_bf16=true",
    )  # fmt: skip
    rc.set_defaults(func=cmd_recipe)

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
    e.add_argument(
        "--gt-boxes",
        action="store_true",
        help="score identification alone: the gallery is every annotated person, embedded like a query, "
        "instead of the detector's output (detection AP and recall are then 1 by construction)",
    )
    _add_input_size(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export the detection and query graphs to ONNX")
    x.add_argument("--weights", help="weights file (default: the bundled demo model)")
    x.add_argument("--out", required=True, help="output folder for detect.onnx, query.onnx, model.json")
    _add_input_size(x)
    x.set_defaults(func=cmd_export)

    u = sub.add_parser("up", help="run every worker of the pipeline (supervised) until Ctrl-C")
    u.add_argument("--config", help="settings YAML (docs/operations.md); environment PERSONSEARCH_* overrides it")
    u.add_argument("--workers", nargs="+", choices=list(WORKER_NAMES), help="only these")
    u.add_argument("--duration", type=float, help="stop after this many seconds")
    u.set_defaults(func=cmd_up)

    w = sub.add_parser("worker", help="run one worker against a shared Redis (scale out across machines)")
    w.add_argument("name", choices=list(WORKER_NAMES))
    w.add_argument("--config", help="settings YAML")
    w.set_defaults(func=cmd_worker)

    c = sub.add_parser("cameras", help="register, list, update and remove cameras")
    c.add_argument("--config", help="settings YAML")
    csub = c.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("add", help="register a camera")
    ca.add_argument("id")
    ca.add_argument("url", help="rtsp://, http(s)://, file:// URL or a video file path")
    ca.add_argument("--fps", type=float, default=5.0)
    ca.add_argument("--max-size", type=int, default=1280, help="longest frame side after resizing")
    ca.add_argument("--loop", action="store_true", help="files: start again at the end")
    ca.add_argument("--disabled", action="store_true")
    ca.add_argument("--name")
    ci = csub.add_parser("import", help="register the cameras of a YAML/JSON list")
    ci.add_argument("file")
    cu = csub.add_parser("update", help="change fields of a camera")
    cu.add_argument("id")
    cu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. fps=2 or enabled=false")
    cr = csub.add_parser("remove", help="remove a camera")
    cr.add_argument("id")
    csub.add_parser("list", help="cameras with their live status")
    csub.add_parser("status", help="same as list")
    c.set_defaults(func=cmd_cameras)

    g = sub.add_parser("config", help="the settings: JSON schema or effective values")
    g.add_argument("action", choices=["schema", "show"])
    g.add_argument("--config", help="settings YAML")
    g.set_defaults(func=cmd_config)
    add_commands(sub)
    _config_after_the_action(sub)
    return p


def _config_after_the_action(sub: Any) -> None:
    """Let `--config` also follow the action (`personsearch cameras list --config s.yaml`), not only precede it."""
    for group in sub.choices.values():
        for action in group._actions:
            if isinstance(action, argparse._SubParsersAction):
                for leaf in action.choices.values():
                    if not any("--config" in a.option_strings for a in leaf._actions):
                        leaf.add_argument("--config", default=argparse.SUPPRESS, help="settings YAML")


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
    except KeyError as err:  # an unknown alert, webhook or API key id
        logger.error("%s", err.args[0] if err.args else err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
