"""nGPT through the commands: cod-pretrain keeps every weight vector on the unit sphere after its steps and
resumes bit-exactly, cod-analyze runs every diagnostic on it, cod-report labels it, cod-sft keeps it on the sphere
and applies nGPT's training rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cod_train.eval.depth_registry import DIAG_FILES, NAMES
from tests.helpers.cli import one_error_line, run_command, scheme_lifecycle
from tests.helpers.run_dirs import losses

SCHEME = ["model.norm_type=ngpt", "train.warmup_steps=0", "train.min_lr_ratio=1.0",  # lr independent of max_steps
          "train.eval_every=0", "train.ckpt_every=2",
          "train.keep_last=0", "train.diag_every=2"]
pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ngpt")
    scheme_lifecycle(root, *SCHEME)
    return root


def assert_on_the_sphere(state: dict[str, torch.Tensor]) -> None:
    checked = 0
    for name, weight in state.items():
        if weight.dim() == 2:  # every matrix: rows along d, except o_proj / down_proj: columns along d
            dim = 0 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
            torch.testing.assert_close(weight.float().norm(dim=dim), torch.ones(weight.shape[1 - dim]))
            checked += 1
    assert checked == 2 + 2 * 7  # embedding, lm_head, 7 per layer


def test_weights_stay_on_the_sphere_through_training_and_resume_exactly(runs: Path) -> None:
    state = load_file(runs / "straight" / "hf" / "model.safetensors")
    assert_on_the_sphere(state)
    alphas = [w for n, w in state.items() if n.endswith("alpha_attn.scale")]
    assert alphas and not all(torch.allclose(a, torch.full_like(a, 32 ** -0.5)) for a in alphas)  # trained
    straight, resumed = losses(runs / "straight"), losses(runs / "resumed")
    assert sorted(straight) == [1, 2, 3, 4] and straight == resumed  # bit-exact through the resume at step 2


def test_every_diagnostic_runs_on_ngpt(runs: Path) -> None:
    for name in (*NAMES, "depth_summary"):
        stem = DIAG_FILES.get(name, name)
        model = json.loads((runs / "straight" / "analysis" / f"{stem}.json").read_text())["models"][0]
        assert model["scheme"] == "ngpt" and model["num_layers"] == 2, name


def test_cod_report_labels_ngpt(runs: Path) -> None:
    rows = json.loads((runs / "report" / "report.json").read_text())["runs"]
    assert [r["run"] for r in rows] == ["ngpt"]


SFT = ["train.max_steps=2", "train.global_batch_size=4", "train.micro_batch_size=2", "train.eval_every=0",
       "sft.eval_fraction=0", "train.cpu_peak_flops=1e11", "device=cpu"]


def test_cod_sft_keeps_ngpt_on_the_sphere_under_its_rules(runs: Path, capsys: pytest.CaptureFixture) -> None:
    """cod-sft of an nGPT run: its defaults (weight decay, warm-up) are refused before work with nGPT's own rule,
    as cod-pretrain refuses them; with them off, the fine-tuned weights are renormalized after every step."""
    from cod_train.cli import sft

    checkpoint = f"checkpoint={runs / 'straight'}"
    capsys.readouterr()
    refused = [checkpoint, f"run_dir={runs / 'sft-refused'}", *SFT, "train.weight_decay=0.1"]  # warm-up: default
    assert run_command(sft.main, "cod-sft", *refused) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "is a norm_type=ngpt model" in line and "train.weight_decay=0" in line and "train.warmup_steps=0" in line
    assert not (runs / "sft-refused").exists()

    args = [checkpoint, f"run_dir={runs / 'sft'}", *SFT, "train.weight_decay=0", "train.warmup_steps=0"]
    assert run_command(sft.main, "cod-sft", *args) == 0
    before = load_file(runs / "straight" / "hf" / "model.safetensors")
    after = load_file(runs / "sft" / "hf" / "model.safetensors")
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])  # trained
    assert_on_the_sphere(after)
