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


# Test files whose tests are spread over the xdist workers one by one (`make test`: --dist loadgroup); every other
# file runs whole on one worker, so its module-scoped fixtures (trained runs, exports) are built once. These files
# hold the longest multi-process tests, which would otherwise queue up behind each other on one worker.
SPREAD = ("tests/engine/test_engines.py", "tests/runs/test_disk_full.py", "tests/runs/test_plan.py",
          "tests/engine/test_deepspeed_steps.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = item.nodeid.split("::")[0]
        if path not in SPREAD:
            item.add_marker(pytest.mark.xdist_group(path))
