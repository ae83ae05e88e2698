"""Launching test subprocesses: quiet, offline and single-threaded, from the repository root."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


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
