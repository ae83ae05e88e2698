"""Optional fused GPU kernels (Liger Kernel's Triton ops) behind `CodLlamaConfig.use_kernels`.

With `use_kernels=True`, on CUDA tensors and when `liger_kernel` is importable, the model routes RMSNorm, RoPE,
the SwiGLU product and the fused linear + cross-entropy loss through Liger's kernels; in every other case
(flag off, CPU, package missing) it runs the plain PyTorch code, so CPU runs and the tests never touch this
module's fast path. The equations are the same: RMSNorm in "llama" casting mode (fp32 statistics, rounded to
the input dtype before the weight multiply), rotate-half RoPE, silu(gate) * up, sum of token cross-entropies
with fp32 logits.

`torch.compile` per block (applied by the engines) and these kernels are alternatives: Triton kernels inside a
compiled block are traced as user-defined kernels where torch supports it; prefer one or the other and measure
with `scripts/bench.py --device cuda`.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

from cod_train.core.constants import IGNORE_INDEX
from cod_train.core.errors import ConfigError


@functools.cache
def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available()


def check_available(device: torch.device) -> str | None:
    """``use_kernels=true`` on ``device``: a ConfigError where CUDA runs without Liger (the plain path would run
    silently instead of what was asked for); on the CPU, the note to log (the kernels are CUDA-only)."""
    if device.type != "cuda":
        return (f"model.use_kernels=true: Liger's kernels run on CUDA only; this {device.type} run uses the plain "
                "PyTorch code")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("model.use_kernels=true needs liger-kernel, which is not installed: pip install "
                          "'cod-train[gpu]' (or liger-kernel), or drop model.use_kernels")
    return None


def wanted(config: object) -> bool:
    """True when the config asks for the kernels and they can run on this machine."""
    return bool(getattr(config, "use_kernels", False)) and liger_available()


def active(flag: bool, x: torch.Tensor) -> bool:
    """Use the fused kernel for this call (`flag` = `wanted(config)`, resolved once at construction)."""
    return flag and x.is_cuda


@functools.cache
def _functional() -> Any:
    from liger_kernel.transformers import functional

    return functional


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # in_place=False: the incoming gradient may be shared with the residual branch (sandwich/peri norms).
    return _functional().liger_rms_norm(x, weight, eps, offset=0.0, casting_mode="llama", in_place=False)


def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, H, T, hd], k [B, Hkv, T, hd], cos/sin [B, T, hd] (rotate-half layout)."""
    return _functional().liger_rope(q, k, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _functional().liger_swiglu(gate, up)


@functools.cache
def fp32_weight_grad() -> bool:
    """Liger's fused linear cross-entropy takes `accum_dtype` (liger-kernel >= 0.8): the `lm_head` gradient can
    be accumulated in fp32 over the chunks even when the weight is bf16 (bf16-pure). Older releases accumulate
    in the weight's dtype."""
    import inspect

    return "accum_dtype" in inspect.signature(_functional().liger_fused_linear_cross_entropy).parameters


def linear_cross_entropy_fits(weight: torch.Tensor) -> bool:
    """Liger's fused loss accumulates this weight's gradient in fp32 (else the caller uses its own fused loss)."""
    return weight.dtype == torch.float32 or fp32_weight_grad()


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over `targets != -100` of CE(hidden @ weight^T, target), logits never materialized in full; the
    weight gradient is accumulated in fp32 (see `linear_cross_entropy_fits`)."""
    extra = {"accum_dtype": torch.float32} if weight.dtype != torch.float32 else {}
    return _functional().liger_fused_linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX,
                                                          reduction="sum", **extra)
