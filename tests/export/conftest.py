"""Helpers of the export tests: one tiny model per scheme the model supports, tiny ``cod-pretrain`` runs (a
session fixture), and loading exports in a Python where cod_train cannot be imported."""

from __future__ import annotations

import site
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cod_train.config import ConfigError
from cod_train.model import zoo
from tests.helpers.cli import EXPORT_RUN, run_command
from tests.helpers.models import tiny_model_config

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# every axis the model has (read from the registry at test time, so new schemes are covered)
AXES = {"residual": zoo.residual_names, "qk_norm": lambda: zoo.QK_NORMS, "norm_fn": lambda: zoo.NORM_FNS,
        "value_residual": lambda: (True,)}


def schemes() -> dict[str, dict]:
    """id -> ModelConfig overrides: every norm_type, and every value of every other axis on Pre-LN (the residual
    axis also on LNS, whose folds combine)."""
    out = {nt: {"norm_type": nt} for nt in zoo.placement_names()}
    for key, values in AXES.items():
        for value in values():
            for nt in ("pre_ln", "lns") if key == "residual" else ("pre_ln",):
                out.setdefault(f"{nt}-{key}={value}", {"norm_type": nt, key: value})
    # the shipped architectures other than Llama: OLMo 2 (reordered + full QK-norm), Qwen3 under LNS
    out.update({"reordered_ln-qk_norm=full": {"norm_type": "reordered_ln", "qk_norm": "full"},
                "reordered_ln-qk_norm=full-layerscale": {"norm_type": "reordered_ln", "qk_norm": "full",
                                                         "residual": "layerscale"},
                "lns-qk_norm=head": {"norm_type": "lns", "qk_norm": "head"}})
    valid = {}
    for name, overrides in out.items():
        # a scheme without grouped KV heads (nGPT's shared s_qk) is tried with num_key_value_heads = heads
        for attempt in (overrides, {**overrides, "num_key_value_heads": None}):
            try:
                tiny_model_config(**attempt).validate()
            except (ConfigError, TypeError):
                continue
            valid[name] = attempt
            break
    return valid


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Callable[..., Path]:
    """``tiny_run(*overrides)``: the run directory of ``cod-pretrain EXPORT_RUN overrides`` (one run per overrides)."""
    from cod_train.cli import pretrain

    runs: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> Path:
        if overrides not in runs:
            run_dir = tmp_path_factory.mktemp("run") / "run"
            code = run_command(pretrain.main, "cod-pretrain", f"run_dir={run_dir}", *EXPORT_RUN, *overrides)
            assert code == 0 and (run_dir / "hf").is_dir(), f"cod-pretrain {overrides} exited {code}"
            runs[overrides] = run_dir
        return runs[overrides]

    return run
