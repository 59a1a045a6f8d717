"""Shared fixtures: a tiny synthetic world in the CUHK-SYSU layout, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (seconds to generate) shared by the tests that need real files."""
    from training.synth.world import main_synth

    root = tmp_path_factory.mktemp("tiny_world")
    main_synth(root, seed=7, preset="tiny")
    return root


@pytest.fixture(scope="session")
def redis_server():  # type: ignore[no-untyped-def]
    """One real, private redis-server for the test session (each test namespaces its keys with ``keys``)."""
    from personsearch.redis_server import PrivateRedis

    with PrivateRedis() as server:
        yield server


@pytest.fixture
def r(redis_server):  # type: ignore[no-untyped-def]
    """A client of the session's redis-server."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def keys(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Keys under a prefix unique to the test, so tests sharing the server never see each other's streams."""
    import uuid

    from personsearch.streams import Keys

    return Keys(prefix=f"t{uuid.uuid4().hex[:8]}")
