"""What the engines need to know about a model's structure: its decoder blocks, and how to allocate a model
built on the meta device. Imported by both :mod:`~cod_train.engine.engines` (FSDP2 shards block by block) and
:mod:`~cod_train.engine.parallelize` (activation checkpointing, compile); imports no other engine module."""

from __future__ import annotations

import torch
from torch import nn

from cod_train.core.errors import ConfigError


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks (``model.model.layers`` for LLaMA-style causal LMs)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"{type(model).__name__} has no `model.layers` ModuleList to wrap")
    return layers


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate a model built under ``torch.device("meta")`` and initialize it (``reset_weights``)."""
    if not any(p.is_meta for p in model.parameters()):
        return
    model.to_empty(device=device)
    reset = getattr(model, "reset_weights", None)
    if reset is None:
        raise ConfigError(f"{type(model).__name__} was built on the meta device but has no reset_weights()")
    reset()
