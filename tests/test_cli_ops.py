"""The operator commands of `personsearch` against a real Redis: cameras, API keys, webhooks and alerts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from personsearch.auth import ApiKeyStore
from personsearch.cli import main
from personsearch.streams import AlertMessage, Keys
from tests.test_watchlist import ColourEngine, photo, unit
from watchlist.alerts import AlertLog, raise_alert
from watchlist.delivery import WebhookRegistry
from watchlist.store import PhotoInput, Watchlist


@pytest.fixture
def config(redis_server, keys: Keys, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "settings.yaml"
    path.write_text(
        yaml.safe_dump({"redis_url": redis_server.url, "key_prefix": keys.prefix, "data_dir": str(tmp_path / "d")})
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cameras_are_registered_listed_updated_and_removed(config: Path, r, keys, capsys) -> None:  # type: ignore[no-untyped-def]
    c = str(config)
    assert run(capsys, "cameras", "add", "gate", "rtsp://10.0.0.5/live", "--fps", "2", "--config", c)[0] == 0
    code, out = run(capsys, "cameras", "list", "--config", c)
    assert code == 0 and "gate" in out and "rtsp://10.0.0.5/live" in out
    assert run(capsys, "cameras", "update", "gate", "--set", "enabled=false", "--config", c)[0] == 0
    assert "disabled" in run(capsys, "cameras", "status", "--config", c)[1]
    # Bad input is an error with a reason and exit status 2, not a traceback; nothing is registered.
    assert run(capsys, "cameras", "add", "bad", "gopher://x/", "--config", c)[0] == 2
    assert run(capsys, "cameras", "add", "gate", "rtsp://10.0.0.6/live", "--config", c)[0] == 2
    assert run(capsys, "cameras", "remove", "gate", "--config", c)[0] == 0
    assert "gate" not in run(capsys, "cameras", "list", "--config", c)[1]
    assert run(capsys, "cameras", "remove", "gate", "--config", c)[0] == 2


def test_api_keys_are_shown_once_stored_hashed_and_revoked(config: Path, r, keys, capsys) -> None:  # type: ignore[no-untyped-def]
    c = str(config)
    code, out = run(capsys, "apikeys", "create", "ops-laptop", "--config", c)
    assert code == 0
    key_id, secret = re.search(r"API key (\S+) ", out).group(1), out.strip().splitlines()[-1]  # type: ignore[union-attr]
    store = ApiKeyStore(r, keys)
    assert store.verify(secret) is not None
    assert secret.encode() not in b"".join(v for v in r.hgetall(keys.api_keys).values())
    assert "ops-laptop" in run(capsys, "apikeys", "list", "--config", c)[1]
    assert run(capsys, "apikeys", "revoke", key_id, "--config", c)[0] == 0
    assert store.verify(secret) is None
    assert run(capsys, "apikeys", "revoke", key_id, "--config", c)[0] == 2


def test_webhooks_are_added_disabled_enabled_and_removed(config: Path, r, keys, capsys) -> None:  # type: ignore[no-untyped-def]
    c = str(config)
    code, out = run(capsys, "webhooks", "add", "https://hooks.example.test/ps", "--description", "SOC", "--config", c)
    assert code == 0
    hook_id = re.search(r"webhook (\S+) ->", out).group(1)  # type: ignore[union-attr]
    assert run(capsys, "webhooks", "disable", hook_id, "--config", c)[0] == 0
    assert not WebhookRegistry(r, keys).get(hook_id).enabled
    assert "DISABLED" in run(capsys, "webhooks", "list", "--config", c)[1]
    assert run(capsys, "webhooks", "enable", hook_id, "--config", c)[0] == 0
    assert WebhookRegistry(r, keys).get(hook_id).enabled
    assert run(capsys, "webhooks", "add", "https://x.test/", "--secret", "short", "--config", c)[0] == 2
    assert run(capsys, "webhooks", "remove", hook_id, "--config", c)[0] == 0
    assert "no webhooks" in run(capsys, "webhooks", "list", "--config", c)[1]
    assert run(capsys, "webhooks", "enable", hook_id, "--config", c)[0] == 2


def test_alerts_are_listed_filtered_acknowledged_and_their_snapshot_saved(  # type: ignore[no-untyped-def]
    config: Path, r, keys, capsys, tmp_path: Path
) -> None:
    c = str(config)
    for alert_id, person, camera, ts in (("a1", "p1", "gate", 100.0), ("a2", "p2", "lobby", 200.0)):
        alert = AlertMessage(
            alert_id=alert_id, person_id=person, person_name=person.upper(), camera=camera, seq=1, capture_ts=ts,
            alerted_ts=ts + 0.5, score=0.8, frames=3, box=(1.0, 2.0, 30.0, 80.0), model="m", snapshot=b"\xff\xd8x",
        )  # fmt: skip
        assert raise_alert(r, keys, alert, cooldown_s=60)
    out = run(capsys, "alerts", "list", "--config", c)[1]
    assert out.index("a2") < out.index("a1")  # newest first
    out = run(capsys, "alerts", "list", "--camera", "gate", "--config", c)[1]
    assert "a1" in out and "a2" not in out
    assert run(capsys, "alerts", "ack", "a1", "--by", "alice", "--config", c)[0] == 0
    assert AlertLog(r, keys).get("a1").acknowledged_by == "alice"
    out = run(capsys, "alerts", "list", "--acknowledged", "no", "--config", c)[1]
    assert "a2" in out and "a1" not in out
    snap = tmp_path / "a2.jpg"
    assert run(capsys, "alerts", "snapshot", "a2", str(snap), "--config", c)[0] == 0
    assert snap.read_bytes() == b"\xff\xd8x"
    assert run(capsys, "alerts", "ack", "nope", "--config", c)[0] == 2


def test_a_false_match_is_acknowledged_and_taken_back_from_the_command_line(config: Path, r, keys, capsys) -> None:  # type: ignore[no-untyped-def]
    c = str(config)
    Watchlist(r, keys).add(ColourEngine(), "p1", [PhotoInput(photo(1))])
    for alert_id, camera, embedding in (("a1", "gate", unit(2).tobytes()), ("a2", "lobby", b"")):
        alert = AlertMessage(
            alert_id=alert_id, person_id="p1", camera=camera, capture_ts=100.0, score=0.8, box=(1.0, 2.0, 30.0, 80.0),
            model="test-model", embedding=embedding,
        )  # fmt: skip
        assert raise_alert(r, keys, alert, cooldown_s=60)
    code, out = run(capsys, "alerts", "ack", "a1", "--false-match", "--config", c)
    assert code == 0 and "(false match)" in out
    assert [x.alert_id for x in Watchlist(r, keys).get("p1").rejections] == ["a1"]
    assert "rejections 1" in run(capsys, "watchlist", "list", "--config", c)[1]
    assert run(capsys, "alerts", "ack", "a2", "--false-match", "--config", c)[0] == 2  # no stored embedding
    assert run(capsys, "watchlist", "remove-rejection", "p1", "a1", "--config", c)[0] == 0
    assert Watchlist(r, keys).get("p1").rejections == []
    assert run(capsys, "watchlist", "remove-rejection", "p1", "a1", "--config", c)[0] == 2
