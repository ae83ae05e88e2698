"""`cod-pretrain -m`: each variant of a sweep runs in turn in its own run directory, one wandb group."""

from __future__ import annotations

import sys

import yaml

from tests.cli.test_pretrain import TINY
from tests.conftest import metric_rows, run_checked


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
