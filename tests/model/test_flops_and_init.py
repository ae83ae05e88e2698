"""Parameter/FLOP counting by hand, and the init options."""

import math

import torch

from cod_train.config import ModelConfig
from cod_train.model import build_model, flops_per_token, total_params


def test_flops_per_token_by_hand():
    model = build_model(ModelConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2), 128)
    d, f, L, V, hd = 64, 96, 3, 128, 16
    per_layer = d * 4 * hd + 2 * d * 2 * hd + 4 * hd * d + 3 * d * f  # q, k+v (2 kv heads), o, swiglu
    n_matmul = L * per_layer + V * d
    assert flops_per_token(model.config, 32) == 6 * n_matmul + 12 * L * d * 32
    assert model.num_flops_per_token(32) == flops_per_token(model.config, 32)
    # and every parameter is counted: matmul weights + embedding + 2 norms per layer + final norm
    assert model.num_params() == n_matmul + V * d + L * 2 * d + d == total_params(model.config)
    assert model.num_params(exclude_embeddings=True) == model.num_params() - V * d


def _std(t):
    return t.float().std().item()


def test_init_stds():
    L = 4
    base = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=L, num_attention_heads=4)
    torch.manual_seed(0)
    m = build_model(ModelConfig(**base, scaled_init=True, embedding_init_std=math.sqrt(2 / 5)), 2048)
    layer = m.model.layers[0]
    assert abs(_std(layer.self_attn.q_proj.weight) - 0.02) < 0.001
    assert abs(_std(layer.self_attn.o_proj.weight) - 0.02 / math.sqrt(2 * L)) < 0.0005
    assert abs(_std(layer.mlp.down_proj.weight) - 0.02 / math.sqrt(2 * L)) < 0.0005
    assert abs(_std(layer.mlp.up_proj.weight) - 0.02) < 0.001
    assert abs(_std(m.model.embed_tokens.weight) - math.sqrt(2 / 5)) < 0.01
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))

    deep = build_model(ModelConfig(**base, norm_type="deepnorm"), 2048)
    beta = (8 * L) ** -0.25
    dl = deep.model.layers[1]
    assert abs(_std(dl.self_attn.v_proj.weight) - 0.02 * beta) < 0.0005
    assert abs(_std(dl.mlp.gate_proj.weight) - 0.02 * beta) < 0.0005
    assert abs(_std(dl.self_attn.q_proj.weight) - 0.02) < 0.001
    assert dl.residual_scale == (2 * L) ** 0.25


def test_meta_device_build_then_reset_weights():
    cfg = ModelConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      norm_type="lns")
    with torch.device("meta"):
        model = build_model(cfg, 512)
    assert model.model.embed_tokens.weight.is_meta
    model.to_empty(device="cpu")
    model.reset_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert abs(_std(model.lm_head.weight) - 0.02) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones(128))
    assert model.model.layers[1].lns_scale == 1 / math.sqrt(2)
