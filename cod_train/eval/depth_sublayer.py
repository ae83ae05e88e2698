"""The sub-layer streams of a decoder layer, for the sub-layer contribution (Csordas et al., arXiv 2505.13898).

For the attention and MLP sub-layers and the whole layer: ||F|| / ||x|| and cos(F, x), where x is the residual
stream entering the sub-layer and F the change it makes to it (F = stream after - stream before; for pre-norm
layers F is exactly the sub-layer's output). The stream between the sub-layers is the input of the module a
cod-train placement names (``mid_stream``: the MLP for post-norm and reordered layers), for other models the MLP's
input (Olmo2's reordered norm) or ``post_attention_layernorm``'s. Multi-stream residual schemes (hyper-connections)
pass n streams, and no one stream is "the
stream before and after the sub-layer": x is the sub-layer's own read of the streams (its norm's input), F its
branch output (``self_attn`` / ``mlp``); the whole layer's entry is the change of the collapsed stream
(``STREAMS_DEFINITION``, also written into the result as ``definition``).

:func:`sublayer_hooks` adds the sums during any forward; the shared capture forward
(:mod:`cod_train.eval.depth_capture`) registers them when a diagnostic needs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from cod_train.eval.depth_hooks import close_stream, decoder_layers, first_tensor


def per_token_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)


def _mid_stream_module(layer: nn.Module) -> nn.Module:
    """The module whose *input* is the residual stream between attention and MLP (see module docstring)."""
    placement = getattr(layer, "placement_scheme", None)  # a cod-train layer: its placement says
    if placement is not None:
        return cast(nn.Module, getattr(layer, placement.mid_stream))
    if hasattr(layer, "post_feedforward_layernorm") or not hasattr(layer, "post_attention_layernorm"):
        return cast(nn.Module, layer.mlp)  # Olmo2's reordered norm: the MLP takes the stream h itself
    return cast(nn.Module, layer.post_attention_layernorm)


SUBLAYER_KEYS = ("attn_ratio", "attn_cos", "mlp_ratio", "mlp_cos", "layer_ratio", "layer_cos")
STREAMS_DEFINITION = (
    "hyper-connections: attention / MLP x = the sub-layer's read of the n streams (pre^T H), F = its output (what "
    "it writes, post_i F into stream i); layer: the change of the collapsed stream (close_stream), as Block Influence"
)


def _ratio_cos(x: torch.Tensor, change: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Sums over ``mask``'s tokens of ||F|| / ||x|| and cos(F, x), F = ``change``."""
    ratio = change.norm(dim=-1) / x.norm(dim=-1).clamp(min=1e-30)
    return [float(ratio[mask].sum()), float(per_token_cos(change, x)[mask].sum())]


def _contributions(x: torch.Tensor, h: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Sums over real tokens of ||F||/||x|| and cos(F, x) for attention (x -> h), MLP (h -> y), layer (x -> y)."""
    out = []
    for before, after in ((x, h), (h, y), (x, y)):
        out += _ratio_cos(before.double(), after.double() - before.double(), mask)
    return out


def _input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


Add = Callable[[list[float]], None]  # receives one layer's SUBLAYER_KEYS sums of one forward


def _plain_hooks(layer: nn.Module, mask: torch.Tensor, add: Add) -> list[Any]:
    """One stream: F is the change of the stream across each sub-layer (from the layer's input, the stream
    between the sub-layers and the layer's output)."""
    seen: dict[str, torch.Tensor] = {}

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    def mid(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["h"] = _input(args, kwargs)

    def post(_m: nn.Module, _a: tuple, out: Any) -> None:
        x = seen.pop("x")
        add(_contributions(x, seen.pop("h"), first_tensor(out), mask.to(x.device)))

    return [layer.register_forward_pre_hook(pre, with_kwargs=True),
            _mid_stream_module(layer).register_forward_pre_hook(mid, with_kwargs=True),
            layer.register_forward_hook(post)]  # fmt: skip


def _hyper_hooks(model: nn.Module, layer: nn.Module, mask: torch.Tensor, add: Add) -> list[Any]:
    """n streams (``STREAMS_DEFINITION``): each sub-layer's read of the streams (the input of
    its norm) and its branch output (``self_attn`` / ``mlp``); the layer: its change of the collapsed stream."""
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name: str) -> Callable[[nn.Module, tuple, dict], None]:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            seen[name] = _input(args, kwargs)

        return hook

    def keep_output(name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(_m: nn.Module, _args: tuple, out: Any) -> None:
            seen[name] = first_tensor(out)

        return hook

    def post(_m: nn.Module, _a: tuple, out: Any) -> None:
        x, y = close_stream(model, seen.pop("x")).double(), close_stream(model, first_tensor(out)).double()
        real, sums = mask.to(x.device), []
        for sub in ("attn", "mlp"):
            sums += _ratio_cos(seen.pop(f"{sub}_x").double(), seen.pop(f"{sub}_f").double(), real)
        add(sums + _ratio_cos(x, y - x, real))

    def sub(name: str) -> nn.Module:
        return cast(nn.Module, getattr(layer, name))

    return [layer.register_forward_pre_hook(keep_input("x"), with_kwargs=True),
            sub("input_layernorm").register_forward_pre_hook(keep_input("attn_x"), with_kwargs=True),
            sub("self_attn").register_forward_hook(keep_output("attn_f")),
            sub("post_attention_layernorm").register_forward_pre_hook(keep_input("mlp_x"), with_kwargs=True),
            sub("mlp").register_forward_hook(keep_output("mlp_f")),
            layer.register_forward_hook(post)]  # fmt: skip


def has_streams(layer: nn.Module) -> bool:
    """A layer of a multi-stream residual scheme (hyper-connections: n streams) or of one whose layers read the
    history of outputs (AttnRes): no one tensor is the stream before and after each sub-layer."""
    scheme = getattr(layer, "residual", None)
    return bool(getattr(scheme, "multi_stream", False) or getattr(scheme, "layer_reads_history", False))


@contextlib.contextmanager
def sublayer_hooks(model: nn.Module, mask: torch.Tensor, sums: torch.Tensor) -> Iterator[None]:
    """While inside, every forward adds each layer's ``SUBLAYER_KEYS`` sums over ``mask``'s tokens into
    ``sums`` (``[L, 6]``); hooks removed on exit."""
    handles = []
    for idx, layer in enumerate(decoder_layers(model)):

        def add(values: list[float], idx: int = idx) -> None:
            sums[idx] += torch.tensor(values, dtype=torch.float64)

        hooks = _hyper_hooks(model, layer, mask, add) if has_streams(layer) else _plain_hooks(layer, mask, add)
        handles += hooks
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
