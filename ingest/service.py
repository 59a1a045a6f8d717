"""The ingest service: one supervised decoder thread per enabled camera, following the registry as it changes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from ingest.cameras import CameraConfig, CameraRegistry, CameraState
from ingest.decoder import CameraDecoder, IngestOptions
from personsearch.streams import Keys

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    cfg: CameraConfig
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    crashes: int = 0
    done: bool = False  # the decoder returned on its own (a non-looping file ended)
    restart_at: float = 0.0


class IngestService:
    """Keeps exactly one decoder per enabled registered camera; restarts a decoder that crashed (counted)."""

    def __init__(self, r: redis.Redis, keys: Keys, options: IngestOptions | None = None, poll_s: float = 1.0) -> None:
        self.r, self.keys = r, keys
        self.options = options or IngestOptions()
        self.poll_s = poll_s
        self.registry = CameraRegistry(r, keys)
        self.running: dict[str, _Running] = {}
        self._version = -1

    def _start(self, cfg: CameraConfig, crashes: int = 0) -> None:
        run = _Running(cfg, crashes=crashes)
        run.thread = threading.Thread(target=self._guard, args=(run,), name=f"camera-{cfg.id}", daemon=True)
        self.running[cfg.id] = run
        run.thread.start()

    def _guard(self, run: _Running) -> None:
        """Run one decoder; an unexpected exception is logged and recorded, and the supervisor restarts it."""
        try:
            CameraDecoder(run.cfg, self.r, self.keys, self.options, run.stop).run()
            run.done = True
        except Exception as e:  # the supervisor's job is to survive anything a decoder throws
            logger.exception("camera %s: decoder crashed", run.cfg.id)
            run.crashes += 1
            with contextlib.suppress(redis.RedisError):
                self.registry.set_status(run.cfg.id, state=CameraState.RECONNECTING, last_error=f"crash: {e}")

    def _stop(self, camera_id: str, join_s: float = 15.0) -> None:
        run = self.running.pop(camera_id, None)
        if run is not None:
            run.stop.set()
            if run.thread is not None:
                run.thread.join(join_s)

    def reconcile(self) -> None:
        """Start, stop or restart decoders so they match the registry."""
        version = self.registry.version()
        if version != self._version:
            self._version = version
            wanted = {c.id: c for c in self.registry.list() if c.enabled}
            for cid in list(self.running):
                if cid not in wanted or wanted[cid] != self.running[cid].cfg:
                    self._stop(cid)
            for cid, cfg in wanted.items():
                if cid not in self.running:
                    self._start(cfg)
        now = time.monotonic()
        for cid, run in list(self.running.items()):
            if run.thread is not None and not run.thread.is_alive() and not run.done and not run.stop.is_set():
                # Crashed: restart after a short pause that grows with repeated crashes.
                if run.restart_at == 0.0:
                    run.restart_at = now + min(30.0, 0.5 * 2 ** min(run.crashes, 6))
                elif now >= run.restart_at:
                    logger.warning("camera %s: restarting crashed decoder (crash %d)", cid, run.crashes)
                    self._start(run.cfg, run.crashes)

    def run(self, stop: threading.Event) -> None:
        """Reconcile every ``poll_s`` until ``stop``; then stop every decoder."""
        logger.info("ingest service started")
        try:
            while not stop.is_set():
                try:
                    self.reconcile()
                except redis.RedisError as e:
                    logger.warning("ingest: redis unavailable (%s); retrying", e)
                stop.wait(self.poll_s)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop every decoder and wait for it."""
        for cid in list(self.running):
            self._stop(cid)
        logger.info("ingest service stopped")
