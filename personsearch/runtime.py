"""`personsearch up`: every worker of the pipeline as a supervised process on one machine.

The supervisor starts the private redis-server when no URL is configured, then one process per worker (ingest,
detector x N, tracker, indexer). A worker that dies is restarted after a back-off that grows with its crashes (and
counted); Ctrl-C or SIGTERM stops every worker (SIGTERM, a grace period, then SIGKILL) and then Redis. Workers talk
only through the Redis streams, so each can also run alone (`personsearch worker NAME`) on any machine.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

if TYPE_CHECKING:  # the settings import torch (through the services' options); workers import them after SIGTERM
    from personsearch.settings import Settings

logger = logging.getLogger(__name__)

WORKERS = ("ingest", "detector", "tracker", "indexer", "matcher", "delivery", "api")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HEARTBEAT_S = 5.0  # a worker refreshes its entry in the workers hash this often ...
STALE_AFTER_S = 15.0  # ... and one not refreshed for this long is gone (killed without a chance to remove it)


def engine_identity(settings: Settings) -> tuple[str, int]:
    """(model name, embedding dim) of the configured engine, without building it."""
    import json

    if settings.engine.onnx_dir is not None:
        cfg = json.loads((Path(settings.engine.onnx_dir) / "model.json").read_text())["config"]
    else:
        from detector.weights import DEMO_WEIGHTS, read_weights

        cfg = read_weights(settings.engine.weights or DEMO_WEIGHTS)["config"]
    return str(cfg["name"]), int(cfg["embedding_dim"])


def metrics_registry(directory: Path | str | None = None) -> Any:
    """The registry to serve: every process's metrics when they are kept in files (``directory``, or the
    ``PROMETHEUS_MULTIPROC_DIR`` of a worker of `personsearch up`), else this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    path = directory or os.environ.get(MULTIPROC_ENV)
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))
    return registry


def model_meta(settings: Settings) -> dict[str, Any]:
    """The provenance block of the configured model (``meta`` of its weights file or export manifest)."""
    import json

    if settings.engine.onnx_dir is not None:
        return dict(json.loads((Path(settings.engine.onnx_dir) / "model.json").read_text()).get("meta", {}))
    from detector.weights import DEMO_WEIGHTS, read_weights

    return dict(read_weights(settings.engine.weights or DEMO_WEIGHTS).get("meta", {}))


def match_threshold(settings: Settings) -> float:
    """The default watchlist threshold in force: configured, else calibrated for the model, else the fallback."""
    from personsearch.settings import FALLBACK_THRESHOLD

    if settings.watchlist.default_threshold is not None:
        return float(settings.watchlist.default_threshold)
    calibrated = model_meta(settings).get("match_threshold")
    return float(calibrated) if calibrated is not None else FALLBACK_THRESHOLD


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://)."""
    return redis.Redis.from_url(url)


def run_worker(name: str, settings: Settings, redis_url: str, stop: threading.Event) -> None:
    """Build worker ``name`` from the settings (its engine loaded), register it, and run it until ``stop``.

    The worker's entry in ``<prefix>:workers`` is its last heartbeat (Unix seconds), refreshed every HEARTBEAT_S; an
    entry older than STALE_AFTER_S belongs to a worker that died without removing it (``live_workers`` skips those).
    """
    import socket

    from personsearch.streams import Keys

    r = connect(redis_url)
    keys = Keys(settings.key_prefix)
    service = _build_worker(name, settings, r, keys, redis_url)
    me = f"{name}:{socket.gethostname()}:{os.getpid()}"

    def heartbeat() -> None:
        while True:
            with contextlib.suppress(redis.RedisError):
                r.hset(keys.workers, me, repr(time.time()))
            if stop.wait(HEARTBEAT_S):
                return

    beat = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    beat.start()
    try:
        service.run(stop)
    finally:
        stop.set()
        beat.join(2)
        with contextlib.suppress(redis.RedisError):
            r.hdel(keys.workers, me)


def live_workers(r: redis.Redis, keys: Any, now: float | None = None) -> dict[str, float]:
    """Workers whose heartbeat is fresh: "<worker>:<host>:<pid>" -> last heartbeat; stale entries are removed."""
    now = time.time() if now is None else now
    raw: dict[bytes, bytes] = r.hgetall(keys.workers)  # type: ignore[assignment]
    live: dict[str, float] = {}
    stale: list[bytes] = []
    for k, v in raw.items():
        try:
            ts = float(v)
        except ValueError:
            ts = 0.0
        if now - ts <= STALE_AFTER_S:
            live[k.decode()] = ts
        else:
            stale.append(k)
    if stale:
        r.hdel(keys.workers, *stale)
    return live


def _build_worker(name: str, settings: Settings, r: redis.Redis, keys: Any, redis_url: str) -> Any:
    """The service object of worker ``name`` (anything with ``run(stop)``), ready to run."""
    if name == "ingest":
        from ingest.service import IngestService

        return IngestService(r, keys, settings.ingest.options())
    if name == "detector":
        from detector.service import DetectorService

        engine = settings.engine.load()
        return DetectorService(r, keys, engine, settings.detector.options())
    if name == "tracker":
        from index.service import TrackerService

        return TrackerService(r, keys, settings.tracker.options())
    if name == "indexer":
        from index.service import IndexerService

        model, dim = engine_identity(settings)
        options = settings.index.options(Path(settings.data_dir) / "index", dim)
        return IndexerService(r, keys, options, model=model)
    if name == "matcher":
        from watchlist.matcher import MatcherService

        matching = settings.watchlist.options(match_threshold(settings), settings.tracker.options())
        return MatcherService(r, keys, matching)
    if name == "delivery":
        from watchlist.delivery import DeliveryService

        return DeliveryService(r, keys, settings.delivery.options())
    if name == "api":
        from personsearch.api.server import ApiServer

        return ApiServer(settings, r, keys, redis_url)
    raise ValueError(f"unknown worker {name!r}; workers: {', '.join(WORKERS)}")


