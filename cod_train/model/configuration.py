"""`CodLlamaConfig`: LlamaConfig's keys plus the normalization placement.

Subclassing `LlamaConfig` keeps every key (and its RoPE handling) identical to transformers', so tools that
read Llama configs read ours; `model_type = "cod_llama"` routes the Auto classes to our model.
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from cod_train.config import (  # noqa: F401  (NORM_TYPES re-exported)
    HYBRID_NORM_TYPES,
    HYPER_RESIDUALS,
    NORM_TYPES,
    config_problems,
    resolved_embed_norm,
    resolved_embed_scale,
    resolved_qk_norm,
)

# The norms each placement builds in a layer, with the side (attn | mlp) that picks a DyT / Derf initial alpha.
# No placement builds a norm it does not use (an unused parameter breaks DDP and wastes optimizer state).
PLACEMENT_NORMS: dict[str, tuple[tuple[str, str], ...]] = {
    "pre_ln": (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp")),
    "post_ln": (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp")),
    "lns": (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp")),
    "deepnorm": (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp")),
    "sandwich": (("input_layernorm", "attn"), ("post_attn_out_norm", "attn"),
                 ("post_attention_layernorm", "mlp"), ("post_mlp_out_norm", "mlp")),
    "reordered": (("post_attn_out_norm", "attn"), ("post_mlp_out_norm", "mlp")),
    "hybrid": (("post_attention_layernorm", "mlp"),),
}


@strict
class CodLlamaConfig(LlamaConfig):
    r"""LlamaConfig plus:

    norm_type: one of `NORM_TYPES` (see `cod_train.model.modeling` for the equations).
    mix_ln_ratio: for `mix_ln`, layers l <= floor(mix_ln_ratio * L) are Post-LN, the rest Pre-LN.
    scaled_init: std / sqrt(2L) on `o_proj` and `down_proj` (combinable with any placement).
    embedding_init_std: std of the token embedding init; None = `initializer_range`.
    fused_loss: compute the training loss chunk by chunk straight from hidden states, never holding more
        than `loss_chunk_size` rows of fp32 logits (logits are then not returned when labels are given);
        0 = `cod_train.model.loss.default_chunk_size` (256 rows on CPU, 2048 on GPU).
    use_kernels: on CUDA, use Liger Kernel's fused RMSNorm / RoPE / SwiGLU / linear+cross-entropy when
        `liger_kernel` is installed (`cod_train.model.kernels`); ignored on CPU or without the package.
    embed_norm, qk_norm, norm_fn, norm_bias, norm_alpha_*, embed_scale, residual, layerscale_init, depth_alpha,
        depth_base_layers, depth_hparams, hc_streams, hc_dynamic, hc_sinkhorn_iters, hc_collapse: the depth-zoo axes, documented on `cod_train.config.ModelConfig`
        (null = the placement's or norm function's own choice: `resolved_*` below).
    """

    model_type = "cod_llama"

    norm_type: str = "pre_ln"
    mix_ln_ratio: float = 0.25
    scaled_init: bool = False
    embedding_init_std: float | None = None
    fused_loss: bool = True
    loss_chunk_size: int = 0
    use_kernels: bool = False
    embed_norm: bool | None = None
    qk_norm: str | None = None
    norm_fn: str = "rmsnorm"
    norm_bias: bool = False
    norm_alpha_attn: float = 0.8
    norm_alpha_mlp: float = 0.2
    norm_alpha_final: float = 0.2
    embed_scale: bool | None = None
    residual: str = "plain"
    layerscale_init: float = 0.1
    depth_alpha: float = 1.0
    depth_base_layers: int = 1
    depth_hparams: bool = False
    hc_streams: int = 4
    hc_dynamic: bool = False
    hc_sinkhorn_iters: int = 20
    hc_collapse: str | None = None

    def validate_architecture(self) -> None:
        problems = config_problems(**self.to_dict())
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def num_post_ln_layers(self) -> int:
        """How many leading layers are Post-LN under `mix_ln` (floor(ratio * L))."""
        return math.floor(self.mix_ln_ratio * self.num_hidden_layers + 1e-9)

    def layer_placement(self, depth: int) -> str:
        """The sub-layer arrangement of the layer at 1-based `depth`.

        Returns a key of `PLACEMENT_NORMS`: pre_ln, post_ln, lns, deepnorm, sandwich (peri_ln layers are
        sandwich layers), reordered, hybrid (HybridNorm* makes its first layer pre_ln, with the q/k/v norms).
        """
        if self.norm_type == "mix_ln":
            return "post_ln" if depth <= self.num_post_ln_layers else "pre_ln"
        if self.norm_type == "hybrid_ln_star" and depth == 1:
            return "pre_ln"
        return {"sandwich_ln": "sandwich", "peri_ln": "sandwich", "reordered_ln": "reordered",
                "hybrid_ln": "hybrid", "hybrid_ln_star": "hybrid"}.get(self.norm_type, self.norm_type)

    @property
    def resolved_qk_norm(self) -> str:
        return resolved_qk_norm(self.norm_type, self.qk_norm)

    @property
    def v_norm(self) -> bool:
        """HybridNorm normalizes v as well as q and k (same granularity as `qk_norm`)."""
        return self.norm_type in HYBRID_NORM_TYPES

    @property
    def has_embed_norm(self) -> bool:
        return resolved_embed_norm(self.norm_type, self.embed_norm)

    @property
    def has_embed_scale(self) -> bool:
        return resolved_embed_scale(self.norm_fn, self.embed_scale)

    @property
    def depth_hparam_scales(self) -> tuple[float, float]:
        """CompleteP's optimizer rules (`depth_hparams`), m = L / depth_base_layers: the learning rate of every
        parameter inside the blocks x m^(alpha - 1), Adam's eps x m^(-alpha). (1.0, 1.0) when off."""
        if not self.depth_hparams:
            return 1.0, 1.0
        m = self.num_hidden_layers / self.depth_base_layers
        return m ** (self.depth_alpha - 1.0), m ** -self.depth_alpha

    @property
    def hyper_streams(self) -> int:
        """n, the number of residual streams of residual=hc | mhc; 0 for a plain one-stream residual."""
        return self.hc_streams if self.residual in HYPER_RESIDUALS else 0

    @property
    def resolved_hc_collapse(self) -> str:
        """How the streams become one before the final norm: the HC paper sums them, DeepSeek-V4's mHC weights
        them with a learned head (`hc_head`)."""
        if self.hc_collapse is not None:
            return self.hc_collapse
        return "head" if self.residual == "mhc" else "sum"

    @property
    def branch_scale(self) -> float:
        """`depth_scaled`: every branch output times (L / depth_base_layers)^(-depth_alpha); 1.0 otherwise."""
        if self.residual != "depth_scaled":
            return 1.0
        return (self.num_hidden_layers / self.depth_base_layers) ** -self.depth_alpha


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def set_token_ids(config: Any, tokenizer: Any) -> None:
    """Give ``config`` (a model or a generation config) the bos / eos / pad ids of ``tokenizer``, None where it
    has none. The config classes default to Llama's bos 1 / eos 2, other tokens of other tokenizers (cod-train's
    own has eos `<|endoftext|>` = 0, and 2 is "!"), and ``generate()`` stops at the generation config's eos."""
    for key in TOKEN_ID_KEYS:
        setattr(config, key, getattr(tokenizer, key, None))
