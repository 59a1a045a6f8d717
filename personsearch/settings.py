"""One settings model for every service: a YAML file plus ``PERSONSEARCH_*`` environment variables, validated once.

Precedence: explicit arguments > environment (``PERSONSEARCH_DETECTOR__MAX_BATCH=8``; nested fields joined by
``__``) > the YAML file > defaults. ``personsearch config schema`` prints the JSON schema; ``personsearch config
show`` the effective values.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from detector.engine import Engine, load_engine
from detector.service import DetectorOptions
from index.service import IndexerOptions
from index.store import IvfOptions
from index.tracker import TrackerOptions
from ingest.decoder import IngestOptions
from watchlist.delivery import DeliveryOptions
from watchlist.matcher import MatcherOptions


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineSettings(_Section):
    """Which network and runtime the detector uses."""

    kind: Literal["torch", "onnxruntime"] = "onnxruntime"
    weights: Path | None = Field(default=None, description="weights file; default: the bundled demo model")
    onnx_dir: Path | None = Field(default=None, description="an existing `personsearch export` folder")
    device: str = "cpu"
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for inference; 0: the runtime's default (one per core). Fewer than the cores leaves "
        "the rest to ingest, tracking and indexing on the same machine",
    )
    input_size: tuple[int, int] | None = Field(
        default=None,
        description="[shorter side, longer-side cap] in pixels every frame is resized to; default: the weights "
        "file's own. Larger finds and tells apart small people better and costs more per frame; recalibrate the "
        "watchlist threshold at the size you run (`personsearch watchlist calibrate`)",
    )

    @model_validator(mode="after")
    def _check_input_size(self) -> EngineSettings:
        if self.input_size is not None:
            from detector.weights import check_input_size

            check_input_size(self.input_size)
            if self.onnx_dir is not None:
                raise ValueError(
                    "engine.input_size cannot change an existing export (engine.onnx_dir): its size is "
                    "inside its graphs; export again with `personsearch export --input-size`"
                )
        return self

    def load(self) -> Engine:
        """The engine these settings describe (exports the weights to ONNX once for ``onnxruntime``)."""
        return load_engine(self.kind, self.weights, self.onnx_dir, self.device, self.threads, self.input_size)


class IngestSettings(_Section):
    frame_stream_maxlen: int = Field(default=50, ge=1)
    jpeg_quality: int = Field(default=85, ge=30, le=100)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_cap_s: float = Field(default=30.0, gt=0)
    down_after: int = Field(default=3, ge=1)
    decode_threads: int = Field(
        default=1,
        ge=0,
        description="FFmpeg decoding threads per camera: 1 is the cheapest per frame; 0 lets FFmpeg choose, for a "
        "source one core cannot decode in real time",
    )

    def options(self) -> IngestOptions:
        return IngestOptions(**self.model_dump())


class DetectorSettings(_Section):
    workers: int = Field(default=1, ge=1, description="detector processes sharing the frame streams")
    max_batch: int = Field(default=4, ge=1)
    max_wait_ms: int = Field(default=50, ge=0)
    claim_idle_ms: int = Field(default=10_000, ge=100)
    det_thresh: float = Field(default=0.5, ge=0, le=1)
    crop_max_side: int = Field(default=160, ge=16)
    max_frame_age_s: float = Field(
        default=0.0,
        ge=0,
        description="skip frames captured longer ago than this (counted as dropped, reason stale), so an overloaded "
        "detector stays live; 0: never (every frame is detected, however late)",
    )

    def options(self) -> DetectorOptions:
        return DetectorOptions(**self.model_dump(exclude={"workers"}))


class TrackerSettings(_Section):
    iou_weight: float = Field(default=0.5, ge=0, le=1)
    min_iou: float = Field(default=0.2, ge=0, le=1)
    min_similarity: float = Field(default=0.7, ge=-1, le=1)
    max_gap_s: float = Field(default=2.0, gt=0)
    keep_best: int = Field(default=5, ge=1)
    update_every: int = Field(default=5, ge=1)
    min_frames: int = Field(default=1, ge=1)

    def options(self) -> TrackerOptions:
        return TrackerOptions(**self.model_dump())


class IndexSettings(_Section):
    kind: Literal["flat", "ivf"] = "flat"
    device: Literal["auto", "cpu", "gpu"] = "auto"
    nlist: int = Field(default=1024, ge=1, description="ivf: inverted lists (about 4 x sqrt of the tracklets)")
    nprobe: int = Field(
        default=32, ge=1, description="ivf: lists read per search; recall against latency (docs/benchmarks.md)"
    )
    save_every: int = Field(default=200, ge=1)
    save_period_s: float = Field(default=10.0, gt=0)
    retention_hours: float = Field(default=168.0, gt=0, description="tracklets older than this are deleted")

    def options(self, directory: Path, dim: int) -> IndexerOptions:
        return IndexerOptions(
            directory=directory,
            dim=dim,
            kind=self.kind,
            device=self.device,
            save_every=self.save_every,
            save_period_s=self.save_period_s,
            retention_s=self.retention_hours * 3600,
            ivf=self.ivf(),
        )

    def ivf(self) -> IvfOptions:
        """The IVF shape: trained on 64 tracklets per list once that many are indexed."""
        return IvfOptions(nlist=self.nlist, nprobe=min(self.nprobe, self.nlist), train_size=64 * self.nlist)


FALLBACK_THRESHOLD = 0.6  # for a model without a calibrated threshold


class WatchlistSettings(_Section):
    """How detections become alerts (see watchlist/matcher.py)."""

    default_threshold: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="cosine similarity a frame needs to vote for a person without their own threshold; "
        "None: the threshold calibrated for the model (`personsearch watchlist calibrate`, kept in its weights file)",
    )
    margin: float = Field(default=0.05, ge=0, le=2, description="the best person must beat the runner-up by this")
    consensus_frames: int = Field(default=3, ge=1, description="votes for one person needed to alert ...")
    window_frames: int = Field(default=6, ge=1, description="... among a tracklet's last this many frames")
    cooldown_s: float = Field(default=60.0, gt=0, description="no second alert for a (person, camera) this long")
    min_det_score: float = Field(default=0.5, ge=0, le=1, description="weaker detections do not vote")
    retention_days: float = Field(default=30.0, gt=0, description="the alert audit log keeps alerts this long")
    max_photo_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="largest photo upload accepted")

    @model_validator(mode="after")
    def _consensus_fits_the_window(self) -> WatchlistSettings:
        if self.consensus_frames > self.window_frames:
            raise ValueError(
                f"watchlist.consensus_frames ({self.consensus_frames}) cannot exceed "
                f"window_frames ({self.window_frames})"
            )
        return self

    def options(self, calibrated: float | None = None, tracker: TrackerOptions | None = None) -> MatcherOptions:
        """The matcher's options; ``calibrated`` is the model's threshold, used when none is configured."""
        threshold = self.default_threshold if self.default_threshold is not None else calibrated
        options = MatcherOptions(
            default_threshold=threshold if threshold is not None else FALLBACK_THRESHOLD,
            margin=self.margin, consensus_frames=self.consensus_frames,
            window_frames=self.window_frames, cooldown_s=self.cooldown_s, min_det_score=self.min_det_score,
            retention_s=self.retention_days * 86400,
        )  # fmt: skip
        if tracker is not None:  # the tracker's linking settings, without its update events (not needed here)
            options = replace(options, tracker=replace(tracker, update_every=10**9))
        return options


class DeliverySettings(_Section):
    """Webhook delivery of alerts (see watchlist/delivery.py)."""

    max_attempts: int = Field(default=6, ge=1)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)

    def options(self) -> DeliveryOptions:
        return DeliveryOptions(**self.model_dump())


class ApiSettings(_Section):
    """The HTTP API (FastAPI) that `personsearch up` serves."""

    enabled: bool = True
    host: str = Field(default="127.0.0.1", description="0.0.0.0 to serve other machines")
    port: int = Field(default=8080, ge=1, le=65535)
    auth: bool = Field(default=True, description="require an API key (`personsearch apikeys create`)")


class Settings(BaseSettings):
    """Everything a deployment configures."""

    model_config = SettingsConfigDict(env_prefix="PERSONSEARCH_", env_nested_delimiter="__", extra="forbid")

    redis_url: str | None = Field(default=None, description="Redis to use; none: start a private redis-server")
    data_dir: Path = Field(default=Path("data/personsearch"), description="private Redis data, index, snapshots")
    key_prefix: str = Field(default="ps", pattern=r"^[A-Za-z0-9_.-]{1,32}$")
    metrics_port: int | None = Field(default=9108, description="Prometheus /metrics of `personsearch up`; none: off")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    engine: EngineSettings = EngineSettings()
    ingest: IngestSettings = IngestSettings()
    detector: DetectorSettings = DetectorSettings()
    tracker: TrackerSettings = TrackerSettings()
    index: IndexSettings = IndexSettings()
    watchlist: WatchlistSettings = WatchlistSettings()
    delivery: DeliverySettings = DeliverySettings()
    api: ApiSettings = ApiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``path`` (YAML, optional) and the environment; ValueError naming the bad field otherwise."""
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"settings file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "yaml_file": path})  # type: ignore[typeddict-item]

    return _FromFile(**overrides)
