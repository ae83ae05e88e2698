"""``distributed.compile=true``: the in-training diagnostics leave the compiled blocks alone, and the combination
that cannot compile (DeepSpeed ZeRO-3) is refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.processes import REPO, run_checked, subprocess_env

DRIVER = str(Path(__file__).with_name("compile_driver.py"))


@pytest.mark.slow
def test_diagnostics_steps_compile_no_graph(tmp_path):
    """Per-block compile gives one graph for the 2 identical blocks; the diagnostics forward (hooks on every block,
    steps 2 and 4) runs eagerly: no graph is added by it, nor by the training steps after it (before the fix: 1
    graph, then 20 at the first diagnostics step). The diagnostics still measure every layer."""
    spec = f"run_dir={tmp_path} train.max_steps=4 train.diag_every=2 train.ckpt_every=0"
    out = run_checked([sys.executable, DRIVER, spec], timeout=400).stdout
    got = json.loads(next(ln for ln in out.splitlines() if ln.startswith("GRAPHS "))[7:])
    assert got["before"] == [1, 1] and got["after"] == [1, 1], got
    assert {"diag/layer_var", "diag/bi", "diag/attn_ratio", "diag/lens_kl"} <= set(got["diag_keys"])


@pytest.mark.slow
def test_ngpt_compiles_without_graph_breaks(tmp_path):
    """nGPT's hooks (q/k scale, gate/up scale, eigen learning rates) compile into the one block graph."""
    spec = (f"run_dir={tmp_path} train.max_steps=2 train.diag_every=2 train.ckpt_every=0 model.norm_type=ngpt "
            "train.warmup_steps=0")
    out = run_checked([sys.executable, DRIVER, spec], timeout=400).stdout
    got = json.loads(next(ln for ln in out.splitlines() if ln.startswith("GRAPHS "))[7:])
    assert got["before"] == [1] and got["after"] == [1], got


def test_deepspeed_zero3_with_compile_is_refused_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cod_train.cli.pretrain", "distributed=deepspeed", "distributed.zero_stage=3",
         "distributed.compile=true", f"run_dir={run_dir}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "ZeRO-3" in lines[0], proc.stderr[-2000:]
    assert not run_dir.exists()
