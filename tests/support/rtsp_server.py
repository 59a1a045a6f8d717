"""A real RTSP server for the tests: each mount point loops an H.264 .mp4 file or serves a live test pattern.

Run by Debian's /usr/bin/python3, not the project's virtualenv: gst-rtsp-server is a C library reached through
GObject introspection (python3-gi, gir1.2-gst-rtsp-server-1.0), so this file uses only the standard library and gi.

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --file cam1=/tmp/a.mp4 --pattern cam2

Protocol on stdout: one line ``READY rtsp://HOST:PORT/MOUNT`` per mount once the socket listens (``--port 0`` picks a
free port; the line names it). Diagnostics go to stderr. SIGTERM or SIGINT stops it with exit status 0; it also stops
when its parent process dies, so a crashed test run leaves no server behind. ``--check`` prints why this machine
cannot serve files (exit status 1) or ``OK``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("rtsp_server")

# Elements a file mount needs: qtdemux (plugins-good) and h264parse (plugins-bad) read the file once at start-up;
# appsrc (plugins-base) and rtph264pay (plugins-good) send it.
FILE_ELEMENTS = ("filesrc", "qtdemux", "h264parse", "appsink", "appsrc", "rtph264pay")
# Test-pattern encoders in order of preference; Debian's plugins-bad brings openh264enc, plugins-ugly brings x264enc.
PATTERN_ENCODERS = {
    "x264enc": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps}",
    "openh264enc": "openh264enc gop-size={fps} complexity=low",
}
# SPS/PPS go in-band before every IDR frame, so a client can start at any key frame. h264parse inserts them once per
# access unit; rtph264pay's own config-interval would insert them before every IDR *slice* and mark each one as the
# end of a frame, so FFmpeg would decode a multi-slice key frame as two frames.
PAYLOADER = "h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96"
EXIT_UNAVAILABLE = 1
EXIT_BAD_MEDIA = 2
EXIT_CANNOT_LISTEN = 3


class Unavailable(RuntimeError):
    """GStreamer, its RTSP server library or a needed element is missing on this machine."""


def import_gst() -> tuple[Any, Any, Any]:
    """Import and initialise the modules (Gst, GstRtspServer, GLib), or raise Unavailable naming what is missing."""
    try:
        import gi  # imported here, so that --check can report its absence

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as error:
        raise Unavailable(f"{sys.executable} cannot load GStreamer's RTSP server via gi: {error}") from error
    Gst.init(None)
    missing = [name for name in FILE_ELEMENTS if Gst.ElementFactory.find(name) is None]
    if missing:
        raise Unavailable(f"GStreamer elements missing: {', '.join(missing)}")
    return Gst, GstRtspServer, GLib


@dataclass(frozen=True)
class Clip:
    """One H.264 file held in memory: byte-stream access units with their timestamps in nanoseconds from 0."""

    caps: Any
    units: list[tuple[bytes, int, int | None]]  # (access unit, pts, dts or None)
    length_ns: int  # one pass, i.e. the timestamp shift between two loops


def read_clip(gst: Any, path: Path, timeout_s: float = 30.0) -> Clip:
    """Demux and parse an H.264 .mp4/.mov into memory (no re-encoding), so every client can loop it from frame 0."""
    pipeline = gst.parse_launch(
        "filesrc name=file ! qtdemux name=demux demux.video_0 ! h264parse config-interval=-1 "
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", str(path))
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    deadline = time.monotonic() + timeout_s
    caps = None
    units: list[tuple[bytes, int, int | None]] = []
    durations: list[int] = []
    pipeline.set_state(gst.State.PLAYING)
    try:
        while True:
            # Short waits, so that a file the pipeline rejects fails at once rather than after a long pull.
            sample = sink.emit("try-pull-sample", gst.SECOND // 10)
            if (error := bus.pop_filtered(gst.MessageType.ERROR)) is not None:
                message = error.parse_error()[0].message
                raise ValueError(f"{path}: {message} (expected an .mp4/.mov with an H.264 video track)")
            if sample is None:
                if sink.get_property("eos"):
                    break
                if time.monotonic() > deadline:
                    raise ValueError(f"{path}: not read within {timeout_s:.0f} s")
                continue
            caps = caps or sample.get_caps()
            buffer = sample.get_buffer()
            dts = None if buffer.dts == gst.CLOCK_TIME_NONE else buffer.dts
            units.append((buffer.extract_dup(0, buffer.get_size()), buffer.pts, dts))
            if buffer.duration != gst.CLOCK_TIME_NONE:
                durations.append(buffer.duration)
    finally:
        pipeline.set_state(gst.State.NULL)
    if not units or caps is None:
        raise ValueError(f"{path}: no H.264 video track")
    if any(pts == gst.CLOCK_TIME_NONE for _, pts, _ in units):
        raise ValueError(f"{path}: access units without presentation timestamps")
    # With B-frames a dts precedes its pts; shift so that no timestamp of the first pass is negative.
    start = min(min(pts for _, pts, _ in units), min((dts for _, _, dts in units if dts is not None), default=0))
    frame_ns = sorted(durations)[len(durations) // 2] if durations else 1_000_000_000 // 25
    length = max(pts for _, pts, _ in units) - min(pts for _, pts, _ in units) + frame_ns
    shifted = [(data, pts - start, None if dts is None else dts - start) for data, pts, dts in units]
    return Clip(caps=caps, units=shifted, length_ns=length)


class ClipFeeder:
    """Feeds one client's appsrc with a clip forever, shifting timestamps by one clip length per loop."""

    def __init__(self, gst: Any, clip: Clip) -> None:
        self.gst = gst
        self.clip = clip
        self.index = 0

    def on_need_data(self, appsrc: Any, _length: int) -> None:
        """Push the next access unit; appsrc asks again while its queue is short, and the sinks pace playback."""
        loop, i = divmod(self.index, len(self.clip.units))
        data, pts, dts = self.clip.units[i]
        shift = loop * self.clip.length_ns
        buffer = self.gst.Buffer.new_wrapped(data)
        buffer.pts = pts + shift
        if dts is not None:
            buffer.dts = dts + shift
        self.index += 1
        appsrc.emit("push-buffer", buffer)


