"""What cod-analyze writes for each model: the variance curve's interval over batches (against the bootstrap
done by hand), and the model's full scheme name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cod_train.eval.depth_io import text_batches
from cod_train.eval.depth_progress import BOOTSTRAP_SAMPLES
from cod_train.runs.analyze import AnalyzeConfig, AnalyzeOptions, run
from tests.helpers.analyze_runs import text_file, tiny_tokenizer, write_hf_run
from tests.helpers.cli import TINY, cod_pretrain
from tests.helpers.hand import hand_layers

SEQ, ROWS = 16, 2


def bootstrap_by_hand(per_batch: list[torch.Tensor], seed: int = 0) -> tuple[float, float]:
    """The documented band (docs/depth.md): resample the batches with replacement 1000 times (fixed seed), the
    variance of all elements of the drawn batches each time, its 2.5% and 97.5% quantiles."""
    draws = torch.randint(0, len(per_batch), (BOOTSTRAP_SAMPLES, len(per_batch)),
                          generator=torch.Generator().manual_seed(seed))  # fmt: skip
    stats = torch.stack([torch.cat([per_batch[i] for i in draw]).var(unbiased=False) for draw in draws.tolist()])
    return float(stats.quantile(0.025)), float(stats.quantile(0.975))


def test_layer_variance_has_the_bootstrap_band_over_batches(tmp_path: Path) -> None:
    run_dir = write_hf_run(tmp_path, "pre", layers=3)
    with torch.no_grad():  # larger weights than the 0.02 init: the layers change the variance
        model = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(run_dir / "hf")
    text = text_file(tmp_path)
    opts = AnalyzeOptions(diagnostics=["variance"], text_path=[str(text)], eval_tokens=4 * ROWS * SEQ, seq_len=SEQ,
                          micro_batch_size=ROWS, progress=False)  # fmt: skip
    run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=opts))
    got = json.loads((run_dir / "analysis" / "layer_variance.json").read_text())["models"][0]
    batches = text_batches([str(text)], tiny_tokenizer(tmp_path), seq_len=SEQ, micro_batch_size=ROWS,
                           max_tokens=4 * ROWS * SEQ)  # fmt: skip
    assert len(batches) == 4
    with torch.no_grad():
        states = [hand_layers(model.eval(), b["input_ids"]) for b in batches]
    for layer in range(1, 4):
        per_batch = [s[layer].double().flatten() for s in states]
        lo, hi = bootstrap_by_hand(per_batch)
        assert got["layer_var"][layer - 1] == pytest.approx(float(torch.cat(per_batch).var(unbiased=False)),
                                                            rel=1e-6)  # fmt: skip
        assert got["layer_var_lo"][layer - 1] == pytest.approx(lo, rel=1e-6)
        assert got["layer_var_hi"][layer - 1] == pytest.approx(hi, rel=1e-6)
        assert got["layer_var_std"][layer - 1] == pytest.approx(
            float(torch.stack([v.var(unbiased=False) for v in per_batch]).std()), rel=1e-6)
        assert lo < got["layer_var"][layer - 1] < hi


def test_training_log_and_depth_summary_name_the_whole_scheme(tmp_path: Path, monkeypatch, capsys) -> None:
    """The run directory, the training log and depth_summary.json name the scheme with the same function."""
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "norm=lns", "residual=gpas", "norm_fn=dyt", "train.max_steps=1", "train.eval_tokens=0"]
    assert cod_pretrain(*args) == 0
    run_dir = tmp_path / "runs" / "llama_tiny-lns+gpas+dyt"
    assert run_dir.is_dir(), sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert "(lns+gpas+dyt)" in capsys.readouterr().out
    opts = AnalyzeOptions(diagnostics=["logit_lens"], eval_tokens=64, seq_len=32, progress=False)
    run(AnalyzeConfig(checkpoint=[str(run_dir)], analyze=opts))
    summary = json.loads((run_dir / "analysis" / "depth_summary.json").read_text())["models"][0]
    assert summary["scheme"] == "lns+gpas+dyt" and summary["norm_type"] == "lns"
