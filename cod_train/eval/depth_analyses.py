"""Depth analyses beyond the two papers': Block Influence, logit lens, sub-layer contribution, skip effect.

The first three are computed from the shared capture forward (:mod:`cod_train.eval.depth_capture`; with
others, one forward per batch for all: :func:`cod_train.eval.diagnostics.run_diagnostics`). Conventions as in
:mod:`cod_train.eval.diagnostics`: h_0 = embedding output (the first layer's input), h_l =
output of layer l (l = 1..L) before the final norm; token averages run over real (non-pad) tokens. Every
per-layer curve ``key`` comes with ``key_std`` (std of the per-batch values), ``key_lo`` / ``key_hi`` (bootstrap
95% interval over batches, see :func:`cod_train.eval.depth_progress.ratio_spread`).

- :func:`block_influence` (ShortGPT, arXiv 2403.03853): BI_l = 1 - cos(h_{l-1}, h_l), mean over tokens.
- :func:`logit_lens`: for l = 0..L, KL(p_L || p_l) with p_l = softmax(lm_head(norm(h_l))), the top-1 agreement
  of p_l with p_L, and the cross-entropy of p_l on the labels. ``settling_layer``: the first layer from which
  the top-1 agreement stays >= 50% (:func:`cod_train.eval.depth_summary.settling_layer`).
- :func:`sublayer_contribution` (Csordas et al., arXiv 2505.13898): for the attention and MLP sub-layers and the
  whole layer, ||F|| / ||x|| and cos(F, x) (the sub-layer streams: :mod:`cod_train.eval.depth_sublayer`).
- :func:`removal_analyses`: the pruning curve and the skip effect from one prefix-cached sweep
  (:mod:`cod_train.eval.depth_cache`): removing layer l, the relative change ||h'_j - h_j|| / ||h_j|| of each
  later layer's output j > l, and KL(p_full || p_without_l) on the final distribution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from cod_train.eval.depth_cache import removal_sweep
from cod_train.eval.depth_capture import run_captures
from cod_train.eval.depth_hooks import Batch, decoder_layers
from cod_train.eval.depth_progress import Progress, layer_numbers, ratio_spread, with_spread

MetricFn = Callable[[nn.Module], float]


def block_influence(model: nn.Module, batches: Sequence[Batch], *, progress: bool = True) -> dict[str, Any]:
    """``{"bi": [L], "bi_std", "bi_lo", "bi_hi", "num_batches", "num_tokens"}``; ``bi[l-1]`` = BI of layer l
    (:class:`cod_train.eval.depth_capture.BlockInfluence`)."""
    return run_captures(model, batches, ["block_influence"], progress=progress)["block_influence"]


def logit_lens(model: nn.Module, batches: Sequence[Batch], *, progress: bool = True) -> dict[str, Any]:
    """Per state l = 0..L (0 = embedding output): ``kl``, ``top1``, ``lens_loss`` (each with spread),
    ``settling_layer`` and ``settling_depth`` (:class:`cod_train.eval.depth_capture.LogitLens`)."""
    return run_captures(model, batches, ["logit_lens"], progress=progress)["logit_lens"]


def sublayer_contribution(model: nn.Module, batches: Sequence[Batch], *, progress: bool = True) -> dict[str, Any]:
    """Per layer: ``attn_ratio``, ``attn_cos``, ``mlp_ratio``, ``mlp_cos``, ``layer_ratio``, ``layer_cos``
    (:class:`cod_train.eval.depth_capture.SublayerContribution`)."""
    return run_captures(model, batches, ["sublayer"], progress=progress)["sublayer"]


def _bar(total: int, desc: str, show: bool) -> Progress:
    return Progress(total, desc, disable=not show)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _pct(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * torch.expm1(x.clamp(max=700.0))


def removal_analyses(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    layers: Sequence[int] | None = None,
    skip_effect: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{"pruning": ..., "skip_effect": ...}`` (the latter when ``skip_effect``) from one prefix-cached sweep
    over the 0-based ``layers`` (default all). See :func:`pruning_from_sweep` and :func:`skip_from_sweep`."""
    removed = list(range(len(decoder_layers(model)))) if layers is None else list(layers)
    desc = "pruning + skip effect" if skip_effect else "pruning"
    with _bar(len(batches) * len(removed), desc, progress) as bar:
        sweep = removal_sweep(model, batches, removed, kl=skip_effect, changes=skip_effect, progress=bar)
    out = {"pruning": pruning_from_sweep(sweep)}
    if skip_effect:
        out["skip_effect"] = skip_from_sweep(sweep)
    return out


def pruning_from_sweep(sweep: Any) -> dict[str, Any]:
    """The pruning curve: ``base_loss``, ``base_ppl``, ``layers`` (1-based removed), ``loss``, ``ppl``,
    ``delta_ppl`` and ``delta_ppl_pct`` (with spread: the paired per-batch change, bootstrapped)."""
    tokens = sweep.tokens.double()
    base = float(sweep.base_loss.sum() / tokens.sum())
    losses = (sweep.loss.sum(0) / tokens.sum()).tolist()
    out: dict[str, Any] = {
        "base_loss": base, "base_ppl": _ppl(base), "layers": layer_numbers(sweep.removed), "loss": losses,
        "ppl": [_ppl(v) for v in losses], "num_batches": int(tokens.numel()), "method": "prefix-cached",
    }  # fmt: skip
    out["delta_ppl"] = [p - out["base_ppl"] for p in out["ppl"]]
    diff = sweep.loss - sweep.base_loss[:, None]
    return with_spread(out, "delta_ppl_pct", ratio_spread(diff, tokens[:, None].expand_as(diff), fn=_pct))


def skip_from_sweep(sweep: Any) -> dict[str, Any]:
    """``layers`` (1-based removed), ``change`` ([K][L]: mean relative change of layer j's output when layer
    ``layers[k]`` is removed; None for j <= removed), ``final_kl`` and ``final_top1`` (with spread)."""
    real = sweep.real_tokens.double()
    change = sweep.change.sum(0) / real.sum()
    out: dict[str, Any] = {"layers": layer_numbers(sweep.removed), "num_batches": int(real.numel())}
    out["change"] = [[None if v != v else v for v in row] for row in change.tolist()]
    with_spread(out, "final_kl", ratio_spread(sweep.kl, real[:, None].expand_as(sweep.kl)))
    return with_spread(
        out, "final_top1", ratio_spread(sweep.top1.double(), real[:, None].expand_as(sweep.kl))
    )
