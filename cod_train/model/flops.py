"""Parameter and FLOP counts, for MFU.

Training FLOPs per token = 6 * N_matmul + 12 * L * d * T, where N_matmul counts the weights that take part in
matrix multiplies (every projection and `lm_head`; not the embedding lookup, not the norms), 6 = 2 (multiply-
add) x 3 (forward + backward), and 12 * L * d * T is the attention score and value products (QK^T and AV:
2 x 2 x T x d per layer forward, x3 for backward) counted over the full T x T matrix as in PaLM's appendix B,
without discounting the causal mask.

A residual scheme adds 6 x its own multiply-adds per token (its `extra_macs`). Hyper-connections (residual=hc |
mhc, n streams) add,
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


def cod_config(config: PretrainedConfig) -> PretrainedConfig:
    from cod_train.model.configuration import CodLlamaConfig

    if isinstance(config, CodLlamaConfig):
        return config
    return CodLlamaConfig.from_dict(dict(vars(config)))  # a duck-typed config.json (cod-report)


def extra_macs_per_token(config: PretrainedConfig) -> int:
    """Forward multiply-adds per token of the residual scheme beyond the projections and attention (the
    scheme's `extra_macs`; hyper-connections: see the module docstring); 0 for a plain Llama."""
    if getattr(config, "residual", None) is None:
        return 0
    return int(cod_config(config).residual_scheme.extra_macs(config))


def flops_per_token(config: PretrainedConfig, seq_len: int) -> int:
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq_len
    return 6 * matmul_params(config) + attention + 6 * extra_macs_per_token(config)
