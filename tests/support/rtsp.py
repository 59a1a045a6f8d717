"""A real RTSP server for tests, in a child process that a test can stop, restart on the same port, or freeze.

The server is tests/support/rtsp_server.py run by Debian's /usr/bin/python3 with gst-rtsp-server (see its docstring
and ``system_packages`` in run.sh). Clients in the virtualenv read it with PyAV over TCP::

    with RtspServer({"cam": write_h264_mp4(tmp_path / "cam.mp4")}) as server:
        av.open(server.url("cam"), options={"rtsp_transport": "tcp", "timeout": "2000000"})
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

import av
import numpy as np

logger = logging.getLogger(__name__)

SYSTEM_PYTHON = Path("/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
PACKAGES_HINT = "apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi (or ./run.sh test as root)"


class RtspServerError(RuntimeError):
    """The RTSP server did not start; the message carries its stderr."""


@functools.cache
def rtsp_available() -> str | None:
    """None when this machine can run the test RTSP server, else the reason it cannot (for ``pytest.skip``)."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found; the test RTSP server needs Debian's python3 with gi"
    try:
        result = subprocess.run(
            [str(SYSTEM_PYTHON), "-I", str(SERVER_SCRIPT), "--check"],
            capture_output=True,
            text=True,
            timeout=60,  # the first Gst.init on a machine builds GStreamer's plugin registry
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the test RTSP server cannot run: {error}"
    if result.returncode != 0:
        reason = (result.stdout + result.stderr).strip().splitlines()
        return f"the test RTSP server cannot run ({reason[-1] if reason else result.returncode}); {PACKAGES_HINT}"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on host that nothing listens on right now (another process may still take it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_h264_mp4(
    path: Path,
    *,
    seconds: float = 4.0,
    size: tuple[int, int] = (320, 240),
    fps: int = 15,
    gop: int | None = None,
    slices: int = 2,
) -> Path:
    """Write a small H.264 .mp4 with PyAV's libx264: no B-frames, a key frame every ``gop`` frames (default 1 s),
    ``slices`` slices per frame.

    Frame i shows a white bar at x = 8*i (mod width) on a background whose green level is 4*i (mod 256), so a decoder
    can tell frames apart. size: (width, height) in pixels.
    """
    width, height = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Like a camera: no B-frames and a short GOP, so a client that joins can start decoding within a second.
        # Several slices per frame, as many cameras send, set explicitly: PyAV's default slice threading would
        # otherwise make one slice per CPU core, so the file would differ between machines.
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "ultrafast", "bf": "0", "g": str(gop or fps), "x264-params": f"slices={slices}"}
        for i in range(round(seconds * fps)):
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[..., 1] = (4 * i) % 256
            x = (8 * i) % width
            image[:, x : x + 16] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


class RtspServer:
    """A real RTSP server in a child process serving ``mounts`` (name -> H.264 .mp4 looped forever, or None for a test
    pattern) on 127.0.0.1; ``port`` None picks a free port at the first start and keeps it across restarts."""

    def __init__(
        self,
        mounts: Mapping[str, Path | None],
        port: int | None = None,
        *,
        pattern_size: tuple[int, int] = (320, 240),
        pattern_fps: int = 15,
        ready_timeout_s: float = 30.0,
    ) -> None:
        if not mounts:
            raise ValueError("an RTSP server needs at least one mount")
        self.mounts = {name.strip("/"): path for name, path in mounts.items()}
        self.host = "127.0.0.1"
        self.port = port
        self.pattern_size = pattern_size
        self.pattern_fps = pattern_fps
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def url(self, mount: str) -> str:
        """rtsp:// URL of a mount; the port is known once the server has started or was given."""
        if mount.strip("/") not in self.mounts:
            raise KeyError(f"no mount {mount!r}; mounts are {sorted(self.mounts)}")
        if self.port is None:
            raise RuntimeError("the port is chosen at start(); start the server first")
        return f"rtsp://{self.host}:{self.port}/{mount.strip('/')}"

    def start(self) -> None:
        """Spawn the server and return once every mount is listening; raise RtspServerError with its stderr if not."""
        if self.running:
            raise RuntimeError("the RTSP server is already running")
        command = [str(SYSTEM_PYTHON), "-I", str(SERVER_SCRIPT), "--host", self.host, "--port", str(self.port or 0)]
        for name, path in self.mounts.items():
            command += ["--file", f"{name}={Path(path).resolve()}"] if path is not None else ["--pattern", name]
        width, height = self.pattern_size
        command += ["--size", f"{width}x{height}", "--fps", str(self.pattern_fps)]
        # stderr goes to a file, not a pipe nobody reads, so a chatty server can never block on a full pipe.
        self._stderr = tempfile.NamedTemporaryFile(prefix="rtsp_server_", suffix=".log")  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except OSError as error:
            raise RtspServerError(f"cannot run {SYSTEM_PYTHON}: {error}; {PACKAGES_HINT}") from error
        try:
            self.port = self._wait_ready()
        except RtspServerError:
            self.stop()
            raise
        logger.info("RTSP server %d serving %s", self._process.pid, ", ".join(self.url(m) for m in self.mounts))

    def _wait_ready(self) -> int:
        """Read READY lines from the server until every mount is listening; return the port it listens on."""
        assert self._process is not None and self._process.stdout is not None
        deadline = time.monotonic() + self.ready_timeout_s
        pending = set(self.mounts)
        port = None
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RtspServerError(
                        f"RTSP server not ready after {self.ready_timeout_s:.0f} s{self._stderr_tail()}"
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(self._process.stdout.fileno(), 4096)
                if not chunk:
                    self._process.wait(timeout=5)
                    raise RtspServerError(
                        f"RTSP server exited with status {self._process.returncode}{self._stderr_tail()}"
                    )
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    word, _, url = line.decode().strip().partition(" ")
                    if word == "READY":
                        address, _, mount = url.removeprefix("rtsp://").partition("/")
                        port = int(address.rpartition(":")[2])
                        pending.discard(mount)
        assert port is not None
        return port

    def _stderr_tail(self, max_chars: int = 4000) -> str:
        """The end of the server's stderr, for error messages."""
        if self._stderr is None:
            return ""
        text = Path(self._stderr.name).read_text(errors="replace").strip()
        return f"; its stderr:\n{text[-max_chars:]}" if text else ""

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after timeout_s); clients see their connection close."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("RTSP server %d ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def restart(self) -> None:
        """Stop and start again on the same port: a camera that reboots."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP) with its connections open: a camera that hangs, which only a read time-out
        reveals."""
        if not self.running:
            raise RuntimeError("the RTSP server is not running")
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # A test that forgot stop() must not leave a server holding its port (the server also exits with its parent).
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()
