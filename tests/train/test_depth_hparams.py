"""CompleteP's optimizer rules (`model.depth_hparams`): block learning rate x m^(alpha-1), Adam eps x m^(-alpha)."""

import pytest
import torch

from cod_train.config import ModelConfig, TrainConfig
from cod_train.engine.engines import set_lr
from cod_train.model import build_model
from cod_train.train.optim import build_optimizer

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=8, num_attention_heads=4)


@pytest.mark.parametrize("alpha,base", [(0.5, 2), (1.0, 2), (0.5, 8)])
def test_block_parameters_get_the_depth_scaled_lr_and_every_group_the_scaled_eps(alpha, base):
    model = build_model(ModelConfig(**SHAPE, residual="depth_scaled", depth_alpha=alpha, depth_base_layers=base,
                                    depth_hparams=True), 64)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, eps=1e-8, weight_decay=0.1))
    set_lr(opt, 1e-3)
    m = 8 / base
    block = {id(p) for p in model.model.layers.parameters()}
    seen = 0
    for group in opt.param_groups:
        assert group["eps"] == pytest.approx(1e-8 * m ** -alpha)
        for p in group["params"]:
            want = 1e-3 * m ** (alpha - 1) if id(p) in block else 1e-3
            assert group["lr"] == pytest.approx(want)
            assert group["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0)
            seen += 1
    assert seen == len(list(model.parameters()))


def test_without_the_rules_the_groups_are_the_two_of_before():
    model = build_model(ModelConfig(**SHAPE, residual="depth_scaled"), 64)
    opt = build_optimizer(model, TrainConfig(lr=1e-3, weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all("lr_scale" not in g and g["eps"] == 1e-8 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert torch.is_tensor(opt.param_groups[0]["params"][0])
