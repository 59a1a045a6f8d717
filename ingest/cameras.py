"""The camera registry: which cameras exist, how to read them, and how each one is doing, kept in Redis."""

from __future__ import annotations

import builtins
import json
import logging
import time
from enum import Enum
from pathlib import Path
from urllib.parse import urlparse

import redis
from pydantic import BaseModel, ConfigDict, Field, field_validator

from personsearch.streams import Keys, check_camera_id

logger = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps", "http", "https", "file")


class CameraConfig(BaseModel):
    """One camera as registered: where to read it and how to sample it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="unique id; letters, digits, '_', '.', '-'")
    url: str = Field(description="rtsp://, rtsps://, http(s):// or file:// URL, or a path to a video file")
    fps: float = Field(default=5.0, gt=0, le=60, description="frames per second sampled from the source")
    max_size: int = Field(default=1280, ge=64, le=8192, description="longest side of a frame after resizing, pixels")
    enabled: bool = True
    loop: bool = Field(default=False, description="files only: start again at the end (demos, benchmarks)")
    name: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_camera_id(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme = urlparse(v).scheme.lower()
        if scheme == "" and v.startswith("/"):
            return v  # a path to a file
        if scheme not in SCHEMES:
            raise ValueError(f"unsupported camera URL scheme {scheme or '(none)'!r}: use one of {', '.join(SCHEMES)}")
        return v

    @property
    def is_file(self) -> bool:
        """True for a local video file (which can loop)."""
        return urlparse(self.url).scheme in ("", "file")

    @property
    def source(self) -> str:
        """What to hand to the decoder: a path for files, the URL otherwise."""
        return urlparse(self.url).path if urlparse(self.url).scheme == "file" else self.url

    def describe(self) -> str:
        """The URL with any password hidden, for logs and status."""
        u = urlparse(self.url)
        if u.password:
            return self.url.replace(f":{u.password}@", ":***@")
        return self.url


class CameraState(str, Enum):
    """Where a camera's decoder is: the lifecycle an operator sees."""

    STARTING = "starting"
    LIVE = "live"
    RECONNECTING = "reconnecting"
    DOWN = "down"
    DISABLED = "disabled"


class CameraStatus(BaseModel):
    """A camera's live status as its decoder last reported it, with its counters."""

    camera: str
    state: CameraState = CameraState.STARTING
    last_error: str = ""
    fps: float = 0.0
    reconnects: int = 0
    frames: int = 0
    dropped: int = 0
    corrupt: int = 0
    updated_ts: float = 0.0
    since_ts: float = 0.0  # when the current state began


class CameraExists(ValueError):
    """A camera with this id is already registered."""


class UnknownCamera(KeyError):
    """No camera with this id is registered."""

    def __str__(self) -> str:
        return f"no camera {self.args[0]!r} is registered"


class CameraRegistry:
    """CRUD over the registered cameras and read/write of their status; every change bumps a version counter."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r, self.keys = r, keys

    def add(self, cfg: CameraConfig) -> CameraConfig:
        """Register a new camera; CameraExists if the id is taken."""
        if not self.r.hsetnx(self.keys.cameras, cfg.id, cfg.model_dump_json()):
            raise CameraExists(f"camera {cfg.id!r} is already registered")
        self.r.incr(self.keys.cameras_version)
        self.set_status(cfg.id, state=CameraState.STARTING if cfg.enabled else CameraState.DISABLED, last_error="")
        logger.info("camera %s registered: %s", cfg.id, cfg.describe())
        return cfg

    def get(self, camera_id: str) -> CameraConfig:
        raw = self.r.hget(self.keys.cameras, camera_id)
        if raw is None:
            raise UnknownCamera(camera_id)
        return CameraConfig.model_validate_json(raw)

    def list(self) -> list[CameraConfig]:
        """Every registered camera, sorted by id."""
        raw = self.r.hgetall(self.keys.cameras)
        return sorted((CameraConfig.model_validate_json(v) for v in raw.values()), key=lambda c: c.id)

    def update(self, camera_id: str, **changes: object) -> CameraConfig:
        """Change some fields of a camera (validated as a whole); the id cannot change."""
        if "id" in changes and changes["id"] != camera_id:
            raise ValueError("a camera's id cannot change; remove it and add it again")
        cfg = CameraConfig.model_validate({**self.get(camera_id).model_dump(), **changes})
        self.r.hset(self.keys.cameras, camera_id, cfg.model_dump_json())
        self.r.incr(self.keys.cameras_version)
        if not cfg.enabled:
            self.set_status(camera_id, state=CameraState.DISABLED)
        return cfg

    def remove(self, camera_id: str) -> None:
        """Forget a camera: its config, status, counters and unread frames."""
        if not self.r.hdel(self.keys.cameras, camera_id):
            raise UnknownCamera(camera_id)
        self.r.delete(
            self.keys.camera_status(camera_id), self.keys.camera_counters(camera_id), self.keys.frames(camera_id)
        )
        self.r.incr(self.keys.cameras_version)
        logger.info("camera %s removed", camera_id)

    def version(self) -> int:
        """The registry's change counter."""
        return int(self.r.get(self.keys.cameras_version) or 0)

    def set_status(self, camera_id: str, **fields: object) -> None:
        """Record status fields of a camera (state, last_error, fps, ...); a state change stamps ``since_ts``."""
        now = time.time()
        values: dict[str, str] = {"updated_ts": repr(now)}
        for k, v in fields.items():
            values[k] = v.value if isinstance(v, Enum) else str(v)
        key = self.keys.camera_status(camera_id)
        if "state" in values and self.r.hget(key, "state") != values["state"].encode():
            values["since_ts"] = repr(now)
        self.r.hset(key, mapping=values)  # type: ignore[arg-type]

    def status(self, camera_id: str) -> CameraStatus:
        """The camera's status with its counters; UnknownCamera if not registered."""
        if not self.r.hexists(self.keys.cameras, camera_id):
            raise UnknownCamera(camera_id)
        pipe = self.r.pipeline()
        pipe.hgetall(self.keys.camera_status(camera_id))
        pipe.hgetall(self.keys.camera_counters(camera_id))
        raw_status, raw_counters = pipe.execute()
        values = {k.decode(): v.decode() for k, v in {**raw_status, **raw_counters}.items()}
        return CameraStatus.model_validate({"camera": camera_id, **values})

    def statuses(self) -> builtins.list[CameraStatus]:
        """Status of every registered camera."""
        return [self.status(c.id) for c in self.list()]


def load_cameras_file(path: Path) -> list[CameraConfig]:
    """Cameras from a YAML or JSON list (the CLI's ``cameras import``)."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.suffix in (".yml", ".yaml") else json.loads(path.read_text())
    return [CameraConfig.model_validate(item) for item in data]
