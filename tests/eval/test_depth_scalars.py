"""Learned scalars per layer: in the in-training diagnostics row and in cod-analyze's model entries."""

import json

import pytest
import torch

from cod_train.config import ModelConfig
from cod_train.eval.depth_io import model_info
from cod_train.eval.depth_scalars import learned_scalars
from cod_train.eval.depth_train import scalarize_diagnostics, training_diagnostics
from cod_train.model import build_model


def _model(**axes):
    torch.manual_seed(0)
    return build_model(ModelConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                                   **axes), 64)


def test_each_layer_reports_its_own_values_and_none_where_it_has_no_such_parameter():
    model = _model(norm_type="hybrid_ln_star", norm_fn="derf", residual="gpas")
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.gpas_gate.weight.fill_(0.1 * (i + 1))
            layer.post_attention_layernorm.alpha.fill_(1.0 + i)
        model.model.layers[0].input_layernorm.shift.fill_(-0.5)
        model.model.embed_scale.weight.fill_(3.0)
    got = learned_scalars(model)
    assert got["gpas_gate"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert got["post_attention_layernorm.alpha"] == [1.0, 2.0, 3.0, 4.0]
    # HybridNorm*: only layer 1 has a pre-attention norm
    assert got["input_layernorm.shift"] == [-0.5, None, None, None]
    assert got["embed_scale"] == 3.0 and got["norm.alpha"] == pytest.approx(0.2)  # model-level: one float each
    assert json.loads(json.dumps(got)) == got  # JSON-ready for metrics.jsonl


def test_layerscale_reports_the_mean_gain_and_plain_models_report_nothing():
    model = _model(residual="layerscale", layerscale_init=0.25)
    with torch.no_grad():
        model.model.layers[2].mlp_gain.weight.copy_(torch.linspace(0.0, 1.0, 32))
    got = learned_scalars(model)
    assert got["attn_gain"] == [0.25] * 4
    assert got["mlp_gain"][2] == pytest.approx(0.5)
    assert learned_scalars(_model()) == {}


def test_training_diagnostics_row_and_its_wandb_form_carry_the_scalars():
    model = _model(residual="rezero")
    with torch.no_grad():
        model.model.layers[1].attn_gain.weight.fill_(0.75)
    ids = torch.randint(0, 64, (2, 8))
    row = training_diagnostics(model, {"input_ids": ids, "labels": ids})
    assert row["diag/attn_gain"] == [0.0, 0.75, 0.0, 0.0]
    flat = scalarize_diagnostics({"diag/input_layernorm.alpha": [0.8, None]})
    assert flat == {"diag/input_layernorm.alpha/L01": 0.8}  # a layer without the parameter is left out


def test_cod_analyze_model_entries_carry_the_learned_scalars():
    model = _model(norm_fn="dyt")
    info = model_info(model, "spec", "label")
    assert info["learned_scalars"]["input_layernorm.alpha"] == pytest.approx([0.8] * 4)
    assert info["learned_scalars"]["post_attention_layernorm.alpha"] == pytest.approx([0.2] * 4)
