"""Parameter and FLOP counts, for MFU.

Training FLOPs per token = 6 * N_matmul + 12 * L * d * T, where N_matmul counts the weights that take part in
matrix multiplies (every projection and `lm_head`; not the embedding lookup, not the norms), 6 = 2 (multiply-
add) x 3 (forward + backward), and 12 * L * d * T is the attention score and value products (QK^T and AV:
2 x 2 x T x d per layer forward, x3 for backward) counted over the full T x T matrix as in PaLM's appendix B,
without discounting the causal mask.
"""

from __future__ import annotations

from transformers import PretrainedConfig


def matmul_params(config: PretrainedConfig) -> int:
    d, f, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q_out = config.num_attention_heads * hd
    kv_out = (config.num_key_value_heads or config.num_attention_heads) * hd
    per_layer = d * q_out + 2 * d * kv_out + q_out * d + 3 * d * f
    return L * per_layer + config.vocab_size * d


def total_params(config: PretrainedConfig) -> int:
    """Exact parameter count of `CodLlamaForCausalLM(config)` without building it."""
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    norms_per_layer = 4 if getattr(config, "norm_type", "pre_ln") in ("sandwich_ln", "peri_ln") else 2
    extra = d if getattr(config, "norm_type", "pre_ln") == "peri_ln" else 0
    embedding = 0 if config.tie_word_embeddings else V * d  # tied: shares lm_head's matrix
    return matmul_params(config) + embedding + L * norms_per_layer * d + d + extra


def flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    return 6 * matmul_params(config) + 12 * config.num_hidden_layers * config.hidden_size * seq_len
