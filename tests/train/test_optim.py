import math

import pytest
import torch

from cod_train.config import ConfigError, TrainConfig
from cod_train.train.optim import build_optimizer, lr_at, param_groups


def test_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


def test_no_warmup_starts_at_peak():
    cfg = TrainConfig(lr=2.0, warmup_steps=0, max_steps=10, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(2.0)
    assert lr_at(5, cfg) == pytest.approx(1.0)
    assert math.isclose(lr_at(10, cfg), 0.0, abs_tol=1e-12)


def test_weight_decay_only_on_matrices():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(model, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    opt = build_optimizer(model, TrainConfig(optimizer="adam", weight_decay=0.0))
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_optimizer(model, TrainConfig(optimizer="sgdx"))
