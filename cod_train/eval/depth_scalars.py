"""The learned scalars of the depth zoo, per layer: DyT / Derf alphas and shifts, each residual scheme's
`scalar_params` (gates, branch gains: their mean over channels), value residuals' lambdas
(`self_attn.value_mix.lambda_self` / `lambda_first`), and the model-level embedding scale and final-norm alpha.

Keys (in ``metrics.jsonl`` under ``diag/``, in ``cod-analyze``'s JSON under ``learned_scalars``) are the
parameter's name inside its layer without ``.weight`` (``attn_gain``, ``input_layernorm.alpha``,
``post_attention_layernorm.shift`` ...); each value is a list of L floats (``None``
for a layer without that parameter, e.g. the Post-LN layers of Mix-LN). Model-level ones are single floats:
``embed_scale``, ``norm.alpha``, ``embed_norm.alpha``. A residual scheme adds its own (its
``learned_scalars``; hyper-connections: per layer, the input-independent part of their read / write / mix weights,
and their token means over a batch, suffix ``.tokens``, from the diagnostic forward in training or cod-analyze's
first held-out batch).

Reading is a collective under FSDP2 (a DTensor's ``full_tensor``) and DeepSpeed ZeRO-3
(``safe_get_full_fp32_param``): call it on every rank, in the same order (it walks the parameters in order).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cod_train.eval.depth_hooks import backbone, decoder_layers, unwrap_model
from cod_train.model import zoo

NORM_SCALARS = (".alpha", ".shift", "embed_scale.weight")  # DyT / Derf, the embedding scale
VALUE_RESIDUAL_SCALARS = (".value_mix.lambda_self", ".value_mix.lambda_first")  # value_residual (ResFormer)


def _is_learned_scalar(name: str) -> bool:
    schemes = tuple(s for r in zoo.residual_names() for s in zoo.residual(r).scalar_params)
    return name.endswith(NORM_SCALARS + VALUE_RESIDUAL_SCALARS + schemes)


def _full_tensor(param: torch.Tensor) -> torch.Tensor:
    """The parameter's whole value, gathered where it is sharded."""
    tensor: Any = param
    if hasattr(param, "ds_id"):  # DeepSpeed ZeRO-3: partitioned; collective
        from deepspeed.utils import safe_get_full_fp32_param

        tensor = safe_get_full_fp32_param(param)
    elif hasattr(param, "full_tensor"):  # FSDP2 DTensor; collective
        tensor = param.full_tensor()
    return tensor.detach()


def _full_value(param: nn.Parameter) -> float:
    """The parameter's value (mean over its entries), gathered where it is sharded."""
    return float(_full_tensor(param).float().mean())


def _key(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def learned_scalars(model: nn.Module) -> dict[str, Any]:
    """``{key: [per-layer value or None] | float}`` of every learned scalar; empty for a model without any."""
    inner, layers = backbone(unwrap_model(model)), decoder_layers(model)
    out: dict[str, Any] = {}
    with torch.no_grad():
        n_layers = len(layers)
        for idx, layer in enumerate(layers):
            for name, param in layer.named_parameters():
                if _is_learned_scalar(name):
                    out.setdefault(_key(name), [None] * n_layers)[idx] = _full_value(param)
        for name, param in inner.named_parameters():
            if not name.startswith("layers.") and _is_learned_scalar(name):
                out[_key(name)] = _full_value(param)
    scheme = getattr(getattr(inner, "config", None), "residual_scheme", None)
    if scheme is not None:  # the scheme's own weights (hyper-connections: read / write / mix)
        out.update(scheme.learned_scalars(inner, _full_tensor))
    return out
