"""`CodLlamaConfig`: LlamaConfig's keys plus the normalization placement.

Subclassing `LlamaConfig` keeps every key (and its RoPE handling) identical to transformers', so tools that
read Llama configs read ours; `model_type = "cod_llama"` routes the Auto classes to our model.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig

NORM_TYPES = ("pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln")


def config_problems(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int | None,
    vocab_size: int | None,
    max_position_embeddings: int,
    norm_type: str,
    mix_ln_ratio: float,
    initializer_range: float = 0.02,
    embedding_init_std: float | None = None,
    **_: object,
) -> list[str]:
    """Every problem with a model shape, as sentences that say what to change. Empty when valid."""
    problems = []
    sizes = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "max_position_embeddings": max_position_embeddings,
    }
    if vocab_size is not None:
        sizes["vocab_size"] = vocab_size
    if num_key_value_heads is not None:
        sizes["num_key_value_heads"] = num_key_value_heads
    for key, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{key} must be a positive integer, got {value!r}")
    if norm_type not in NORM_TYPES:
        problems.append(f"unknown norm_type {norm_type!r}; valid: {', '.join(NORM_TYPES)}")
    if not (isinstance(mix_ln_ratio, (int, float)) and 0.0 <= mix_ln_ratio <= 1.0):
        problems.append(f"mix_ln_ratio must be in [0, 1], got {mix_ln_ratio!r}")
    if initializer_range is not None and initializer_range < 0:
        problems.append(f"initializer_range must be >= 0, got {initializer_range}")
    if embedding_init_std is not None and embedding_init_std < 0:
        problems.append(f"embedding_init_std must be >= 0, got {embedding_init_std}")
    if problems:  # the divisibility checks below need positive sizes
        return problems
    if hidden_size % num_attention_heads:
        problems.append(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
        )
    kv_heads = num_key_value_heads or num_attention_heads
    if num_attention_heads % kv_heads:
        problems.append(
            f"num_attention_heads ({num_attention_heads}) must be divisible by num_key_value_heads ({kv_heads})"
        )
    elif (hidden_size // num_attention_heads) % 2:
        problems.append(f"head dim {hidden_size // num_attention_heads} must be even for RoPE")
    return problems


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
