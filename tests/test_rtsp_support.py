"""The test RTSP server (tests/support) behaves like a camera for PyAV: it loops a file, survives restarts on one port,
and a client notices a dead or hung server within a bounded time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from tests.support.rtsp import RtspServer, RtspServerError, rtsp_available, write_h264_mp4

SIZE = (320, 240)
FPS = 15
CLIP_SECONDS = 2.0
# RTSP over TCP with a socket I/O time-out. In the FFmpeg bundled with PyAV 18 (libavformat 62, FFmpeg 8) the rtsp
# demuxer's `timeout` option is in microseconds and bounds both the handshake and every read: a hung server raises
# TimeoutError (ETIMEDOUT) from decode after about twice the time-out, or InvalidDataError from av.open after it.
# `stimeout`, the FFmpeg 4 name, is gone from this build, and `rw_timeout` does not reach RTSP's TCP socket: with either
# alone a read from a hung server blocks for ever. (PyAV's own av.open(..., timeout=(open_s, read_s)) also works, via
# FFmpeg's interrupt callback: ExitError "Immediate exit requested".)
READ_TIMEOUT_US = 1_000_000
OPTIONS = {"rtsp_transport": "tcp", "timeout": str(READ_TIMEOUT_US)}

pytestmark = pytest.mark.timeout(60)  # a regression here tends to block a read for ever, not to fail it


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s H.264 .mp4, or a skip when this machine cannot run the RTSP server (run.sh test installs it)."""
    reason = rtsp_available()
    if reason is not None:
        pytest.skip(reason)
    return write_h264_mp4(tmp_path_factory.mktemp("rtsp") / "clip.mp4", seconds=CLIP_SECONDS, size=SIZE, fps=FPS)


@pytest.fixture
def server(clip: Path) -> Iterator[RtspServer]:
    """A running server with the clip on /cam and a test pattern on /pattern."""
    with RtspServer({"cam": clip, "pattern": None}, pattern_size=SIZE, pattern_fps=FPS) as server:
        yield server


def read_frames(url: str, count: int) -> list[av.VideoFrame]:
    """Open url over TCP and decode count frames."""
    frames = []
    with av.open(url, options=OPTIONS) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def drain(container: av.container.InputContainer) -> tuple[int, BaseException | None]:
    """Decode until the stream ends; return the frames decoded and the error that ended it (None for EOF)."""
    frames = 0
    try:
        for _ in container.decode(video=0):
            frames += 1
    except (av.FFmpegError, OSError) as error:
        return frames, error
    return frames, None


def test_pyav_decodes_a_looped_file_past_its_end(server: RtspServer) -> None:
    frames = read_frames(server.url("cam"), count=round(1.5 * CLIP_SECONDS * FPS))

    assert len(frames) == round(1.5 * CLIP_SECONDS * FPS)
    assert {(frame.width, frame.height) for frame in frames} == {SIZE}
    # One frame per timestamp, increasing across the loop: the first may lack one (no RTCP sender report yet); a
    # multi-slice key frame sent as two "frames" would repeat one.
    times = [frame.time for frame in frames[1:]]
    assert all(a < b for a, b in itertools.pairwise(times)), times


def test_pyav_decodes_the_test_pattern(server: RtspServer) -> None:
    frames = read_frames(server.url("pattern"), count=5)

    assert [(frame.width, frame.height) for frame in frames] == [SIZE] * 5


def test_a_new_client_decodes_after_restart_on_the_same_port(server: RtspServer) -> None:
    port = server.port
    container = av.open(server.url("cam"), options=OPTIONS)
    next(container.decode(video=0))

    server.restart()
    drain(container)  # the old session ends with the old process
    container.close()

    assert server.port == port
    assert len(read_frames(server.url("cam"), count=5)) == 5


def test_a_reader_sees_a_stopped_server_at_once(server: RtspServer) -> None:
    with av.open(server.url("cam"), options=OPTIONS) as container:
        next(container.decode(video=0))
        server.stop()
        started = time.monotonic()
        drain(container)  # usually a clean EOF: the server's TCP connection closed

    assert time.monotonic() - started < 3.0
    with pytest.raises(ConnectionRefusedError):
        av.open(server.url("cam"), options=OPTIONS)


@pytest.mark.timeout(30)
def test_the_timeout_option_bounds_a_read_from_a_hung_server(server: RtspServer) -> None:
    with av.open(server.url("cam"), options=OPTIONS) as container:
        next(container.decode(video=0))
        server.pause()
        started = time.monotonic()
        _, error = drain(container)
        server.resume()

    assert isinstance(error, TimeoutError)
    # Frames already in the socket come first, then FFmpeg waits out the time-out (about twice, as measured).
    assert time.monotonic() - started < 3 * READ_TIMEOUT_US / 1e6 + 2.0


@pytest.mark.timeout(30)
def test_the_timeout_option_bounds_opening_a_hung_server(server: RtspServer) -> None:
    server.pause()
    started = time.monotonic()
    with pytest.raises(av.FFmpegError):
        av.open(server.url("cam"), options=OPTIONS)
    server.resume()

    assert time.monotonic() - started < 2 * READ_TIMEOUT_US / 1e6 + 2.0


def test_start_reports_why_the_server_failed(clip: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not an mp4")

    with pytest.raises(RtspServerError, match=r"broken\.mp4"):
        RtspServer({"cam": broken}).start()
