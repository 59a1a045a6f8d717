"""Pipeline overhead and latency: detector-only frames/s vs end-to-end frames/s with 1, 2 and 4 cameras, and
capture-to-indexed latency p50/p95, saturated and at partial load.

Run: python bench/bench_pipeline.py [--weights W | --random-init CONFIG] [--engine onnxruntime|torch]
                                    [--cameras 1 2 4] [--seconds 30] [--max-batch 4] [--videos DIR] [--no-record]

For every camera count N, four measurements, one right after the other (so drifting background load on the machine
hits them alike):

1. Detector-only: ``engine.detect`` on frames decoded from the camera videos (resized and JPEG round-tripped as ingest
   does), in batches of ``--max-batch`` as the service forms them, for ``--seconds``.
2. Saturated end to end: a private redis-server and every worker of ``personsearch up`` (ingest, detector, tracker,
   indexer): by default ingest, tracker and indexer as processes of their own as `personsearch up` runs them, the
   detector (with the engine) in this process; ``--workers threads`` makes them all threads of this process. N
   looping file cameras together offer ``--saturate`` (1.25) times the detector-only rate, so the detector is the
   bottleneck and frames queue in their streams (bounded to hold every frame of the run: nothing is dropped, and
   drops are counted anyway). After a warm-up, throughput is detection messages published per second in a
   ``--seconds`` window, timed from the first to the last batch published in it (whole batches, so a window of few
   batches is not off by one). CPU seconds of every worker process and of the redis-server over the same window,
   per frame published, show where the CPU goes.
3. Detector-only again; overhead is ``1 - end_to_end / mean(detector_only before, after)``. The goal is an overhead
   under 10 %.
4. Partial load: the same pipeline with the cameras offering ``--load`` (0.5) times the detector-only rate, so no
   queue builds up, for the latency a deployment sized with headroom sees.

Capture-to-indexed latency: for every ``open`` and ``update`` tracklet event the indexer applies during the timed
window, the wall-clock time from the capture of the tracklet's last frame (the frame whose detections produced the
event, ``TrackletEvent.end_ts``) to the moment the indexer finished applying it. ``close`` events are left out: a
tracklet closes ``max_gap_s`` after its last frame by design. When saturated the frame queue grows through the run,
so that latency grows with the run's length; it is reported for completeness, the partial-load figure is the one to
size a deployment with.

Speed depends on the architecture, not on the weights' values (see bench_detector.py), so without the bundled demo
weights a seeded random network of ``oim-r18-demo`` stands in. Its scores mean nothing, so its ``det_thresh`` is
calibrated on the benchmark frames to publish ``--persons-per-frame`` (5) detections per frame on average, about the
number of people in view, which keeps the crop, tracker and index work realistic.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import numpy as np
import redis
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from detector.config import get_model_config
from detector.engine import Engine, OnnxRuntimeEngine, TorchEngine, load_engine
from detector.export import export_onnx
from detector.model import build_model
from detector.service import DetectorOptions, DetectorService
from detector.weights import DEMO_WEIGHTS
from index.service import IndexerOptions, IndexerService, TrackerService
from index.tracker import TrackerOptions
from ingest.cameras import CameraConfig, CameraRegistry
from ingest.decoder import IngestOptions, encode_jpeg, fit_size
from ingest.service import IngestService
from personsearch.redis_server import PrivateRedis
from personsearch.streams import Keys, TrackletEvent
from training.synth.video import CameraVideoConfig, render_camera_set

logger = logging.getLogger("bench_pipeline")

MAX_SIZE = 640  # cameras are resized to this longest side (the rendered videos are 640 x 480)
FRAMES_PER_VIDEO = 16  # distinct frames per camera video for the detector-only measurement
FIRST_DETECTION_TIMEOUT_S = 300.0


# -- the model -------------------------------------------------------------------------------------------------------


@dataclass
class Model:
    """The engine under test and how it was made."""

    engine: Engine
    description: str
    trained: bool


def build_engine(args: argparse.Namespace, stack: contextlib.ExitStack) -> Model:
    """The engine of ``--engine`` from ``--weights``, the bundled demo weights, or a seeded random network."""
    random_init = args.random_init
    if random_init is None and args.weights is None and not DEMO_WEIGHTS.is_file():
        logger.info("no bundled demo weights at %s: using a seeded random oim-r18-demo", DEMO_WEIGHTS)
        random_init = "oim-r18-demo"
    if random_init is None:
        weights = Path(args.weights) if args.weights else None
        engine = load_engine(args.engine, weights, device=args.device, threads=args.engine_threads)
        return Model(engine, f"{engine.model_name} weights from {weights or 'the bundled demo model'}", True)
    torch.manual_seed(0)
    model = build_model(get_model_config(random_init)).eval()
    description = f"{random_init}, seeded random weights"
    if args.engine == "torch":
        return Model(TorchEngine(model, args.device, args.engine_threads), description, False)
    onnx_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipeline-onnx-")))
    logger.info("exporting the random network to ONNX")
    with warnings.catch_warnings():  # the exporter's tracer warnings are about torchvision internals, not ours
        warnings.simplefilter("ignore")
        export_onnx(model, onnx_dir)
    return Model(OnnxRuntimeEngine(onnx_dir, threads=args.engine_threads), description, False)


def engine_details(engine: Engine) -> str:
    """Execution providers or device of the engine, for the record."""
    if isinstance(engine, OnnxRuntimeEngine):
        threads = engine.detect_session.get_session_options().intra_op_num_threads
        return f"onnxruntime on {', '.join(engine.providers)} ({threads or 'default'} threads)"
    if isinstance(engine, TorchEngine):
        return f"torch eager on {engine.device} ({torch.get_num_threads()} threads)"
    return engine.name


def on_accelerator(engine: Engine) -> bool:
    """True when the engine runs on a GPU (the cameras then need faster videos to saturate it)."""
    if isinstance(engine, OnnxRuntimeEngine):
        return engine.providers[0] != "CPUExecutionProvider"
    return isinstance(engine, TorchEngine) and engine.device.type != "cpu"


# -- videos and frames -----------------------------------------------------------------------------------------------


def camera_videos(args: argparse.Namespace, count: int, video_fps: int, stack: contextlib.ExitStack) -> list[Path]:
    """``count`` looping video files: from ``--videos`` (reused in turn if there are fewer), else rendered once."""
    if args.videos:
        found = sorted(Path(args.videos).glob("*.mp4"))
        if not found:
            raise SystemExit(f"no .mp4 files in {args.videos}")
        return [found[i % len(found)] for i in range(count)]
    out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipeline-videos-")))
    config = CameraVideoConfig(width=640, height=480, fps=video_fps, seconds=args.video_seconds)
    logger.info("rendering %d camera video(s), 640x480, %d fps, %.0f s each", count, video_fps, args.video_seconds)
    summary = render_camera_set(out, seed=0, cameras=count, watch_identities=2, config=config, progress=False)
    logger.info("rendered %d frames in %.0f s", summary.frames, summary.seconds)
    return [cam.video for cam in summary.cameras]


def video_rate(path: Path) -> float:
    """Frames per second of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 25)


