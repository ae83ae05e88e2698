"""Optimizer and learning-rate schedule.

Parameters with fewer than two dimensions (norm gains, biases) get no weight decay; matrices, embeddings
included, get ``train.weight_decay`` (0 in the papers, so the split only matters when it is set).
``adamw`` = decoupled decay (torch AdamW); ``adam`` = torch Adam with no decay at all when
``weight_decay == 0``, L2 decay otherwise. The schedule is a pure function of the step, so it needs no
state of its own in checkpoints and is the same for every engine. With `model.depth_hparams` (CompleteP,
arXiv 2505.01618, m = L / `model.depth_base_layers`) the decoder blocks' parameters learn at lr x m^(alpha - 1)
and Adam's eps is eps x m^(-alpha); embeddings, `lm_head` and the final norm keep the base learning rate.

``muon`` (cod_train/train/muon.py): torch's Muon on the hidden matrices (the weight of every ``nn.Linear`` inside
a decoder block: attention q/k/v/o, MLP gate/up/down), AdamW on the rest (embeddings, ``lm_head``, norms, biases,
the residual schemes' scalars and matrices). With ``train.muon_adjust_lr=match_rms_adamw`` (default) Muon's step
on an A x B matrix is lr x 0.2 x sqrt(max(A, B)), so its update RMS is ~0.2 lr, AdamW's typical one (Moonshot,
arXiv 2502.16982): both halves share ``train.lr``, its schedule and ``train.weight_decay`` (decoupled, lr x wd).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cod_train.config import TrainConfig
from cod_train.core.errors import ConfigError
from cod_train.engine.layers import decoder_layers
from cod_train.train.muon import MUON_FLAG, MuonWithAdamW

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def depth_hparam_scales(model: nn.Module) -> tuple[float, float]:
    """(learning-rate scale of the decoder blocks' parameters, Adam-eps scale) of the model's residual scheme
    (CompleteP's `depth_hparams`); (1.0, 1.0) for any other model. Wrappers with a `.module` (DDP) are looked through."""
    config = getattr(model, "config", None) or getattr(getattr(model, "module", None), "config", None)
    scheme = getattr(config, "residual_scheme", None)
    scales = scheme.optimizer_scales(config) if scheme is not None else (1.0, 1.0)
    return float(scales[0]), float(scales[1])


def hidden_matrices(model: nn.Module) -> set[int]:
    """ids of the parameters Muon orthogonalizes: the weight of every ``nn.Linear`` inside a decoder block."""
    return {id(module.weight) for layer in decoder_layers(model) for module in layer.modules()
            if isinstance(module, nn.Linear)}


def param_groups(model: nn.Module, weight_decay: float, muon_lr_ratio: float | None = None) -> list[dict]:
    """Decay / no-decay groups; with CompleteP's rules the decoder blocks' parameters form groups of their own
    whose `lr_scale` multiplies the scheduled learning rate (`engine.set_lr`). With ``muon_lr_ratio`` (Muon's
    learning rate / ``train.lr``) the hidden matrices form groups tagged ``muon``, their ``lr_scale`` times it."""
    lr_scale, _ = depth_hparam_scales(model)
    muon_ids = hidden_matrices(model) if muon_lr_ratio is not None else set()
    groups: dict[tuple[bool, bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            in_block = lr_scale != 1.0 and ".layers." in f".{name}"
            groups.setdefault((id(param) in muon_ids, param.ndim >= 2, in_block), []).append(param)
    out = []
    for is_muon, decay, in_block in sorted(groups, reverse=True):
        group: dict = {"params": groups[is_muon, decay, in_block], "weight_decay": weight_decay if decay else 0.0}
        scale = (lr_scale if in_block else 1.0) * (muon_lr_ratio if is_muon and muon_lr_ratio else 1.0)
        if is_muon:
            group[MUON_FLAG] = True
        if scale != 1.0:
            group["lr_scale"] = scale
        out.append(group)
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    eps = cfg.eps * depth_hparam_scales(model)[1]
    if name == "muon":
        return build_muon(model, cfg, eps)
    if name not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer must be one of {(*OPTIMIZERS, 'muon')}, got {cfg.optimizer!r}")
    return OPTIMIZERS[name](param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            eps=eps, fused=True)


def build_muon(model: nn.Module, cfg: TrainConfig, adam_eps: float) -> MuonWithAdamW:
    ratio = cfg.muon_lr / cfg.lr if cfg.muon_lr > 0 else 1.0
    muon = {"lr": cfg.lr * ratio, "momentum": cfg.muon_momentum, "nesterov": cfg.muon_nesterov,
            "ns_steps": cfg.muon_ns_steps, "adjust_lr_fn": cfg.muon_adjust_lr}
    adamw = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": adam_eps, "fused": True}
    return MuonWithAdamW(param_groups(model, cfg.weight_decay, muon_lr_ratio=ratio), muon=muon, adamw=adamw)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio * lr``."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))
