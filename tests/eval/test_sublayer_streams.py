"""Sub-layer contribution of hyper-connection models (residual=hc | mhc): each sub-layer's F is its own branch
output and x its own read of the n streams; the layer's entry is the change of the collapsed stream. Against the
plain float64 formulation of tests/helpers/hc_reference.py (streams as a Python list, every connection
weight off its init), through cod-analyze and through the in-training diagnostics row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cod_train.eval.depth_io import text_batches
from cod_train.eval.depth_train import training_diagnostics
from cod_train.runs.analyze import AnalyzeConfig, AnalyzeOptions, run
from tests.helpers.analyze_runs import text_file, tiny_tokenizer
from tests.helpers.hc_reference import hc_reference_logits, perturb_hc
from tests.helpers.zoo import make
from tests.model.zoo_reference import params

SEQ = 16


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def by_hand(model: torch.nn.Module, rows: torch.Tensor) -> dict[str, list[float]]:
    """Token means over ``rows`` [N, T] of ||F|| / ||x|| and cos(F, x) per layer, from the plain forward: the
    attention / MLP F = the sub-layer's output F(h), x = its read h = pre^T H; the layer: collapsed stream."""
    sd, n_layers = params(model), model.config.num_hidden_layers
    per_token: dict[str, list[list[torch.Tensor]]] = {}
    for ids in rows:
        log: list = []
        states: list = []
        hc_reference_logits(model, ids, sd, log=log, states=states)
        for layer in range(n_layers):
            pairs = {"attn": log[2 * layer][3:5], "mlp": log[2 * layer + 1][3:5],
                     "layer": (states[layer], states[layer + 1] - states[layer])}  # fmt: skip
            for part, (x, f) in pairs.items():
                per_token.setdefault(f"{part}_ratio", [[] for _ in range(n_layers)])[layer].append(
                    f.norm(dim=-1) / x.norm(dim=-1))
                per_token.setdefault(f"{part}_cos", [[] for _ in range(n_layers)])[layer].append(cos(f, x))
    return {key: [float(torch.cat(t).mean()) for t in layers] for key, layers in per_token.items()}


SCHEMES = {"mhc2": dict(residual="mhc", hc_streams=2), "hc3": dict(residual="hc", hc_streams=3),
           "dhc-lns-mean": dict(residual="hc", hc_dynamic=True, norm_type="lns", hc_collapse="mean")}  # fmt: skip


def test_cod_analyze_sublayer_contribution_of_streams_by_hand(tmp_path: Path) -> None:
    models, dirs = [], []
    tokenizer = tiny_tokenizer(tmp_path)
    for name, axes in SCHEMES.items():
        model = make(**axes)
        perturb_hc(model)
        models.append(model.eval())
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    text = text_file(tmp_path)
    opts = AnalyzeOptions(diagnostics=["sublayer"], text_path=[str(text)], eval_tokens=4 * SEQ, seq_len=SEQ,
                          micro_batch_size=2, progress=False)  # fmt: skip
    run(AnalyzeConfig(checkpoint=dirs, run_dir=str(tmp_path / "out"), analyze=opts))
    entries = json.loads((tmp_path / "out" / "analysis" / "sublayer_contribution.json").read_text())["models"]
    batches = text_batches([str(text)], tokenizer, seq_len=SEQ, micro_batch_size=2, max_tokens=4 * SEQ)
    rows = torch.cat([b["input_ids"] for b in batches])
    for name, model, got in zip(SCHEMES, models, entries, strict=True):
        for key, values in by_hand(model, rows).items():
            assert got[key] == pytest.approx(values, rel=1e-4, abs=1e-6), (name, key)
        assert "read of the n streams" in got["definition"]


def test_training_row_sublayer_contribution_of_streams_by_hand() -> None:
    model = make(residual="mhc", hc_streams=2)
    perturb_hc(model)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(3))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    row = training_diagnostics(model, {"input_ids": ids, "labels": labels})
    expected = by_hand(model, ids)
    for key in ("attn_ratio", "attn_cos", "mlp_ratio", "mlp_cos"):
        assert row[f"diag/{key}"] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
