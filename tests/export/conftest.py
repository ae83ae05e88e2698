"""Helpers of the export tests: one tiny model per scheme the model supports, tiny ``cod-pretrain`` runs, and
loading exports in a Python where cod_train cannot be imported."""

from __future__ import annotations

import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch

from cod_train import config as cfgmod
from cod_train.config import ConfigError, ModelConfig
from cod_train.model import build_model

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
BASE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64)
VOCAB = 96
# every axis the model has (read at test time, so new schemes are covered): value lists in cod_train.config
AXES = {"residual": ("RESIDUALS", "HYPER_RESIDUALS"), "qk_norm": ("QK_NORMS",), "norm_fn": ("NORM_FNS",)}


def schemes() -> dict[str, dict]:
    """id -> ModelConfig overrides: every norm_type, and every value of every other axis on Pre-LN (the residual
    axis also on LNS, whose folds combine)."""
    out = {nt: {"norm_type": nt} for nt in cfgmod.NORM_TYPES}
    for key, consts in AXES.items():
        for value in (v for const in consts for v in getattr(cfgmod, const, ())):
            for nt in ("pre_ln", "lns") if key == "residual" else ("pre_ln",):
                out.setdefault(f"{nt}-{key}={value}", {"norm_type": nt, key: value})
    # the shipped architectures other than Llama: OLMo 2 (reordered + full QK-norm), Qwen3 under LNS
    out.update({"reordered_ln-qk_norm=full": {"norm_type": "reordered_ln", "qk_norm": "full"},
                "reordered_ln-qk_norm=full-layerscale": {"norm_type": "reordered_ln", "qk_norm": "full",
                                                         "residual": "layerscale"},
                "lns-qk_norm=head": {"norm_type": "lns", "qk_norm": "head"}})
    valid = {}
    for name, overrides in out.items():
        try:
            ModelConfig(**BASE, **overrides).validate()
        except (ConfigError, TypeError):
            continue
        valid[name] = overrides
    return valid


def tiny(seed: int = 0, **overrides):
    """A tiny model with random norm weights and gains (ones and zeros would hide a wrong fold)."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**BASE, **overrides), VOCAB).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(0.5 + torch.rand_like(p))
    return model


def site_packages() -> str:
    return next(p for p in site.getsitepackages() if Path(p, "torch").is_dir())


def load_isolated(jobs: list[dict], tmp: Path, timeout: float = 240) -> dict:
    """Run ``isolated.py`` on ``jobs`` with ``python -I -S`` (no cod_train importable); its results."""
    torch.save(jobs, tmp / "jobs.pt")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf_home"), "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-I", "-S", str(HERE / "isolated.py"), site_packages(),
                           str(tmp / "jobs.pt"), str(tmp / "results.pt")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"isolated loader exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    results = torch.load(tmp / "results.pt", weights_only=False)
    assert results["has_cod_train"] is False, "cod_train was importable in the isolated Python"
    return results


def rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


# 3 steps of a tiny model on the bundled sample, checkpoints at steps 2 and 3, the end-of-run export in run/hf
TINY_RUN = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
            "model.num_attention_heads=2", "data.seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=2",
            "train.eval_tokens=256", "train.log_every=1", "train.diag_every=0", "train.cpu_peak_flops=1e11",
            "train.max_steps=3", "train.ckpt_every=2"]


def run_command(main: Callable[[], object], name: str, *args: str) -> int:
    """A cod-* command's ``main`` run in this process with ``args``; its exit code."""
    with mock.patch.object(sys, "argv", [name, *args]):
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Callable[..., Path]:
    """``tiny_run(*overrides)``: the run directory of ``cod-pretrain TINY_RUN overrides`` (one run per overrides)."""
    from cod_train.cli import pretrain

    runs: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> Path:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("run") / "run"
            code = run_command(pretrain.main, "cod-pretrain", f"run_dir={run_dir}", *TINY_RUN, *overrides)
            assert code == 0 and (run_dir / "hf").is_dir(), f"cod-pretrain {overrides} exited {code}"
            runs[overrides] = run_dir
        return runs[overrides]

    return run
