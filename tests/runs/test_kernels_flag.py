"""``model.use_kernels=true`` never silently runs the plain path where the kernels were asked for."""

from __future__ import annotations

import dataclasses
import importlib.util

import torch

from tests.helpers.cli import TINY, cod_pretrain


def test_cpu_run_says_the_kernels_are_cuda_only(monkeypatch, capsys, tmp_path):
    code = cod_pretrain(f"run_dir={tmp_path / 'run'}", *TINY, "train.max_steps=1", "train.export_hf=false",
                 "model.use_kernels=true")
    out = capsys.readouterr()
    assert code == 0
    assert "use_kernels=true: Liger's kernels run on CUDA only" in out.out + out.err


def test_cuda_without_liger_is_refused_before_the_model_is_built(monkeypatch, capsys, tmp_path):
    """On CUDA without liger-kernel: one `error:` line, exit 2 (the env is faked to report a CUDA device; the check
    comes before anything touches the device)."""
    from cod_train.engine import distributed
    from cod_train.runs import pretrain

    real_init = distributed.init_distributed

    def cuda_env(*args, **kwargs):
        return dataclasses.replace(real_init(*args, **kwargs), device=torch.device("cuda", 0))

    built: list[bool] = []
    monkeypatch.setattr(distributed, "init_distributed", cuda_env)
    monkeypatch.setattr(pretrain, "build_model_for", lambda *a, **k: built.append(True))
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel"
                        else real_find(name, *a))
    code = cod_pretrain(f"run_dir={tmp_path / 'run'}", *TINY, "train.max_steps=1", "model.use_kernels=true")
    err = capsys.readouterr().err
    assert code == 2 and not built
    assert err.startswith("error: model.use_kernels=true needs liger-kernel") and "Traceback" not in err
