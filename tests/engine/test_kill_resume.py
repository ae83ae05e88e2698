"""A run killed with SIGKILL and restarted with resume=auto logs bit-identical losses (single, fp32, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.engine_run import run
from tests.helpers.processes import REPO, run_checked, subprocess_env
from tests.helpers.run_dirs import losses

DRIVER = str(Path(__file__).with_name("tiny.py"))
SPEC = "train.max_steps=10 train.ckpt_every=3 train.eval_every=5"
pytestmark = pytest.mark.slow


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return max((r["step"] for r in rows if "loss" in r), default=0)


def test_sigkill_then_resume_auto_is_bit_exact(tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, DRIVER, f"run_dir={crashed} {SPEC}"], cwd=REPO,
                            env=subprocess_env(TINY_STEP_SLEEP="0.4"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    run(f"run_dir={full}", *SPEC.split())  # the uninterrupted reference, in this process (1 thread)
    deadline = time.time() + 120
    while _logged_steps(crashed) < 7 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    killed_at = _logged_steps(crashed)
    assert 7 <= killed_at < 10, f"the run was not interrupted mid-way (last step {killed_at})"
    run_checked([sys.executable, DRIVER, f"run_dir={crashed} {SPEC} resume=auto"])
    want, got = losses(full), losses(crashed)
    steps = [json.loads(line).get("step") for line in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s is not None] == sorted(steps), "rows after the checkpoint were not dropped"
    assert sorted(got) == list(range(1, 11))
    assert all(got[s] == want[s] for s in range(1, 11)), {s: (got[s], want[s]) for s in got if got[s] != want[s]}
