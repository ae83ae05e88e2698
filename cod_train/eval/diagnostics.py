"""Depth diagnostics: how much does each layer contribute? (the "Curse of Depth" analyses)

All functions take a LLaMA-layout causal LM (ours, or HF Llama / Mistral / Qwen2) and batches
``{"input_ids": [B, T], "labels": [B, T]}`` (labels already shifted, -100 ignored; an optional
``attention_mask``). Hidden state h_0 is the embedding output, h_l the output of layer l (l = 1..L),
taken before the final norm.

- :func:`layer_variance` — variance / std of the residual stream after each layer (LNS paper figure):
  the variance of all elements of h_l over the real (non-pad) tokens of every batch.
- :func:`angular_distances` — d(l, l+n) = arccos(cos(h_l, h_{l+n})) / pi on each row's last real
  token, averaged over rows (ShortGPT / Gromov et al.): the block of layers l+1..l+n changes the
  residual stream that much. 0 = the block is an identity on that token.
- :func:`layer_pruning` — remove each layer in turn and measure the perplexity (and optionally any metric
  given as a callable, e.g. a downstream accuracy) without it; prefix-cached (only layers l+1..L rerun).
- :func:`layer_grad_norms` — L2 norm of the gradient of each layer's parameters for the mean token loss
  over the batches (Mix-LN paper figure).
- :func:`training_diagnostics` / :class:`TrainingDiagnostics` — the cheap in-training version
  (see :mod:`cod_train.eval.depth_train`).

- :func:`block_influence`, :func:`logit_lens`, :func:`sublayer_contribution` and the skip effect — see
  :mod:`cod_train.eval.depth_analyses`.

The diagnostics are declared once in :mod:`cod_train.eval.depth_registry` (name, file, figure, training keys);
the variance, angular distance, Block Influence, logit lens and sub-layer contribution are computed from one
hooked forward per batch shared by all of them (:mod:`cod_train.eval.depth_capture`), in ``cod-analyze`` and in
training alike. Everything returns plain Python lists / floats, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from cod_train.core.constants import IGNORE_INDEX
from cod_train.eval.depth_analyses import (
    block_influence,
    logit_lens,
    removal_analyses,
    sublayer_contribution,
)
from cod_train.eval.depth_capture import run_captures
from cod_train.eval.depth_hooks import (
    Batch,
    decoder_layers,
    model_device,
    pruned_layers,
    to_device,
    token_losses_sum,
    unwrap_model,
)
from cod_train.eval.depth_progress import Progress, tracked
from cod_train.eval.depth_registry import DIAGNOSTICS, NAMES, unknown_names
from cod_train.eval.depth_train import (
    DIAG_PREFIX,
    LAYER_GRAD_NORM_KEY,
    LAYER_VAR_KEY,
    TrainingDiagnostics,
    per_layer_grad_norms,
    scalarize_diagnostics,
    training_diagnostics,
)

__all__ = [
    "DIAG_PREFIX",
    "LAYER_GRAD_NORM_KEY",
    "LAYER_VAR_KEY",
    "NAMES",
    "TrainingDiagnostics",
    "angular_distances",
    "block_influence",
    "check_layers",
    "logit_lens",
    "sublayer_contribution",
    "evaluate_loss",
    "layer_grad_norms",
    "layer_pruning",
    "layer_variance",
    "per_layer_grad_norms",
    "run_diagnostics",
    "scalarize_diagnostics",
    "training_diagnostics",
]

MetricFn = Callable[[nn.Module], float]


def _prepared(model: nn.Module, batches: Iterable[Batch]) -> list[Batch]:
    device = model_device(model)
    out = [to_device(b, device) for b in batches]
    if not out:
        raise ValueError("no batches given: the diagnostics need at least one batch of held-out tokens")
    return out


def layer_variance(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> dict:
    """Variance and std of h_0..h_L over all elements of the real tokens.

    Returns ``{"embed_var", "layer_var": [L], "layer_std": [L], "layer_mean_abs": [L]}``; ``layer_var[l-1]``
    is the variance of layer l's output. Each per-layer key comes with its spread over batches (``_std``,
    ``_lo``, ``_hi``: :func:`cod_train.eval.depth_progress.sums_spread`).
    """
    return run_captures(model, _prepared(model, batches), ["variance"], progress=progress)["variance"]


def angular_distances(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> dict:
    """ShortGPT-style angular distances on the last real token.

    Returns ``{"distance", "adjacent", "num_samples"}``: ``distance[l][n-1]`` = d(h_l, h_{l+n}) for start
    l = 0..L-1 (0 = embedding output) and block size n = 1..L-l (None where l + n > L);
    ``adjacent[l-1]`` = d(h_{l-1}, h_l), layer l's own change; ``num_samples`` rows averaged.
    """
    return run_captures(model, _prepared(model, batches), ["angular"], progress=progress)["angular"]


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Mean next-token loss over all valid tokens of ``batches`` (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        loss_sum, n = token_losses_sum(model, batch)
        total += float(loss_sum)
        count += n
    if count == 0:
        raise ValueError("the held-out batches contain no valid (label != -100) tokens")
    return total / count


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def layer_pruning(
    model: nn.Module,
    batches: Iterable[Batch],
    metric_fn: MetricFn | None = None,
    *,
    layers: Sequence[int] | None = None,
    method: str = "cached",
    progress: bool = True,
) -> dict:
    """Drop each layer in turn (0-based ``layers``, default all) and re-measure the perplexity.

    ``method="cached"`` (default) reuses the prefix below the removed layer
    (:mod:`cod_train.eval.depth_cache`); ``"plain"`` removes the layer
    (:func:`~cod_train.eval.depth_hooks.pruned_layers`) and runs the whole model: same numbers, slower.
    Returns ``{"base_loss", "base_ppl", "layers": [K] (1-based), "loss": [K], "ppl": [K], "delta_ppl": [K]}``
    (cached: also ``delta_ppl_pct`` with its spread over batches) plus, when ``metric_fn(model) -> float``
    is given (e.g. a downstream accuracy), ``"base_metric", "metric": [K], "delta_metric": [K]``.
    """
    batches = _prepared(model, batches)
    chosen = check_layers(model, layers)
    if method == "cached":
        result = removal_analyses(model, batches, layers=chosen, progress=progress)["pruning"]
    elif method == "plain":
        result = _plain_pruning(model, batches, chosen, progress)
    else:
        raise ValueError(f"method must be 'cached' or 'plain', got {method!r}")
    if metric_fn is not None:
        result.update(_metric_curve(model, metric_fn, chosen, progress))
    return result


def check_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """0-based layer indices (default all); ValueError naming the valid range when one is out of it."""
    total = len(decoder_layers(model))
    if layers is None:
        return list(range(total))
    bad = [i for i in layers if not 0 <= int(i) < total]
    if bad:
        raise ValueError(f"layers {[i + 1 for i in bad]} out of range: the model has layers 1..{total}")
    return sorted({int(i) for i in layers})


def _plain_pruning(model: nn.Module, batches: Sequence[Batch], layers: list[int], progress: bool) -> dict:
    with Progress(len(layers) + 1, "pruning (plain)", disable=not progress) as bar:
        base = evaluate_loss(model, batches)
        bar.update()
        losses = []
        for idx in layers:
            with pruned_layers(model, [idx]):
                losses.append(evaluate_loss(model, batches))
            bar.update()
    result: dict = {
        "base_loss": base,
        "base_ppl": _ppl(base),
        "layers": [i + 1 for i in layers],
        "loss": losses,
    }
    result["ppl"] = [_ppl(v) for v in losses]
    result["delta_ppl"] = [p - result["base_ppl"] for p in result["ppl"]]
    result["method"] = "plain"
    return result


def _metric_curve(model: nn.Module, metric_fn: MetricFn, layers: list[int], progress: bool) -> dict:
    with Progress(len(layers) + 1, "pruning: downstream metric", disable=not progress) as bar:
        base_metric = float(metric_fn(model))
        bar.update()
        metrics = []
        for idx in layers:
            with pruned_layers(model, [idx]):
                metrics.append(float(metric_fn(model)))
            bar.update()
    return {"base_metric": base_metric, "metric": metrics, "delta_metric": [m - base_metric for m in metrics]}


def layer_grad_norms(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> dict:
    """Per-layer gradient L2 norms of the mean token loss over ``batches`` (one backward per batch).

    Leaves ``.grad`` cleared (set to None) and restores ``requires_grad``. Returns
    ``{"loss", "layer_grad_norm": [L], "embed_grad_norm", "head_grad_norm"}``.
    """
    batches = _prepared(model, batches)
    inner: Any = unwrap_model(model)  # the LLaMA layout: model.embed_tokens, lm_head
    params = list(inner.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    total_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    if total_tokens == 0:
        raise ValueError("the batches contain no valid (label != -100) tokens")
    model.eval()
    loss_total = 0.0
    try:
        for batch in tracked(batches, "gradient norms", progress):
            loss_sum, _ = token_losses_sum(model, batch)
            (loss_sum / total_tokens).backward()
            loss_total += float(loss_sum.detach())
        result = {
            "loss": loss_total / total_tokens,
            "layer_grad_norm": per_layer_grad_norms(model),
            "embed_grad_norm": _grad_norm(inner.model.embed_tokens.parameters()),
            "head_grad_norm": _grad_norm(inner.lm_head.parameters()),
        }
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(flag)
    return result


def _grad_norm(params: Iterable[nn.Parameter]) -> float:
    sq = sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None)
    return math.sqrt(sq)


def run_diagnostics(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    which: Sequence[str] = NAMES,
    grad_batches: int = 1,
    metric_fn: MetricFn | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Run the selected diagnostics (names in ``cod_train.eval.depth_registry``); returns ``{name: result}``.

    The ``capture`` ones share one forward per batch; pruning and the skip effect share one prefix-cached sweep;
    ``layers`` (0-based) restricts those two.
    """
    unknown = unknown_names(tuple(which))
    if unknown:
        raise ValueError(f"unknown diagnostics {unknown}; valid: {', '.join(NAMES)}")
    batches = _prepared(model, batches)
    chosen = check_layers(model, layers)
    out: dict[str, dict] = {}
    removal = [d.name for d in DIAGNOSTICS if d.source == "removal" and d.name in which]
    if removal:
        if log:
            log("  " + " + ".join(removal) + " ...")
        out.update(removal_analyses(model, batches, layers=chosen, skip_effect="skip_effect" in which,
                                    progress=progress))  # fmt: skip
        if "pruning" in which and metric_fn is not None:
            out["pruning"].update(_metric_curve(model, metric_fn, chosen, progress))
        out = {k: v for k, v in out.items() if k in which}
    if "grad_norms" in which:
        if log:
            log("  grad_norms ...")
        out["grad_norms"] = layer_grad_norms(model, batches[: max(1, grad_batches)], progress=progress)
    captured = [d.name for d in DIAGNOSTICS if d.source == "capture" and d.name in which]
    if captured:
        if log:
            log("  " + " + ".join(captured) + " ...")
        out.update(run_captures(model, batches, captured, progress=progress))
    return out
