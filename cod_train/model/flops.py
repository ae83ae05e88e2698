"""Parameter and FLOP counts, for MFU.

Training FLOPs per token = 6 * N_matmul + 12 * L * d * T, where N_matmul counts the weights that take part in
matrix multiplies (every projection and `lm_head`; not the embedding lookup, not the norms), 6 = 2 (multiply-
add) x 3 (forward + backward), and 12 * L * d * T is the attention score and value products (QK^T and AV:
2 x 2 x T x d per layer forward, x3 for backward) counted over the full T x T matrix as in PaLM's appendix B,
without discounting the causal mask.

Hyper-connections (residual=hc | mhc, n streams) add 6 x their multiply-adds per token (`hyper_macs_per_token`),
each of the 2L sub-layers: the read pre^T H (n d), the mix res^T H (n^2 d), the write post^T F (n d), and the
weights: DHC's tanh(N(H_j) [W_a | w_b]) for each stream (n d (n + 2)), mHC's projection of the flattened streams
(n d x (n + 2) n); static HC's weights cost nothing per token. The collapse adds n d (`sum` / `mean`) or, for
`head`, its projection n d x n and its read n d. Not counted, like the norms: the norms of DHC, mHC's RMS of the
streams, the sigmoids, tanh and Sinkhorn-Knopp (~ 2 n^2 `hc_sinkhorn_iters` element operations per sub-layer).
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


def _hyper_streams(config: PretrainedConfig) -> int:
    """n of residual=hc | mhc, else 0 (a LlamaConfig, any config without the key: 0)."""
    return int(getattr(config, "hc_streams", 0)) if getattr(config, "residual", None) in ("hc", "mhc") else 0


def _hyper_sublayer_params(config: PretrainedConfig) -> int:
    """Parameters of one sub-layer's hyper-connection (`cod_train.model.hyper_connections`)."""
    n, d = _hyper_streams(config), config.hidden_size
    if not n:
        return 0
    if config.residual == "mhc":  # fn [(n+2) n, n d], base [(n+2) n], scale [3]
        return (n + 2) * n * (n * d + 1) + 3
    static = n * (n + 1) + n  # static_alpha, static_beta
    return static + (norm_params(config, d) + d * (n + 1) + d + 2 if config.hc_dynamic else 0)


def _hyper_head_params(config: PretrainedConfig) -> int:
    n = _hyper_streams(config)
    return n * n * config.hidden_size + n + 1 if n and config.resolved_hc_collapse == "head" else 0


def hyper_macs_per_token(config: PretrainedConfig) -> int:
    """Forward multiply-adds per token of the hyper-connections (see the module docstring); 0 without them."""
    n, d, L = _hyper_streams(config), config.hidden_size, config.num_hidden_layers
    if not n:
        return 0
    weights = {"mhc": n * d * (n + 2) * n, "hc": n * d * (n + 2) if config.hc_dynamic else 0}[config.residual]
    per_sublayer = n * d + n * n * d + n * d + weights
    collapse = n * d * n + n * d if config.resolved_hc_collapse == "head" else n * d
    return 2 * L * per_sublayer + collapse


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
    return n + 2 * _hyper_sublayer_params(config)


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
    extra += _hyper_head_params(config)
    return matmul_params(config) + embedding + extra


def flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * matmul_params(config) + attention + 6 * hyper_macs_per_token(config)
