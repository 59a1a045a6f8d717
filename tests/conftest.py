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
