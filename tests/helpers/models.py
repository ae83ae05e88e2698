"""One tiny model for the model, export and engine tests: 4 layers, 4 heads (2 key-value heads), width 32."""

from __future__ import annotations

import torch

from cod_train.config import ModelConfig
from cod_train.model import build_model

TINY_AXES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
VOCAB = 96


def tiny_model_config(**axes) -> ModelConfig:
    """The tiny shape with ``axes`` (any ModelConfig field: norm_type, residual, num_hidden_layers...) over it."""
    return ModelConfig(**{**TINY_AXES, **axes})


def tiny_model(*, seed: int = 0, vocab: int = VOCAB, random_norms: bool = False, **axes):
    """The tiny model built under ``torch.manual_seed(seed)``. ``random_norms``: in eval mode, with every 1-d
    weight (norm weights, gains) drawn from U[0.5, 1.5), since ones and zeros would hide a wrong fold."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(**axes), vocab)
    if random_norms:
        model.eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.copy_(0.5 + torch.rand_like(p))
    return model
