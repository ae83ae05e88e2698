"""`cod-pretrain -m`: each variant of a sweep runs in turn in its own run directory, one wandb group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import TINY
from tests.helpers.processes import REPO, run_checked, subprocess_env
from tests.helpers.run_dirs import metric_rows


@pytest.mark.slow
def test_norm_sweep_runs_each_variant_in_its_own_run_dir(tmp_path):
    sweep = tmp_path / "sweep"
    run_checked([sys.executable, "-m", "cod_train.cli.pretrain", "-m", "norm=pre_ln,lns", *TINY,
                 "train.max_steps=2", "train.eval_every=0", "train.ckpt_every=0", "train.export_hf=false",
                 f"hydra.sweep.dir={sweep}"], timeout=300)
    run_dirs = sorted(p.parent for p in sweep.glob("*/config.yaml"))
    assert len(run_dirs) == 2 and [d.name[:2] for d in run_dirs] == ["0_", "1_"]
    assert all(len(d.name) <= 102 for d in run_dirs)  # every override is in the name, cut to a safe length
    assert not any(c in d.name for d in run_dirs for c in "=,/ ")  # usable as checkpoint=PATH without quoting
    for run_dir, norm in zip(run_dirs, ["pre_ln", "lns"], strict=True):
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert cfg["model"]["norm_type"] == norm
        assert cfg["logger"]["group"] == "sweep"  # one group for the whole sweep
        assert cfg["run_dir"] == str(run_dir)
        assert [r["step"] for r in metric_rows(run_dir) if "loss" in r] == [1, 2]


def _first_job_trains(sweep, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """Job 0's run dir once it has logged a training step."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for metrics in sweep.glob("0_*/metrics.jsonl"):
            if any('"loss"' in line for line in metrics.read_text().splitlines() if line.endswith("}")):
                return metrics.parent
        time.sleep(0.1)
    raise AssertionError(f"job 0 logged no step (exit code {proc.poll()}): {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_current_job_and_stops_the_sweep(tmp_path, signum):
    """SIGTERM, or Ctrl-C (SIGINT to the whole process group, as a terminal sends it), during job 0 of a local
    sweep: job 0's checkpoint is saved, job 1 never starts, one line says so, exit 128 + the signal's number."""
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "cod_train.cli.pretrain", "-m", "norm=pre_ln,lns", *TINY,
                             "train.max_steps=100000", "train.eval_every=0", "train.ckpt_every=0",
                             "train.export_hf=false", f"hydra.sweep.dir={sweep}"],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    job0 = _first_job_trains(sweep, proc)
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    name = signal.Signals(signum).name
    last_step = max(r["step"] for r in metric_rows(job0) if "loss" in r)
    ckpt = job0 / "checkpoints" / f"step_{last_step:07d}"
    assert (ckpt / "meta.json").is_file()
    assert f"sweep stopped by {name}: job 0 saved {ckpt}, the later jobs were not started (to go on, run the same " \
           f"command with hydra.sweep.dir={sweep})" in err.splitlines()
    assert f"stopped: {name.lower()} at step {last_step}" in out
    assert not list(sweep.glob("1_*"))  # Hydra creates a job's directory when it starts the job
