"""The LLaMA-style model whose normalization placement and residual scheme are registry choices.

Imported lazily: `cod_train.model.zoo` and the scheme modules (`placements/`, `residuals/`) are free of torch, so
the run config validates a scheme before torch is imported; the names below import the model on first use.
`register()` makes `cod_llama` known to transformers' Auto classes (importing the model does it too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cod_train.model.build import build_model, model_config, padded_vocab_size, register, total_params
    from cod_train.model.configuration import CodLlamaConfig
    from cod_train.model.flops import flops_per_token, matmul_params
    from cod_train.model.modeling import CodLlamaForCausalLM, CodLlamaModel

_LAZY = {
    "CodLlamaConfig": "cod_train.model.configuration",
    "CodLlamaForCausalLM": "cod_train.model.modeling",
    "CodLlamaModel": "cod_train.model.modeling",
    "build_model": "cod_train.model.build",
    "model_config": "cod_train.model.build",
    "padded_vocab_size": "cod_train.model.build",
    "register": "cod_train.model.build",
    "flops_per_token": "cod_train.model.flops",
    "matmul_params": "cod_train.model.flops",
    "total_params": "cod_train.model.build",
}

__all__ = [
    "CodLlamaConfig",
    "CodLlamaForCausalLM",
    "CodLlamaModel",
    "build_model",
    "flops_per_token",
    "matmul_params",
    "model_config",
    "padded_vocab_size",
    "register",
    "total_params",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cod_train.model' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