def decoded_frames(videos: list[Path], per_video: int, jpeg_quality: int) -> list[np.ndarray]:
    """RGB (H, W, 3) uint8 frames spread over each video, resized and JPEG round-tripped exactly as ingest does."""
    out: list[np.ndarray] = []
    for path in dict.fromkeys(videos):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            total = stream.frames or per_video
            step = max(1, total // per_video)
            taken = 0
            for i, frame in enumerate(container.decode(stream)):
                if i % step or taken >= per_video:
                    continue
                width, height = fit_size(frame.width, frame.height, MAX_SIZE)
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                with Image.open(io.BytesIO(encode_jpeg(rgb, jpeg_quality))) as img:
                    out.append(np.asarray(img.convert("RGB")))
                taken += 1
    return out


# -- CPU time --------------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread) so far; NaN where /proc cannot tell (not Linux)."""
    if pid == os.getpid():
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


# -- detector only ---------------------------------------------------------------------------------------------------


def calibrated_threshold(engine: Engine, frames: list[np.ndarray], batch: int, per_frame: int) -> float:
    """The score threshold that keeps ``per_frame`` detections per frame on average over ``frames`` (also warms up)."""
    scores: list[np.ndarray] = []
    for i in range(0, len(frames), batch):
        scores += [d.scores for d in engine.detect(frames[i : i + batch])]
    pooled = np.sort(np.concatenate(scores))[::-1]
    if len(pooled) == 0:
        return 0.0
    return float(pooled[min(len(pooled), per_frame * len(frames)) - 1])


def detector_only_fps(engine: Engine, frames: list[np.ndarray], batch: int, seconds: float) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of ``engine.detect`` in batches of ``batch`` over ``frames`` for
    ``seconds``, after a warm-up."""
    engine.detect(frames[:batch])
    done, start, cpu0 = 0, time.perf_counter(), cpu_seconds(os.getpid())
    while time.perf_counter() - start < seconds:
        first = done % len(frames)
        engine.detect((frames + frames[:batch])[first : first + batch])
        done += batch
    return done / (time.perf_counter() - start), (cpu_seconds(os.getpid()) - cpu0) / done


# -- the pipeline ----------------------------------------------------------------------------------------------------


class TimedDetector(DetectorService):
    """The detector service, noting when each batch was published and the running count of frames it published."""

    def __init__(self, r: redis.Redis, keys: Keys, engine: Engine, options: DetectorOptions) -> None:
        super().__init__(r, keys, engine, options, "bench-detector")
        self.published: list[tuple[float, int]] = []  # (Unix seconds after the batch, frames_done)

    def step(self) -> int:
        """Run one batch, then note the time (the list append is atomic under the GIL)."""
        handled = super().step()
        if handled:
            self.published.append((time.time(), self.frames_done))
        return handled

    def rate(self, t0: float, t1: float) -> float | None:
        """Frames/s published between the first and the last batch that ended in [t0, t1); None under two batches.

        Batch boundaries, not the window's edges: a window holds few batches on a CPU, and counting whole batches
        in a fixed window would be off by up to a batch.
        """
        inside = [(t, n) for t, n in list(self.published) if t0 <= t < t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


APPLIED = "bench:applied"  # Redis list of "applied_at|event|end_ts", one per tracklet event the indexer applied


class TimedIndexer(IndexerService):
    """The indexer, noting in Redis when it applied each tracklet event and the capture time of its last frame.

    In Redis rather than in memory so that it works alike when the indexer is a thread and a process.
    """

    def apply(self, event: TrackletEvent) -> None:
        """Apply the event, then note the time."""
        super().apply(event)
        self.r.rpush(APPLIED, f"{time.time()!r}|{event.event}|{event.end_ts!r}")


def applied_events(r: redis.Redis) -> list[tuple[float, str, float]]:
    """(applied at, event kind, end_ts) of every event the indexer applied, Unix seconds."""
    out = []
    rows: list[bytes] = r.lrange(APPLIED, 0, -1)  # type: ignore[assignment]
    for raw in rows:
        applied, kind, end = raw.decode().split("|")
        out.append((float(applied), kind, float(end)))
    return out


@dataclass(frozen=True)
class RunSpec:
    """One end-to-end run: which cameras at what rate, and the worker settings."""

    videos: list[Path]
    camera_fps: float
    detector: DetectorOptions
    tracker: TrackerOptions
    frame_stream_maxlen: int
    embedding_dim: int


@dataclass
class RunResult:
    """What one end-to-end run measured over its timed window."""

    fps: float
    latencies: list[float]
    dropped: int
    saturated: bool
    persons_per_frame: float
    backlog: tuple[int, int]  # frames queued before the detector at the start and end of the window
    events: dict[str, int] = field(default_factory=dict)
    cpu_per_frame: dict[str, float] = field(default_factory=dict)  # worker -> CPU seconds per detected frame

    def latency(self, q: float) -> float | None:
        """The q-th percentile of capture-to-indexed latency in seconds, or None without events."""
        return float(np.percentile(self.latencies, q)) if self.latencies else None


WorkerMode = Literal["processes", "threads"]


def side_worker(name: str, redis_url: str, prefix: str, spec: RunSpec, index_dir: Path, model: str, stop: Any) -> None:
    """Entry point of the ingest, tracker or indexer process (``--workers processes``)."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    r = redis.Redis.from_url(redis_url)
    worker = build_side_worker(name, r, Keys(prefix), spec, index_dir, model)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole group: the parent sets ``stop``
        worker.run(stop)


def build_side_worker(name: str, r: redis.Redis, keys: Keys, spec: RunSpec, index_dir: Path, model: str) -> Any:
    """The ingest, tracker or indexer service of one run."""
    if name == "ingest":
        return IngestService(r, keys, IngestOptions(frame_stream_maxlen=spec.frame_stream_maxlen), 0.2)
    if name == "tracker":
        return TrackerService(r, keys, spec.tracker, consumer_name="bench-tracker")
    return TimedIndexer(r, keys, IndexerOptions(directory=index_dir, dim=spec.embedding_dim), model=model)


class Pipeline:
    """Every worker of `personsearch up` on its own private redis-server.

    ``processes`` (the default, as `personsearch up` runs them): ingest, tracker and indexer are processes of their
    own and the detector (with the engine) runs in this one. ``threads``: all four are threads of this process,
    sharing one GIL with the engine's caller.
    """

    SIDE_WORKERS = ("ingest", "tracker", "indexer")

    def __init__(self, engine: Engine, spec: RunSpec, work_dir: Path, mode: WorkerMode = "processes") -> None:
        self.engine, self.spec, self.work_dir, self.mode = engine, spec, work_dir, mode
        self.keys = Keys("bench")
        self.stop = threading.Event()
        self.mp = multiprocessing.get_context("spawn")  # no fork of a process holding engine threads
        self.stop_processes = self.mp.Event()
        self.server = PrivateRedis()
        self.threads: list[threading.Thread] = []
        self.processes: list[Any] = []
        self.r: redis.Redis | None = None
        self.cameras = [f"cam{i}" for i in range(len(spec.videos))]

    def __enter__(self) -> Pipeline:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.server.start()
        r = self.r = self.server.client()
        registry = CameraRegistry(r, self.keys)
        for camera, video in zip(self.cameras, self.spec.videos):
            cfg = CameraConfig(id=camera, url=f"file://{video}", fps=self.spec.camera_fps, max_size=MAX_SIZE, loop=True)
            registry.add(cfg)
        self.detector = TimedDetector(r, self.keys, self.engine, self.spec.detector)
        workers: list[tuple[str, Any]] = [("detector", self.detector)]
        index_dir = self.work_dir / "index"
        for name in self.SIDE_WORKERS:
            if self.mode == "threads":
                workers.append(
                    (name, build_side_worker(name, r, self.keys, self.spec, index_dir, self.engine.model_name))
                )
                continue
            args = (name, self.server.url, self.keys.prefix, self.spec, index_dir, self.engine.model_name)
            proc = self.mp.Process(target=side_worker, args=(*args, self.stop_processes), name=f"bench-{name}")
            proc.start()
            self.processes.append(proc)
        for name, worker in workers:
            thread = threading.Thread(target=worker.run, args=(self.stop,), name=f"bench-{name}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def pids(self) -> dict[str, int]:
        """Process id of every worker process and of the redis-server (``threads``: one process holds all four)."""
        out = {"detector" if self.mode == "processes" else "all workers": os.getpid()}
        out.update((name, proc.pid) for name, proc in zip(self.SIDE_WORKERS, self.processes))
        if self.server.proc is not None:
            out["redis-server"] = self.server.proc.pid
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by every process of the pipeline."""
        return {name: cpu_seconds(pid) for name, pid in self.pids().items()}

    def alive(self) -> bool:
        """Every worker thread and process is still running."""
        return all(t.is_alive() for t in self.threads) and all(p.is_alive() for p in self.processes)

    def close(self) -> None:
        """Stop every worker thread and process, then the redis-server."""
        self.stop.set()
        self.stop_processes.set()
        try:
            for thread in self.threads:
                thread.join(60)
                if thread.is_alive():
                    logger.warning("%s did not stop within 60 s", thread.name)
            for proc in self.processes:
                proc.join(60)
                if proc.is_alive():
                    logger.warning("%s did not stop within 60 s: killing it", proc.name)
                    proc.kill()
                    proc.join(5)
        finally:  # even when a second Ctrl-C cuts the joins short, the server goes
            if self.r is not None:
                self.r.close()
            self.server.stop()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def detections(self) -> int:
        """Detection messages published so far (one per frame)."""
        assert self.r is not None
        return int(self.r.xlen(self.keys.detections))

    def counters(self) -> tuple[int, int]:
        """(frames published by ingest, unread frames dropped) over every camera."""
        assert self.r is not None
        registry = CameraRegistry(self.r, self.keys)
        statuses = [registry.status(c) for c in self.cameras]
        return sum(s.frames for s in statuses), sum(s.dropped for s in statuses)

    def persons_per_frame(self, last: int = 50) -> float:
        """Mean published detections per frame over the last ``last`` detection messages."""
        assert self.r is not None
        entries: Any = self.r.xrevrange(self.keys.detections, count=last)
        counts = [len(json.loads(fields[b"meta"])["boxes"]) for _, fields in entries]
        return float(np.mean(counts)) if counts else 0.0


def measure(p: Pipeline, warmup_s: float, seconds: float, batch: int) -> RunResult:
    """Wait for the first detection and ``warmup_s``, then time ``seconds`` of the running pipeline."""
    deadline = time.monotonic() + FIRST_DETECTION_TIMEOUT_S
    while p.detections() == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no detection published within {FIRST_DETECTION_TIMEOUT_S:.0f} s")
        if not p.alive():
            raise RuntimeError("a pipeline worker died before the first detection")
        time.sleep(0.1)
    time.sleep(warmup_s)
    t0, d0, cpu0 = time.time(), p.detections(), p.cpu()
    backlog0 = p.counters()[0] - d0
    time.sleep(seconds)
    t1, d1, cpu1 = time.time(), p.detections(), p.cpu()
    published, dropped = p.counters()
    backlog1 = published - d1
    assert p.r is not None
    window = [(kind, applied - captured) for applied, kind, captured in applied_events(p.r) if t0 <= applied < t1]
    events: dict[str, int] = {}
    for kind, _ in window:
        events[kind] = events.get(kind, 0) + 1
    return RunResult(
        fps=p.detector.rate(t0, t1) or (d1 - d0) / (t1 - t0),
        latencies=[lag for kind, lag in window if kind != "close"],
        dropped=dropped,
        saturated=min(backlog0, backlog1) >= batch,
        persons_per_frame=p.persons_per_frame(),
        backlog=(backlog0, backlog1),
        events=events,
        cpu_per_frame={name: (cpu1[name] - cpu0[name]) / max(1, d1 - d0) for name in cpu0},
    )


def run_pipeline(
    engine: Engine, spec: RunSpec, warmup_s: float, seconds: float, label: str, mode: WorkerMode = "processes"
) -> RunResult:
    """One end-to-end run on a fresh redis-server; every thread and the server are stopped on return or Ctrl-C."""
    logger.info(
        "%s: %d camera(s) at %.2f frames/s each, warm-up %.0f s, timed %.0f s",
        label, len(spec.videos), spec.camera_fps, warmup_s, seconds,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-run-") as tmp, Pipeline(engine, spec, Path(tmp), mode) as p:
        result = measure(p, warmup_s, seconds, spec.detector.max_batch)
        logger.info("%s: stopping the pipeline", label)
    lat = (
        f"latency p50 {result.latency(50):.2f} s, p95 {result.latency(95):.2f} s over {len(result.latencies)} events"
        if result.latencies
        else "no tracklet events indexed"
    )
    logger.info(
        "%s: %.2f frames/s end to end, %s; backlog %d -> %d, %d dropped, %.1f persons/frame, events %s",
        label, result.fps, lat, *result.backlog, result.dropped, result.persons_per_frame, result.events,
    )  # fmt: skip
    return result


# -- the benchmark ---------------------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _latency(result: RunResult) -> str:
    return f"{_seconds(result.latency(50))} / {_seconds(result.latency(95))}"


def run_spec(args: argparse.Namespace, videos: list[Path], fps: float, thresh: float, dim: int) -> RunSpec:
    """Settings of one end-to-end run with ``len(videos)`` cameras at ``fps`` each."""
    run_s = FIRST_DETECTION_TIMEOUT_S + args.warmup + args.seconds
    return RunSpec(
        videos=videos,
        camera_fps=fps,
        detector=DetectorOptions(max_batch=args.max_batch, det_thresh=thresh),
        # A tracklet survives a few missed frames at any camera rate, as at the default rate.
        tracker=TrackerOptions(max_gap_s=max(2.0, 3.0 / fps)),
        frame_stream_maxlen=math.ceil(fps * run_s) + 100,  # every frame of the run fits: the bound never drops
        embedding_dim=dim,
    )


def camera_rate(total: float, cameras: int, video_fps: float) -> float:
    """Per-camera frames/s for ``total`` over ``cameras``, at most what a looping file of ``video_fps`` delivers."""
    return min(total / cameras, video_fps, 60.0)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="weights file (default: the bundled demo model when present)")
    src.add_argument("--random-init", metavar="CONFIG", help="a seeded random network of this model config instead")
    p.add_argument("--engine", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument("--device", default="cpu", help="torch engine device")
    p.add_argument(
        "--engine-threads", type=int, default=0,
        help="CPU threads of the engine (the `engine.threads` setting; default: the runtime's, one per core)",
    )  # fmt: skip
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4], help="camera counts to run")
    p.add_argument("--seconds", type=float, default=30.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after the first detection before timing")
    p.add_argument("--max-batch", type=int, default=4, help="detector batch size (the service's max_batch)")
    p.add_argument("--saturate", type=float, default=1.25, help="offered load of the saturated run / detector-only")
    p.add_argument("--load", type=float, default=0.5, help="offered load of the partial-load run / detector-only")
    p.add_argument("--det-thresh", type=float, help="detection threshold (default 0.5 trained, calibrated random)")
    p.add_argument("--persons-per-frame", type=int, default=5, help="random weights: calibrate det_thresh to this")
    p.add_argument("--videos", help="folder of .mp4 camera videos to loop instead of rendering them")
    p.add_argument("--video-fps", type=int, help="rendered video rate (default 15 on CPU, 60 on a GPU)")
    p.add_argument("--video-seconds", type=float, default=12.0, help="rendered video length (the cameras loop)")
    p.add_argument(
        "--workers", choices=("processes", "threads"), default="processes",
        help="ingest, tracker and indexer as processes (as `personsearch up` runs them) or threads of this one",
    )  # fmt: skip
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    if min(args.cameras) < 1 or args.max_batch < 1 or args.seconds <= 0 or not 0 < args.load < 1 < args.saturate:
        p.error("--cameras, --max-batch and --seconds must be positive, --load in (0, 1), --saturate above 1")
    return args


@dataclass(frozen=True)
class Workload:
    """What every camera count shares: the engine, the frames, the videos and the detection threshold."""

    engine: Engine
    frames: list[np.ndarray]
    videos: list[Path]
    video_fps: float
    det_thresh: float
    embedding_dim: int


CPU_WORKERS = ("detector", "ingest", "tracker", "indexer", "redis-server")


Row = list[object]


def camera_count_rows(args: argparse.Namespace, w: Workload, n: int, notes: list[str]) -> tuple[Row, Row]:
    """Detector-only, saturated and partial-load runs with ``n`` cameras: a row of the main table and one of the
    CPU table."""
    logger.info("%d camera(s): detector-only for %.0f s", n, args.seconds)
    det_fps, engine_cpu = detector_only_fps(w.engine, w.frames, args.max_batch, args.seconds)
    logger.info("%d camera(s): detector-only %.2f frames/s", n, det_fps)
    sat_fps = camera_rate(args.saturate * det_fps, n, w.video_fps)
    if sat_fps * n < args.saturate * det_fps:
        notes.append(
            f"{n} camera(s): {n} x {w.video_fps:g} fps videos cannot offer {args.saturate} x the detector's rate; "
            "raise --video-fps (at most 60) or add cameras"
        )
        logger.warning(notes[-1])
    spec = run_spec(args, w.videos[:n], sat_fps, w.det_thresh, w.embedding_dim)
    sat = run_pipeline(w.engine, spec, args.warmup, args.seconds, "saturated", args.workers)
    # Detector-only again right after: the overhead is taken against the mean of the two, so that drifting
    # background load on the machine does not pass for overhead (or hide it).
    det_after, engine_cpu_after = detector_only_fps(w.engine, w.frames, args.max_batch, args.seconds)
    logger.info("%d camera(s): detector-only after the saturated run %.2f frames/s", n, det_after)
    det_mean, engine_cpu = (det_fps + det_after) / 2, (engine_cpu + engine_cpu_after) / 2
    part_fps = camera_rate(args.load * det_mean, n, w.video_fps)
    spec = run_spec(args, w.videos[:n], part_fps, w.det_thresh, w.embedding_dim)
    part = run_pipeline(w.engine, spec, args.warmup, args.seconds, f"{args.load:.0%} load", args.workers)
    cpu = sat.cpu_per_frame
    workers = [k for k in CPU_WORKERS if k in cpu] if args.workers == "processes" else ["all workers", "redis-server"]
    cpu_row: Row = [n, f"{engine_cpu * 1000:.0f}"]
    cpu_row += [f"{cpu[k] * 1000:.0f}" for k in workers]
    cpu_row += [f"{sum(cpu.values()) * 1000:.0f}", f"{(os.cpu_count() or 1) / sat.fps * 1000:.0f}"]
    row: Row = [
        n,
        f"{det_fps:.2f} / {det_after:.2f}",
        f"{sat.fps:.2f}" + ("" if sat.saturated else " (not saturated)"),
        f"{(1 - sat.fps / det_mean) * 100:.1f} %",
        _latency(sat),
        _latency(part),
        f"{sat.dropped} / {part.dropped}",
        f"{sat.persons_per_frame:.1f}",
    ]
    return row, cpu_row


WORKER_TEXT = {
    "processes": "ingest, tracker and indexer as processes of their own (as `personsearch up` runs them), the "
    "detector with the engine in the benchmark's process",
    "threads": "ingest, detector, tracker and indexer as threads of one process",
}


def record_body(
    args: argparse.Namespace, model: Model, w: Workload, how: str, tables: tuple[str, str], notes: list[str]
) -> str:
    """The text of the pipeline section of docs/benchmarks.md: setup, definitions, goal, table."""
    videos = f"{'rendered synthetic ' if not args.videos else ''}640x480 videos at {w.video_fps:g} fps"
    return (
        f"Model: {model.description}; engine: {engine_details(w.engine)}; det_thresh {w.det_thresh:.4f} ({how}); "
        f"detector max_batch {args.max_batch}. Machine: {os.cpu_count()} logical CPUs. Cameras: looping {videos}. "
        f"Workers: {WORKER_TEXT[args.workers]}, on a private redis-server.\n\n"
        f"Detector-only is `engine.detect` on frames decoded from the same videos, in batches of {args.max_batch}, "
        "measured just before and just after the saturated run. End-to-end frames/s is detection messages "
        "published per second "
        f"(first to last batch of the timed window) while the cameras offer {args.saturate} x the detector-only "
        "rate, so the detector is the bottleneck and frames queue (bounded so that none is dropped); "
        "overhead = 1 - end-to-end / mean of the two detector-only figures. **Goal: overhead under 10 %.** "
        "Latency runs from the capture "
        "of a tracklet's last frame to the indexer applying its open or update event (close events wait max_gap_s "
        "by design and are left out). Saturated, it includes the growing frame queue, so the "
        f"{args.load:.0%}-load column (cameras offering {args.load} x the detector-only rate) is the one to size a "
        f"deployment with. Each measurement: {args.seconds:g} s after a {args.warmup:g} s warm-up.\n\n{tables[0]}\n\n"
        "Where the CPU goes, saturated: CPU milliseconds (user + system, every thread) per frame the detector "
        "published, by process, over the same window; the engine alone is the detector-only runs'. The last column "
        "is what the machine has per frame at the end-to-end rate (cores / frames/s): the workers' total can only "
        "reach it when every core is busy, and what the detector process spends beyond the engine alone plus what "
        f"the others spend is the overhead's cost in CPU.\n\n{tables[1]}"
        + "".join(f"\n\nNote: {note}" for note in notes)
    )


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    with contextlib.ExitStack() as stack:
        model = build_engine(args, stack)
        engine = model.engine
        videos = camera_videos(args, max(args.cameras), args.video_fps or (60 if on_accelerator(engine) else 15), stack)
        frames = decoded_frames(videos, FRAMES_PER_VIDEO, IngestOptions().jpeg_quality)
        logger.info("%d decoded frames of %s for the detector-only runs", len(frames), frames[0].shape)
        calibrated = calibrated_threshold(engine, frames, args.max_batch, args.persons_per_frame)
        if args.det_thresh is not None:
            thresh, how = args.det_thresh, "as given"
        elif model.trained:
            thresh, how = 0.5, "the service default"
        else:
            thresh, how = calibrated, f"calibrated to keep the top {args.persons_per_frame} per frame on average"
        logger.info("det_thresh %.4f (%s)", thresh, how)
        dim = int(engine.detect(frames[:1])[0].embeddings.shape[1])
        w = Workload(engine, frames, videos, video_rate(videos[0]), thresh, dim)
        notes: list[str] = []
        rows, cpu_rows = [], []
        for n in args.cameras:
            row, cpu_row = camera_count_rows(args, w, n, notes)
            rows.append(row)
            cpu_rows.append(cpu_row)
            print(row, cpu_row, flush=True)
    header = [
        "cameras",
        "detector-only frames/s (before / after)",
        "end-to-end frames/s (saturated)",
        "overhead",
        "latency p50 / p95 saturated (s)",
        f"latency p50 / p95 at {args.load:.0%} load (s)",
        "frames dropped (saturated / partial)",
        "persons/frame",
    ]
    table = markdown_table(header, rows)
    workers = list(CPU_WORKERS) if args.workers == "processes" else ["all workers", "redis-server"]
    cpu_header = ["cameras", "engine alone", *(f"{k}{' process' if k == 'detector' else ''}" for k in workers)]
    cpu_table = markdown_table([*cpu_header, "total", "available (cores / frames/s)"], cpu_rows)
    print(table)
    print(cpu_table)
    for note in notes:
        print(f"note: {note}")
    if not args.no_record:
        body = record_body(args, model, w, how, (table, cpu_table), notes)
        record("pipeline", "Pipeline: detector-only vs end to end, capture-to-indexed latency", body)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        logger.warning("interrupted: the pipeline threads and the redis-server were stopped")
        sys.exit(130)
