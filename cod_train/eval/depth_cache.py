"""Prefix-cached layer removal: the residual stream entering layer l is the same with or without layer l.

One forward of the full model per batch records h_0..h_L and the arguments the backbone passed to each
decoder layer (rotary tables, masks: whatever that architecture passes, per layer, so Qwen2's per-layer
sliding-window masks are kept). Removing layer l then costs layers l+1..L (and the head) instead of the
whole model: :func:`run_layers` calls the stored layers on h_{l-1} with the stored arguments, which is
exactly what the backbone of a model without layer l would compute (same modules, same inputs, same order).

:func:`removal_sweep` runs this for every removed layer and batch and accumulates, per batch, the loss (the
pruning curve), optionally KL(p_full || p_without_l) and top-1 agreement on the final distribution, and the
relative change of every later layer's output (the skip effect). The plain way (remove the layer, rerun the
full model) is :func:`cod_train.eval.depth_hooks.pruned_layers` + a full forward; the two agree to float
rounding (tests/eval/test_depth_analyses.py).

Schemes whose layers read the history of outputs (`layer_reads_history`: Attention Residuals, DenseFormer) pass
a stream object (`cod_train.model.history.ResidualHistory`, the references to every output so far) instead of one
tensor; ``states[i]`` is then the history entering layer i, as the layer reads it (no copy: the references). Removing
layer l means its outputs never enter the history: layers l+1..L read the history without them (AttnRes: each
later reader's softmax runs over the remaining sources; Block AttnRes: layer l's block sum lacks its outputs),
which is what the same model with that layer pruned computes, so the cached and plain ways still agree
(tests/model/test_attn_res.py). Each state's hidden state is the backbone's ``close_stream`` of it (AttnRes: the
final norm's own depth attention over the sources so far).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from cod_train.core.constants import IGNORE_INDEX
from cod_train.eval.depth_hooks import (
    Batch,
    backbone,
    close_stream,
    decoder_layers,
    first_tensor,
    head_loss_sum,
    model_device,
    run_backbone,
    unwrap_model,
    valid_token_mask,
)
from cod_train.eval.depth_progress import Progress


@dataclass
class LayerCalls:
    """One batch's recorded forward: ``states[i]`` = input of layer i (0-based), ``states[L]`` = the last
    layer's output (before the final norm); ``calls[i]`` = (positional args after the hidden state, keyword
    args without it, whether the hidden state was passed by keyword), a per-forward state among them (value
    residuals' first-layer values: anything with ``snapshot()``) as it was when layer i was called."""

    states: list[torch.Tensor] = field(default_factory=list)
    calls: list[tuple[tuple, dict, bool]] = field(default_factory=list)


@torch.no_grad()
def capture_layer_calls(model: nn.Module, batch: Batch) -> LayerCalls:
    """Run the backbone once, recording every layer's input arguments and the last layer's output."""
    layers = decoder_layers(model)
    rec = LayerCalls(states=[torch.empty(0)] * (len(layers) + 1), calls=[((), {}, False)] * len(layers))
    handles = []
    for idx, layer in enumerate(layers):

        def pre(_m: nn.Module, args: tuple, kwargs: dict, idx: int = idx) -> None:
            kept = {k: _snapshot(v) for k, v in kwargs.items() if k != "hidden_states"}
            if args:
                rec.states[idx], rec.calls[idx] = args[0], (tuple(map(_snapshot, args[1:])), kept, False)
            else:
                rec.states[idx], rec.calls[idx] = kwargs["hidden_states"], ((), kept, True)

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))

    def post(_m: nn.Module, _args: tuple, out: Any) -> None:
        rec.states[len(layers)] = first_tensor(out)

    handles.append(layers[len(layers) - 1].register_forward_hook(post))
    try:
        run_backbone(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return rec


def _snapshot(value: Any) -> Any:
    """A per-forward state that layers fill as the forward goes (value residuals' first-layer values), as it is
    now; any other argument as is."""
    return value.snapshot() if hasattr(value, "snapshot") else value


def _replayed_calls(rec: LayerCalls, states_of: int) -> list[tuple[tuple, dict, bool]]:
    """The recorded calls with their per-forward states replaced by one live copy of those layer ``states_of``
    was called with: a replay fills them as the model without the layers skipped would."""
    args0, kwargs0, _ = rec.calls[states_of]
    live_args = {i: _snapshot(a) for i, a in enumerate(args0) if hasattr(a, "snapshot")}
    live_kwargs = {k: _snapshot(v) for k, v in kwargs0.items() if hasattr(v, "snapshot")}
    return [(tuple(live_args.get(i, a) for i, a in enumerate(args)), {k: live_kwargs.get(k, v) for k, v in
             kwargs.items()}, by_keyword) for args, kwargs, by_keyword in rec.calls]


def run_layers(
    model: nn.Module,
    rec: LayerCalls,
    hidden: torch.Tensor,
    start: int,
    on_output: Callable[[int, torch.Tensor], None] | None = None,
    states_of: int | None = None,
) -> torch.Tensor:
    """Apply layers ``start..L-1`` (0-based) to ``hidden`` with their recorded arguments; returns the last
    output (before the final norm). ``on_output(i, h)`` sees layer i's output. The per-forward states start as
    layer ``states_of`` (default ``start``) saw them: the removed layer's, where ``hidden`` is its input."""
    layers = decoder_layers(model)
    states_of = start if states_of is None else states_of
    calls = _replayed_calls(rec, states_of) if states_of < len(rec.calls) else rec.calls
    for idx in range(start, len(layers)):
        args, kwargs, by_keyword = calls[idx]
        out = (
            layers[idx](hidden_states=hidden, **kwargs)
            if by_keyword
            else layers[idx](hidden, *args, **kwargs)
        )
        hidden = first_tensor(out)
        if on_output is not None:
            on_output(idx, hidden)
    return hidden


def final_norm(model: nn.Module) -> nn.Module:
    return cast(nn.Module, backbone(model).norm)


@dataclass
class SweepResult:
    """Per-batch sums of :func:`removal_sweep` (numpy-free: plain tensors, float64)."""

    removed: list[int]  # 0-based removed layers, in the order of the K axis
    base_loss: torch.Tensor  # [NB] loss sum of the full model
    tokens: torch.Tensor  # [NB] label tokens
    loss: torch.Tensor  # [NB, K] loss sum without layer removed[k]
    real_tokens: torch.Tensor  # [NB] real (non-pad) tokens: the KL / change denominators
    kl: torch.Tensor | None = None  # [NB, K] sum over real tokens of KL(p_full || p_without)
    top1: torch.Tensor | None = None  # [NB, K] tokens whose argmax is unchanged
    change: torch.Tensor | None = None  # [NB, K, L] sum of ||h'_j - h_j|| / ||h_j||, NaN for j <= removed


def _head_rows(
    model: nn.Module, normed: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, base: list[torch.Tensor]
) -> tuple[float, float, float]:
    """Loss sum (the same ops as :func:`head_loss_sum`), KL(base || this) and top-1 agreements, row by row."""
    head = cast(nn.Module, unwrap_model(model).lm_head)
    loss = normed.new_zeros((), dtype=torch.float32)
    kl = top1 = 0.0
    for row in range(normed.shape[0]):
        logits = head(normed[row]).float()
        loss = loss + nn.functional.cross_entropy(
            logits, labels[row], ignore_index=IGNORE_INDEX, reduction="sum"
        )
        logp = torch.log_softmax(logits, dim=-1)
        keep = mask[row]
        ref = base[row]
        kl += float((ref.exp() * (ref - logp)).sum(-1)[keep].double().sum())
        top1 += float((ref.argmax(-1) == logp.argmax(-1))[keep].sum())
    return float(loss), kl, top1


def _base_logprobs(model: nn.Module, normed: torch.Tensor) -> list[torch.Tensor]:
    head = cast(nn.Module, unwrap_model(model).lm_head)
    return [torch.log_softmax(head(normed[row]).float(), dim=-1) for row in range(normed.shape[0])]


@torch.no_grad()
def removal_sweep(
    model: nn.Module,
    batches: Sequence[Batch],
    removed: Sequence[int],
    *,
    kl: bool = False,
    changes: bool = False,
    progress: Progress | None = None,
) -> SweepResult:
    """For each batch, one full forward, then for each 0-based layer in ``removed`` the suffix without it.

    ``kl``: also KL(p_full || p_without) and top-1 agreement on real tokens (keeps the full model's
    log-probabilities of one batch, ``[B, T, V]`` floats, in memory). ``changes``: also the relative change
    of every later layer's output (the skip effect).
    """
    n_layers, nb, k = len(decoder_layers(model)), len(batches), len(removed)
    res = SweepResult(
        removed=list(removed), base_loss=torch.zeros(nb, dtype=torch.float64), tokens=torch.zeros(nb),
        loss=torch.zeros(nb, k, dtype=torch.float64), real_tokens=torch.zeros(nb),
        kl=torch.zeros(nb, k, dtype=torch.float64) if kl else None, top1=torch.zeros(nb, k) if kl else None,
        change=torch.full((nb, k, n_layers), float("nan"), dtype=torch.float64) if changes else None,
    )  # fmt: skip
    model.eval()
    norm = final_norm(model)
    for b, batch in enumerate(batches):
        rec = capture_layer_calls(model, batch)
        mask = valid_token_mask(batch).to(model_device(model))  # a state may be a stream object, not a tensor
        labels = batch["labels"].to(mask.device)
        normed = norm(close_stream(model, rec.states[n_layers]))  # hyper-connections: the streams as one
        base_loss, count = head_loss_sum(model, normed, labels)
        res.base_loss[b], res.tokens[b], res.real_tokens[b] = float(base_loss), count, float(mask.sum())
        base = _base_logprobs(model, normed) if kl else []
        for j, layer in enumerate(removed):
            _remove_one(model, rec, res, (b, j, layer), mask, labels, base)
            if progress is not None:
                progress.update()
        del rec, base
    return res


def _remove_one(
    model: nn.Module, rec: LayerCalls, res: SweepResult, where: tuple[int, int, int], mask: torch.Tensor,
    labels: torch.Tensor, base: list[torch.Tensor],
) -> None:  # fmt: skip
    b, j, layer = where
    on_output = None
    if res.change is not None:
        change = res.change

        def on_output(idx: int, hidden: torch.Tensor) -> None:
            ref = close_stream(model, rec.states[idx + 1]).double()
            rel = (close_stream(model, hidden).double() - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-30)
            change[b, j, idx] = float(rel[mask].sum())

    final = run_layers(model, rec, rec.states[layer], layer + 1, on_output, states_of=layer)
    normed = final_norm(model)(close_stream(model, final))
    if res.kl is not None and res.top1 is not None:
        loss, kl, top1 = _head_rows(model, normed, labels, mask, base)
        res.kl[b, j], res.top1[b, j] = kl, top1
    else:
        loss = float(head_loss_sum(model, normed, labels)[0])
    res.loss[b, j] = loss
