"""The depth zoo's tiny model (``make``), each layer's placement written from the papers (``kinds``) and its
learned scalars moved off their init (``perturb``): shared by the scheme tests under tests/model and tests/eval."""

import math

import torch

from cod_train.config import ModelConfig
from cod_train.model import CodLlamaForCausalLM, build_model

SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def kinds(norm_type: str, layers: int, ratio: float = 0.25) -> list[str]:
    """Each layer's placement, written from the papers (not read from the model)."""
    if norm_type == "mix_ln":
        n_post = math.floor(ratio * layers)
        return ["post_ln"] * n_post + ["pre_ln"] * (layers - n_post)
    if norm_type == "hybrid_ln_star":  # HybridNorm*: the first block is Pre-Norm (with the q/k/v norms)
        return ["pre_ln"] + ["hybrid"] * (layers - 1)
    return [{"sandwich_ln": "sandwich", "peri_ln": "sandwich", "reordered_ln": "reordered",
             "hybrid_ln": "hybrid", "hybrid_ln_star": "hybrid"}.get(norm_type, norm_type)] * layers


def make(**overrides) -> CodLlamaForCausalLM:
    """The depth zoo's tiny model (seed 0, vocabulary 96): SHAPE with ``overrides``."""
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**SHAPE, **overrides}), 96)


def perturb(model: CodLlamaForCausalLM, seed: int = 1) -> None:
    """Move every learned scalar / gain / norm parameter away from its init, so each is used where the equations
    say (ReZero gains and GPAS gates start at 0, where a missing or misplaced one would go unnoticed)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = torch.rand(p.shape, generator=g)
            if name.endswith(".alpha"):
                p.copy_(0.3 + 0.6 * u)
            elif name.endswith((".shift", ".bias")):
                p.copy_(0.4 * u - 0.2)
            elif "gpas_gate" in name:
                p.copy_(2.0 * u - 1.0)
            elif "embed_scale" in name:
                p.copy_(2.0 + u)
            elif p.ndim == 1:  # norm weights, LayerScale / ReZero gains
                p.copy_(0.5 + u)
