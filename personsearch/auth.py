"""API keys, stored hashed: the secret is shown once at creation and only its SHA-256 is kept.

A secret reads ``ps_<key id>_<43 url-safe characters>``: the key id locates the record in one hash lookup, and the
random part (``secrets.token_urlsafe(32)``, 256 bits) makes the secret unguessable. A plain, unsalted SHA-256 is
adequate here: salts and slow hashes (bcrypt, argon2) defend low-entropy passwords against dictionary attacks, and a
256-bit random string has no dictionary. It also keeps every request's check to microseconds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time

import redis
from pydantic import BaseModel, ConfigDict, Field

from personsearch.streams import Keys

logger = logging.getLogger(__name__)

SECRET_PATTERN = re.compile(r"^ps_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
LAST_USED_RESOLUTION_S = 60.0  # last_used_at is rewritten at most this often, so checks do not all write

# Rewrite a key's record only if it still exists, so a verify racing a revoke cannot bring the key back
# (KEYS: api keys hash; ARGV: key id, record JSON).
_UPDATE_IF_PRESENT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""


class ApiKey(BaseModel):
    """An API key's record: never the secret, only its SHA-256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str
    name: str
    sha256: str = Field(description="hex SHA-256 of the whole secret")
    created_at: float = Field(description="Unix seconds")
    last_used_at: float | None = Field(default=None, description="Unix seconds, to the minute")


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    """The API keys of a deployment, in one Redis hash (key id -> ApiKey JSON)."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r, self.keys = r, keys
        self._update = r.register_script(_UPDATE_IF_PRESENT)

    def create(self, name: str) -> tuple[ApiKey, str]:
        """A new key named ``name``: its record and its secret, which is not stored and cannot be shown again."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ValueError("an API key name must be 1-100 characters")
        key_id = secrets.token_hex(6)
        secret = f"ps_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id=key_id, name=name, sha256=_sha256(secret), created_at=time.time())
        if not self.r.hsetnx(self.keys.api_keys, key_id, record.model_dump_json()):
            raise RuntimeError(f"API key id {key_id} collided; try again")  # 48 random bits: never in practice
        logger.info("API key %s (%s) created", key_id, name)
        return record, secret

    def list(self) -> list[ApiKey]:
        """Every key's record, oldest first."""
        raw: dict[bytes, bytes] = self.r.hgetall(self.keys.api_keys)  # type: ignore[assignment]
        return sorted((ApiKey.model_validate_json(v) for v in raw.values()), key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> None:
        """Delete the key so its secret no longer verifies; KeyError when unknown."""
        if not self.r.hdel(self.keys.api_keys, key_id):
            raise KeyError(key_id)
        logger.info("API key %s revoked", key_id)

    def verify(self, secret: str) -> ApiKey | None:
        """The record of the key whose secret this is, or None (malformed, unknown, revoked or wrong)."""
        m = SECRET_PATTERN.match(secret)
        if m is None:
            return None
        key_id = m.group(1)
        raw: bytes | None = self.r.hget(self.keys.api_keys, key_id)  # type: ignore[assignment]
        if raw is None:
            return None
        record = ApiKey.model_validate_json(raw)
        if not hmac.compare_digest(_sha256(secret), record.sha256):
            return None
        now = time.time()
        if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION_S:
            record = record.model_copy(update={"last_used_at": now})
            self._update(keys=[self.keys.api_keys], args=[key_id, record.model_dump_json()])
        return record


__all__ = ["ApiKey", "ApiKeyStore"]
