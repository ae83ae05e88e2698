"""Hidden states computed by hand, layer by layer (no hooks, no cod_train code): the expectation the depth
analyses are tested against."""

from __future__ import annotations

import torch
from torch import nn


def hand_layers(model: nn.Module, ids: torch.Tensor, skip: int | None = None) -> list[torch.Tensor]:
    """h_0..h_L (h_l for the skipped layer = its input) with the layers called one by one."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    pos = torch.arange(ids.shape[1])[None]
    emb = inner.rotary_emb(hidden, position_ids=pos)
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
    states = [hidden]
    for idx, layer in enumerate(inner.layers):
        if idx != skip:
            out = layer(hidden, attention_mask=mask, position_embeddings=emb, position_ids=pos)
            hidden = out[0] if isinstance(out, tuple) else out
        states.append(hidden)
    return states
