"""Serving the API with uvicorn: the ``api`` worker of `personsearch up`, and a server in a thread for tests."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
import uvicorn
from fastapi import FastAPI

from personsearch.api.app import create_app
from personsearch.settings import Settings
from personsearch.streams import Keys

logger = logging.getLogger(__name__)


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread."""

    server: uvicorn.Server
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The TCP port it listens on (the one picked when it was asked for port 0)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.server.should_exit


@contextmanager
def serving(app: FastAPI, host: str, port: int, start_timeout_s: float = 15.0) -> Iterator[RunningServer]:
    """Serve ``app`` from a background thread until the block exits; ``port`` 0 picks a free port."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False))
    # Not the main thread, so uvicorn installs no signal handlers: the caller decides when to stop.
    running = RunningServer(server, threading.Thread(target=server.run, name="uvicorn", daemon=True))
    running.thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not running.thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the API server did not start on {host}:{port} (port in use?)")
        time.sleep(0.02)
    try:
        yield running
    finally:
        server.should_exit = True
        running.thread.join(10)


class ApiServer:
    """The ``api`` worker: the HTTP API on ``settings.api.host:port`` until ``stop``."""

    def __init__(self, settings: Settings, r: redis.Redis, keys: Keys, redis_url: str | None = None) -> None:
        self.settings = settings
        self.app = create_app(r, keys, settings, redis_url=redis_url)

    def run(self, stop: threading.Event) -> None:
        api = self.settings.api
        with serving(self.app, api.host, api.port) as running:
            logger.info("HTTP API on http://%s:%d (OpenAPI at /docs)", api.host, running.port)
            while not stop.wait(0.5):
                if not running.alive:
                    raise RuntimeError("the API server stopped")


__all__ = ["ApiServer", "RunningServer", "serving"]
