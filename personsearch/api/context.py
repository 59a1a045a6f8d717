"""What every endpoint shares: the domain services over one Redis, the engine and the index (both loaded when first
needed), and the caller's authentication. Endpoints receive them as FastAPI dependencies (``Ctx``, ``Auth``)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import redis
import redis.asyncio as aredis
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from detector.engine import Engine
from index.search import IndexReader
from ingest.cameras import CameraRegistry
from personsearch.api.errors import ServiceUnavailable
from personsearch.auth import ApiKeyStore
from personsearch.settings import Settings
from personsearch.streams import Keys
from watchlist.alerts import AlertLog
from watchlist.delivery import WebhookRegistry
from watchlist.store import Watchlist

logger = logging.getLogger(__name__)

SSE_CLIENT_NAME = "personsearch-api-sse"  # how live-alert connections show in CLIENT LIST


class LazyEngine:
    """The network, built by ``factory`` on first need (once, under a lock) unless it was given ready."""

    def __init__(self, engine: Engine | None, factory: Callable[[], Engine] | None) -> None:
        self._engine, self._factory = engine, factory
        self._lock = threading.Lock()
        self.error: str | None = None  # why the last load failed

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def model_name(self) -> str | None:
        return self._engine.model_name if self._engine is not None else None

    def get(self) -> Engine:
        """The engine; ServiceUnavailable when it cannot be loaded (the next call tries again)."""
        if self._engine is not None:
            return self._engine
        with self._lock:
            if self._engine is None:
                if self._factory is None:
                    raise ServiceUnavailable("this API has no engine")
                try:
                    logger.info("loading the engine")
                    self._engine = self._factory()
                    self.error = None
                    logger.info("engine %s loaded", self._engine.model_name)
                except Exception as e:
                    self.error = f"{type(e).__name__}: {e}"
                    logger.exception("the engine could not be loaded")
                    raise ServiceUnavailable(f"the engine could not be loaded: {self.error}") from e
            return self._engine

    def warm_up(self) -> None:
        """Load now if not loaded (at start-up, so readiness turns green without waiting for a request)."""
        with contextlib.suppress(ServiceUnavailable):  # logged; readiness shows it, the next need tries again
            self.get()


class LazyIndex:
    """The read-only view of the indexer's snapshots, opened on first need unless it was given."""

    def __init__(self, reader: IndexReader | None, factory: Callable[[], IndexReader]) -> None:
        self._reader, self._factory = reader, factory
        self._lock = threading.Lock()

    def get(self) -> IndexReader:
        if self._reader is None:
            with self._lock:
                if self._reader is None:
                    try:
                        self._reader = self._factory()
                    except Exception as e:
                        raise ServiceUnavailable(f"the index cannot be opened: {type(e).__name__}: {e}") from e
        return self._reader

    def snapshot_reader(self) -> IndexReader:
        """The reader, when the indexer has saved a snapshot; ServiceUnavailable otherwise."""
        reader = self.get()
        if reader.index() is None:
            raise ServiceUnavailable(f"the index has no snapshot yet in {reader.directory} (is the indexer running?)")
        return reader


def default_engine_factory(settings: Settings) -> Callable[[], Engine]:
    """Build the configured engine (``settings.engine``)."""

    def build() -> Engine:
        return settings.engine.load()

    return build


def default_index_factory(settings: Settings) -> Callable[[], IndexReader]:
    """Open the index the indexer writes under ``data_dir/index`` for the configured model."""

    def build() -> IndexReader:
        from personsearch.runtime import engine_identity

        model, dim = engine_identity(settings)
        return IndexReader(Path(settings.data_dir) / "index", dim, model, ivf=settings.index.ivf())

    return build


@dataclass
class ApiContext:
    """The services behind the endpoints."""

    r: redis.Redis
    keys: Keys
    settings: Settings
    engine: LazyEngine
    index: LazyIndex
    redis_url: str | None = None  # for the live alert stream's asyncio client; None: the sync client's address
    sse_keepalive_s: float = 15.0

    def __post_init__(self) -> None:
        self.cameras = CameraRegistry(self.r, self.keys)
        self.watchlist = Watchlist(self.r, self.keys, self.settings.watchlist.max_photo_bytes)
        self.alerts = AlertLog(self.r, self.keys)
        self.webhooks = WebhookRegistry(self.r, self.keys)
        self.api_keys = ApiKeyStore(self.r, self.keys)

    def async_redis(self) -> aredis.Redis:
        """A new asyncio client of the same server (one per live stream: a blocking XREAD holds its connection)."""
        # Reads block for up to the keep-alive period; the socket timeout must outlast them.
        timeout = self.sse_keepalive_s + 10.0
        if self.redis_url:
            return aredis.Redis.from_url(self.redis_url, socket_timeout=timeout, client_name=SSE_CLIENT_NAME)
        pool = self.r.connection_pool
        kw = pool.connection_kwargs
        common = {"db": kw.get("db", 0), "username": kw.get("username"), "password": kw.get("password")}
        if "path" in kw:
            return aredis.Redis(
                unix_socket_path=kw["path"], socket_timeout=timeout, client_name=SSE_CLIENT_NAME, **common
            )
        # TLS settings beyond on/off are not copied: give ``redis_url`` for a server that needs client certificates.
        return aredis.Redis(
            host=kw.get("host", "localhost"), port=kw.get("port", 6379),
            ssl=issubclass(pool.connection_class, redis.SSLConnection), socket_timeout=timeout,
            client_name=SSE_CLIENT_NAME, **common,
        )  # fmt: skip


async def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]


# -- authentication ----------------------------------------------------------------------------------------------

_API_KEY = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False, description="an API key (`personsearch apikeys create`)"
)
_BEARER = HTTPBearer(scheme_name="Bearer", auto_error=False, description="an API key as a bearer token")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="personsearch"'}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key's name and id (``anonymous`` when authentication is off)."""

    name: str
    key_id: str | None = None


def authenticate(
    ctx: Ctx,
    api_key: Annotated[str | None, Security(_API_KEY)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
) -> Caller:
    """The caller of a request with a valid API key (X-API-Key or Authorization: Bearer); 401 otherwise."""
    if not ctx.settings.api.auth:
        return Caller("anonymous")
    secret = api_key or (bearer.credentials if bearer is not None else None)
    if not secret:
        raise HTTPException(401, "an API key is required: send X-API-Key or Authorization: Bearer", _CHALLENGE)
    key = ctx.api_keys.verify(secret)
    if key is None:
        raise HTTPException(401, "the API key is not valid (unknown, revoked or mistyped)", _CHALLENGE)
    return Caller(key.name, key.key_id)


Auth = Annotated[Caller, Depends(authenticate)]

__all__ = [
    "ApiContext",
    "Auth",
    "Caller",
    "Ctx",
    "LazyEngine",
    "LazyIndex",
    "authenticate",
    "default_engine_factory",
    "default_index_factory",
    "get_context",
]
