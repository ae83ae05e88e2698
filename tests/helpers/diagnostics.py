"""The depth diagnostics tests' tiny models (HF Llama with weights large enough that layers matter, ours in each
placement), their batches, identity layers and a mean-loss backward."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from cod_train.eval.depth_hooks import token_losses_sum
from cod_train.model import CodLlamaConfig, CodLlamaForCausalLM

VOCAB, LAYERS = 64, 4
SHAPE = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64}  # both tiny models' shape


def tiny_config(layers: int = LAYERS) -> LlamaConfig:
    """A tiny HF Llama config of ``layers`` layers."""
    return LlamaConfig(num_hidden_layers=layers, **SHAPE)


def large_weights(model: nn.Module) -> nn.Module:
    """``model`` in eval mode, its matrices drawn with std 0.2 (not the 0.02 init: so that layers matter)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def tiny_llama(layers: int = LAYERS, seed: int = 0) -> LlamaForCausalLM:
    """A tiny HF Llama in eval mode, its matrices drawn with std 0.2."""
    torch.manual_seed(seed)
    return large_weights(LlamaForCausalLM(tiny_config(layers)))


def make_batches(n: int = 2, rows: int = 3, seq: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """``n`` random batches of ``rows`` x ``seq`` tokens, labels shifted left (last position -100)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (rows, seq), generator=gen)
        labels = ids[:, 1:].clone()
        labels = torch.cat([labels, torch.full((rows, 1), -100)], dim=1)
        out.append({"input_ids": ids, "labels": labels})
    return out


def identity_layers(model: nn.Module) -> nn.Module:
    """Zero o_proj and down_proj: under pre_ln every layer maps x to x."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


NORM_TYPES = ("pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln")


def tiny_cod(norm_type: str, layers: int = 4, seed: int = 0) -> nn.Module:
    """Our tiny model with placement ``norm_type``, in eval mode, its matrices drawn with std 0.2."""
    torch.manual_seed(seed)
    return large_weights(CodLlamaForCausalLM(CodLlamaConfig(num_hidden_layers=layers, norm_type=norm_type, **SHAPE)))


def backward(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """Backward of the mean token loss of ``batch``."""
    loss_sum, n = token_losses_sum(model, batch)
    (loss_sum / n).backward()
