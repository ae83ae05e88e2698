"""Shared fixtures: quiet, offline, single-threaded test processes; helpers to launch multi-process runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def run_checked(cmd: list[str], timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])}... exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                    f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 300, **extra_env: str):
    """``torchrun --standalone --nproc_per_node nproc script args...``."""
    cmd = [*TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", script, *args]
    return run_checked(cmd, timeout=timeout, **extra_env)


def metric_rows(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: str | Path) -> dict[int, float]:
    """Train loss per step (a step logged twice, e.g. before a crash and after the resume: the last one)."""
    return {row["step"]: row["loss"] for row in metric_rows(run_dir) if "loss" in row}