def _worker_main(name: str, settings_json: str, redis_url: str) -> None:
    """Process entry: SIGTERM/SIGINT -> stop (first, so a worker stopped while importing still exits cleanly), run."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from personsearch.settings import Settings

    settings = Settings.model_validate_json(settings_json)
    logging.basicConfig(
        level=settings.log_level, format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s", force=True
    )
    if not stop.is_set():
        run_worker(name, settings, redis_url, stop)


@dataclass
class _Child:
    name: str
    process: BaseProcess | None = None
    restarts: int = 0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    """Runs the pipeline's workers as processes and keeps them running."""

    def __init__(self, settings: Settings, redis_url: str | None = None, workers: list[str] | None = None) -> None:
        self.settings = settings
        self.redis_url = redis_url or settings.redis_url
        self.private: Any = None
        names = workers or [w for w in WORKERS if w != "api" or settings.api.enabled]
        for n in names:
            if n not in WORKERS:
                raise ValueError(f"unknown worker {n!r}; workers: {', '.join(WORKERS)}")
        self.children = [
            _Child(n if n != "detector" or settings.detector.workers == 1 else f"detector.{i}")
            for n in names
            for i in range(settings.detector.workers if n == "detector" else 1)
        ]
        self._ctx = mp.get_context("spawn")  # no forked torch/onnxruntime state in the workers
        self.metrics_dir = (Path(settings.data_dir) / "metrics").resolve()

    def start_redis(self) -> str:
        """The configured Redis, or a private server in ``data_dir/redis``; returns its URL."""
        if self.redis_url:
            connect(self.redis_url).ping()
            return self.redis_url
        from personsearch.redis_server import PrivateRedis

        self.private = PrivateRedis(Path(self.settings.data_dir) / "redis").start()
        self.redis_url = self.private.url
        return self.redis_url

    def _spawn(self, child: _Child) -> None:
        kind = child.name.split(".")[0]
        child.process = self._ctx.Process(
            target=_worker_main,
            args=(kind, self.settings.model_dump_json(), self.redis_url),
            name=f"personsearch-{child.name}",
            daemon=False,
        )
        # Workers write their metrics to files in metrics_dir (prometheus_client's multiprocess mode), which this
        # process serves as one /metrics; only the children get the variable, so nothing else here changes.
        saved = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = str(self.metrics_dir)
        try:
            child.process.start()
        finally:
            if saved is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = saved
        child.started_at = time.monotonic()
        logger.info("started %s (pid %s)", child.name, child.process.pid)

    def start(self) -> None:
        """Redis, then every worker."""
        self.start_redis()
        self.start_workers()

    def start_workers(self) -> None:
        """Every worker process (Redis must be up: ``start_redis``)."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # the previous run's per-process metric files
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)

    def check(self) -> None:
        """Restart workers that exited, after a back-off growing with their restarts."""
        now = time.monotonic()
        for child in self.children:
            p = child.process
            if p is None or p.is_alive():
                continue
            if child.restart_at == 0.0:
                with contextlib.suppress(OSError):
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(p.pid, str(self.metrics_dir))  # its live gauges go
                if now - child.started_at > 60:
                    child.restarts = 0  # it ran fine for a while: start the back-off over
                delay = min(30.0, 0.5 * 2**child.restarts)
                child.restart_at = now + delay
                logger.warning("%s exited with %s; restarting in %.1f s", child.name, p.exitcode, delay)
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                self._spawn(child)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM every worker, wait up to ``grace_s``, SIGKILL the rest; then stop a private Redis."""
        for child in self.children:
            if child.process is not None and child.process.is_alive():
                child.process.terminate()
        deadline = time.monotonic() + grace_s
        for child in self.children:
            if child.process is not None:
                child.process.join(max(0.1, deadline - time.monotonic()))
                if child.process.is_alive():
                    logger.warning("%s did not stop in %.0f s; killing it", child.name, grace_s)
                    child.process.kill()
                    child.process.join(5)
        if self.private is not None:
            self.private.stop()
            self.private = None
        logger.info("all workers stopped")

    def run(self, stop: threading.Event, poll_s: float = 0.5) -> None:
        """Start, supervise until ``stop`` (set by SIGINT/SIGTERM in `up`), stop."""
        self.start()
        try:
            while not stop.wait(poll_s):
                self.check()
        finally:
            self.stop()


def up(settings: Settings, workers: list[str] | None = None, duration_s: float | None = None) -> int:
    """The `personsearch up` command: run until Ctrl-C, SIGTERM or ``duration_s``."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sup = Supervisor(settings, workers=workers)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics_registry(sup.metrics_dir))
        logger.info("metrics of every worker on http://0.0.0.0:%d/metrics", settings.metrics_port)
    if duration_s is not None:
        threading.Timer(duration_s, stop.set).start()
    sup.run(stop)
    return 0
