"""Shared fixtures: quiet, offline, single-threaded test processes. Shared helpers live in tests/helpers/."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest (and reproducibly) on one thread, especially on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
