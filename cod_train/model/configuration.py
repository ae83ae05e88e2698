"""`CodLlamaConfig`: LlamaConfig's keys plus the normalization placement.

Subclassing `LlamaConfig` keeps every key (and its RoPE handling) identical to transformers', so tools that
read Llama configs read ours; `model_type = "cod_llama"` routes the Auto classes to our model.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

from cod_train.config import NORM_TYPES, config_problems  # noqa: F401  (NORM_TYPES re-exported)


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
    """

    model_type = "cod_llama"

    norm_type: str = "pre_ln"
    mix_ln_ratio: float = 0.25
    scaled_init: bool = False
    embedding_init_std: float | None = None
    fused_loss: bool = True
    loss_chunk_size: int = 0
    use_kernels: bool = False

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

        Returns one of pre_ln, post_ln, lns, deepnorm, sandwich (peri_ln layers are sandwich layers).
        """
        if self.norm_type == "mix_ln":
            return "post_ln" if depth <= self.num_post_ln_layers else "pre_ln"
        if self.norm_type in ("sandwich_ln", "peri_ln"):
            return "sandwich"
        return self.norm_type
