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


def norm_params(config: PretrainedConfig, dim: int) -> int:
    """Parameters of one block norm of `config.norm_fn` over `dim` channels (`cod_train.model.norms`)."""
    fn = getattr(config, "norm_fn", "rmsnorm")
    bias = dim if getattr(config, "norm_bias", False) and fn != "rmsnorm" else 0
    return dim + bias + {"rmsnorm": 0, "layernorm": 0, "dyt": 1, "derf": 2}[fn]


def _layer_extra_params(config: PretrainedConfig, depth: int) -> int:
    """Norms, q/k/v norms and residual gains of the layer at `depth` (everything but the projections)."""
    from cod_train.model.configuration import PLACEMENT_NORMS

    d = config.hidden_size
    n = len(PLACEMENT_NORMS[config.layer_placement(depth)]) * norm_params(config, d)
    qk = config.resolved_qk_norm
    if qk != "none":
        hd = getattr(config, "head_dim", None) or d // config.num_attention_heads
        kv = config.num_key_value_heads or config.num_attention_heads
        widths = [config.num_attention_heads * hd, kv * hd] + ([kv * hd] if config.v_norm else [])
        n += len(widths) * hd if qk == "head" else sum(widths)
    n += {"layerscale": 2 * d, "rezero": 2, "gpas": 1}.get(config.residual, 0)
    return n


def total_params(config: PretrainedConfig) -> int:
    """Exact parameter count of `CodLlamaForCausalLM(config)` without building it (a LlamaConfig counts as
    `pre_ln` with RMSNorm)."""
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    embedding = 0 if config.tie_word_embeddings else V * d  # tied: shares lm_head's matrix
    if not hasattr(config, "layer_placement"):
        if getattr(config, "norm_type", None) is None:
            return matmul_params(config) + embedding + (2 * L + 1) * d
        from cod_train.model.configuration import CodLlamaConfig

        config = CodLlamaConfig.from_dict(dict(vars(config)))  # a duck-typed config.json (cod-report)
    extra = sum(_layer_extra_params(config, depth) for depth in range(1, L + 1))
    extra += norm_params(config, d) * (1 + int(config.has_embed_norm)) + int(config.has_embed_scale)
    return matmul_params(config) + embedding + extra


def flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    return 6 * matmul_params(config) + 12 * config.num_hidden_layers * config.hidden_size * seq_len
