"""`CodLlamaConfig`: LlamaConfig's keys plus the depth-zoo axes.

Subclassing `LlamaConfig` keeps every key (and its RoPE handling) identical to transformers', so tools that
read Llama configs read ours; `model_type = "cod_llama"` routes the Auto classes to our model.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from cod_train.model.zoo import (
    Placement,
    Residual,
    ZooAxes,
    model_problems,
    placement,
    residual,
    resolved_embed_norm,
    resolved_embed_scale,
    resolved_qk_norm,
)


@strict
class CodLlamaConfig(LlamaConfig, ZooAxes):
    r"""LlamaConfig plus the depth-zoo axes (`cod_train.model.zoo.ZooAxes`, declared once) and:

    embedding_init_std: std of the token embedding init; None = `initializer_range`.
    fused_loss: compute the training loss chunk by chunk straight from hidden states, never holding more
        than `loss_chunk_size` rows of fp32 logits (logits are then not returned when labels are given);
        0 = `cod_train.model.loss.default_chunk_size` (256 rows on CPU, 2048 on GPU).
    use_kernels: on CUDA, use Liger Kernel's fused RMSNorm / RoPE / SwiGLU / linear+cross-entropy when
        `liger_kernel` is installed (`cod_train.model.kernels`); ignored on CPU or without the package.
    """

    model_type = "cod_llama"

    embedding_init_std: float | None = None
    fused_loss: bool = True
    loss_chunk_size: int = 0
    use_kernels: bool = False

    def validate_architecture(self) -> None:
        problems = model_problems(**self.to_dict())
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def placement_scheme(self) -> Placement:
        return placement(self.norm_type)

    @property
    def residual_scheme(self) -> Residual:
        return residual(self.residual)

    def layer_placement(self, depth: int) -> str:
        """The placement of the layer at 1-based `depth` (Mix-LN's Post-LN layers, HybridNorm*'s first layer)."""
        return str(self.placement_scheme.layer(depth, self).name)

    @property
    def resolved_qk_norm(self) -> str:
        return resolved_qk_norm(self.norm_type, self.qk_norm)

    @property
    def v_norm(self) -> bool:
        """HybridNorm normalizes v as well as q and k (same granularity as `qk_norm`)."""
        return bool(self.placement_scheme.v_norm)

    @property
    def has_embed_norm(self) -> bool:
        return resolved_embed_norm(self.norm_type, self.embed_norm)

    @property
    def has_embed_scale(self) -> bool:
        return resolved_embed_scale(self.norm_fn, self.embed_scale)


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def set_token_ids(config: Any, tokenizer: Any) -> None:
    """Give ``config`` (a model or a generation config) the bos / eos / pad ids of ``tokenizer``, None where it
    has none. The config classes default to Llama's bos 1 / eos 2, other tokens of other tokenizers (cod-train's
    own has eos `<|endoftext|>` = 0, and 2 is "!"), and ``generate()`` stops at the generation config's eos."""
    for key in TOKEN_ID_KEYS:
        setattr(config, key, getattr(tokenizer, key, None))