def file_factory(gst: Any, gst_rtsp: Any, clip: Clip) -> Any:
    """A media factory that gives every client its own pipeline, looping the clip from its first (key) frame."""
    factory = gst_rtsp.RTSPMediaFactory()
    # One pipeline per client (not shared): each starts at an IDR frame and loops for as long as it stays connected.
    factory.set_shared(False)
    factory.set_launch(f"( appsrc name=src format=time is-live=false max-buffers=30 ! {PAYLOADER} )")

    def on_media_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", clip.caps)
        appsrc.connect("need-data", ClipFeeder(gst, clip).on_need_data)

    factory.connect("media-configure", on_media_configure)
    return factory


def pattern_factory(gst: Any, gst_rtsp: Any, size: tuple[int, int], fps: int) -> Any:
    """A media factory for a live, encoded videotestsrc, with whichever H.264 encoder GStreamer has here."""
    encoder = next((name for name in PATTERN_ENCODERS if gst.ElementFactory.find(name) is not None), None)
    if encoder is None:
        raise Unavailable(f"no H.264 encoder for a test pattern (tried {', '.join(PATTERN_ENCODERS)})")
    width, height = size
    factory = gst_rtsp.RTSPMediaFactory()
    factory.set_shared(False)
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! videoconvert ! {PATTERN_ENCODERS[encoder].format(fps=fps)} ! {PAYLOADER} )"
    )
    return factory


def parse_mount(text: str) -> tuple[str, Path]:
    """Parse ``NAME=PATH`` of --file."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip("/"), Path(path)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT``."""
    width, _, height = text.partition("x")
    return int(width), int(height)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8554, help="TCP port; 0 picks a free one")
    parser.add_argument("--file", type=parse_mount, action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--pattern", action="append", default=[], metavar="NAME", help="mount a test pattern")
    parser.add_argument("--size", type=parse_size, default=(320, 240), help="test pattern size, WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=15, help="test pattern frame rate")
    parser.add_argument("--check", action="store_true", help="print OK or why this machine cannot serve files")
    args = parser.parse_args(argv)
    if not args.check and not args.file and not args.pattern:
        parser.error("nothing to serve: give --file NAME=PATH and/or --pattern NAME")
    return args


def main(argv: list[str] | None = None) -> int:
    """Serve the mounts until SIGTERM/SIGINT or until the parent process dies."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="rtsp_server: %(message)s")
    args = parse_args(argv)
    try:
        gst, gst_rtsp, glib = import_gst()
    except Unavailable as error:
        if args.check:
            print(error, flush=True)
        else:
            logger.error("%s", error)
        return EXIT_UNAVAILABLE
    if args.check:
        print("OK", flush=True)
        return 0

    server = gst_rtsp.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    try:
        for name, path in args.file:
            mounts.add_factory(f"/{name}", file_factory(gst, gst_rtsp, read_clip(gst, path)))
        for name in args.pattern:
            mounts.add_factory(f"/{name}", pattern_factory(gst, gst_rtsp, args.size, args.fps))
    except Unavailable as error:
        logger.error("%s", error)
        return EXIT_UNAVAILABLE
    except ValueError as error:
        logger.error("%s", error)
        return EXIT_BAD_MEDIA
    if server.attach(None) == 0:
        logger.error("cannot listen on %s:%s", args.host, args.port)
        return EXIT_CANNOT_LISTEN

    loop = glib.MainLoop()
    parent = os.getppid()

    def quit_loop(*_args: object) -> bool:
        loop.quit()
        return glib.SOURCE_REMOVE

    def quit_if_orphaned() -> bool:
        if os.getppid() != parent:
            logger.info("parent process %d is gone; stopping", parent)
            loop.quit()
            return glib.SOURCE_REMOVE
        return glib.SOURCE_CONTINUE

    glib.unix_signal_add(glib.PRIORITY_HIGH, signal.SIGTERM, quit_loop)
    glib.unix_signal_add(glib.PRIORITY_HIGH, signal.SIGINT, quit_loop)
    glib.timeout_add_seconds(1, quit_if_orphaned)
    server.connect(
        "client-connected", lambda _server, client: logger.info("client %s", client.get_connection().get_ip())
    )

    port = server.get_bound_port()
    for name in [name for name, _ in args.file] + args.pattern:
        print(f"READY rtsp://{args.host}:{port}/{name}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
