"""Optimizer and learning-rate schedule.

Parameters with fewer than two dimensions (norm gains, biases) get no weight decay; matrices, embeddings
included, get ``train.weight_decay`` (0 in the papers, so the split only matters when it is set).
``adamw`` = decoupled decay (torch AdamW); ``adam`` = torch Adam with no decay at all when
``weight_decay == 0``, L2 decay otherwise. The schedule is a pure function of the step, so it needs no
state of its own in checkpoints and is the same for every engine.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cod_train.config import TrainConfig
from cod_train.core.errors import ConfigError

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {tuple(OPTIMIZERS)}, got {cfg.optimizer!r}")
    return OPTIMIZERS[name](param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=cfg.eps, fused=True)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
