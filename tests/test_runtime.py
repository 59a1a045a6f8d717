"""`personsearch up`'s supervisor: private Redis, one process per worker, restarts, clean shutdown; settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import torch
from prometheus_client import generate_latest

from detector.config import ModelConfig, get_model_config
from detector.model import build_model
from detector.weights import save_weights
from personsearch.runtime import STALE_AFTER_S, WORKERS, Supervisor, live_workers, metrics_registry
from personsearch.settings import load_settings
from personsearch.streams import Keys


def test_settings_come_from_the_file_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("detector:\n  max_batch: 8\n  det_thresh: 0.6\nkey_prefix: site1\n")
    monkeypatch.setenv("PERSONSEARCH_DETECTOR__MAX_BATCH", "2")
    s = load_settings(path)
    assert s.detector.max_batch == 2 and s.detector.det_thresh == 0.6 and s.key_prefix == "site1"
    assert s.detector.options().max_batch == 2
    path.write_text("detector:\n  max_bach: 8\n")
    with pytest.raises(ValueError, match="max_bach"):
        load_settings(path)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")


def test_supervisor_runs_every_worker_restarts_a_killed_one_and_stops_cleanly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "min_size": 128, "max_size": 160})
    weights = save_weights(build_model(cfg), tmp_path / "w.pt", half=True)
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        metrics_port=None,
        engine={"kind": "torch", "weights": weights},
        index={"save_period_s": 1.0},
        api={"port": _free_port()},
    )
    sup = Supervisor(settings)
    stop = threading.Event()
    thread = threading.Thread(target=sup.run, args=(stop, 0.2), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 240
        keys = Keys(settings.key_prefix)

        def registered() -> set[str]:
            try:
                return {k.decode().split(":")[0] + ":" + k.decode().rsplit(":", 1)[1] for k in r.hkeys(keys.workers)}
            except (AttributeError, redis.RedisError):
                return set()

        while time.monotonic() < deadline and sup.private is None:
            time.sleep(0.2)
        r = sup.private.client()
        while time.monotonic() < deadline and len(registered()) < len(WORKERS):  # every worker past start-up
            time.sleep(0.2)
        assert [c.name for c in sup.children] == list(WORKERS)
        assert {w.split(":")[0] for w in registered()} == set(WORKERS)
        assert {w.split(":")[0] for w in live_workers(r, keys)} == set(WORKERS)  # every heartbeat fresh
        assert json.loads(_get_until_up(f"http://127.0.0.1:{settings.api.port}/health", deadline)) == {"status": "ok"}
        # One /metrics for every worker process (prometheus_client's multiprocess files in data_dir/metrics).
        want = ("personsearch_watchlist_persons", "personsearch_api_requests_total")
        text = ""
        while time.monotonic() < deadline and not all(w in text for w in want):  # the matcher's first read may lag
            text = generate_latest(metrics_registry(sup.metrics_dir)).decode()
            time.sleep(0.2)
        assert all(w in text for w in want), text[-2000:]
        tracker = next(c for c in sup.children if c.name == "tracker")
        old_pid = tracker.process.pid  # type: ignore[union-attr]
        os.kill(old_pid, signal.SIGKILL)
        while time.monotonic() < deadline and not any(
            w.startswith("tracker:") and w != f"tracker:{old_pid}" for w in registered()
        ):
            time.sleep(0.2)
        assert tracker.restarts == 1 and tracker.process.pid != old_pid  # type: ignore[union-attr]
        assert f"tracker:{tracker.process.pid}" in registered()  # type: ignore[union-attr]
    finally:
        stop.set()
        thread.join(90)
    assert not thread.is_alive()
    codes = {c.name: c.process.exitcode if c.process is not None else None for c in sup.children}
    assert set(codes.values()) == {0}, codes
    assert sup.private is None  # the private Redis was stopped
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or any((tmp_path / "data" / "redis").iterdir())


def _get_until_up(url: str, deadline: float) -> bytes:
    """GET ``url``, retrying while nothing listens yet (the api worker registers before uvicorn has bound its port)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return bytes(resp.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_killed_without_cleaning_up_ages_out_of_the_registry(r, keys: Keys) -> None:  # type: ignore[no-untyped-def]
    now = time.time()
    r.hset(keys.workers, mapping={"tracker:h:1": repr(now - STALE_AFTER_S - 1), "tracker:h:2": repr(now - 1)})
    assert set(live_workers(r, keys, now)) == {"tracker:h:2"}
    assert r.hkeys(keys.workers) == [b"tracker:h:2"]  # the stale entry is removed
