"""API keys against a real redis-server: the secret verifies once created, is never stored, and stops after revoke."""

from __future__ import annotations

import hashlib

import pytest

from personsearch.auth import ApiKeyStore


def test_created_secret_verifies_and_records_use(r, keys) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    record, secret = store.create("dashboard")
    assert secret.startswith(f"ps_{record.key_id}_") and len(secret) > 50
    assert record.name == "dashboard" and record.last_used_at is None

    found = store.verify(secret)

    assert found is not None and found.key_id == record.key_id
    assert found.last_used_at is not None
    assert store.list()[0].last_used_at == found.last_used_at


def test_last_used_is_written_at_most_once_a_minute(r, keys) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    record, secret = store.create("ci")
    first = store.verify(secret)
    stored = r.hget(keys.api_keys, record.key_id)
    second = store.verify(secret)
    assert first is not None and second is not None
    assert second.last_used_at == first.last_used_at
    assert r.hget(keys.api_keys, record.key_id) == stored


def test_wrong_secret_for_a_real_key_id_is_refused(r, keys) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    record, secret = store.create("ops")
    forged = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.verify(forged) is None
    other, _ = ApiKeyStore(r, keys).create("other")
    assert store.verify(secret.replace(record.key_id, other.key_id)) is None


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "ps_",
        "ps_abc_def",
        "Bearer ps_0123456789ab_" + "x" * 43,
        "ps_0123456789ab_" + "x" * 42,
        "ps_0123456789ab_" + "x" * 43,
    ],
)
def test_malformed_or_unknown_secrets_are_refused(r, keys, secret: str) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    store.create("someone")
    assert store.verify(secret) is None


def test_revoked_key_no_longer_verifies(r, keys) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    record, secret = store.create("temp")
    kept, kept_secret = store.create("kept")
    store.revoke(record.key_id)
    assert store.verify(secret) is None
    assert store.verify(kept_secret) is not None
    assert [k.key_id for k in store.list()] == [kept.key_id]
    with pytest.raises(KeyError):
        store.revoke(record.key_id)


def test_secrets_are_never_stored_or_listed(r, keys) -> None:  # type: ignore[no-untyped-def]
    store = ApiKeyStore(r, keys)
    secrets = [store.create(f"key{i}")[1] for i in range(3)]
    stored = b"".join(r.hgetall(keys.api_keys).values())
    listed = "".join(k.model_dump_json() for k in store.list())
    for secret in secrets:
        token = secret[len("ps_") + 12 + 1 :]  # the random part
        assert secret.encode() not in stored and token.encode() not in stored
        assert secret not in listed and token not in listed
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    assert [k.name for k in store.list()] == ["key0", "key1", "key2"]


def test_empty_name_is_refused(r, keys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        ApiKeyStore(r, keys).create("  ")
