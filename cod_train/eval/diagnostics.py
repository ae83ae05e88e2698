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

Everything returns plain Python lists / floats, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
from torch import nn

from cod_train.core.constants import IGNORE_INDEX
from cod_train.eval.depth_analyses import (
    block_influence,
    logit_lens,
    removal_analyses,
    sublayer_contribution,
)
from cod_train.eval.depth_hooks import (
    Batch,
    decoder_layers,
    last_token_index,
    model_device,
    pruned_layers,
    residual_stream_hooks,
    run_backbone,
    to_device,
    token_losses_sum,
    unwrap_model,
    valid_token_mask,
)
from cod_train.eval.depth_progress import Progress, sums_spread, tracked, with_spread
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

DIAGNOSTICS = (
    "variance",
    "angular",
    "pruning",
    "grad_norms",
    "block_influence",
    "logit_lens",
    "sublayer",
    "skip_effect",
)
MetricFn = Callable[[nn.Module], float]


def _prepared(model: nn.Module, batches: Iterable[Batch]) -> list[Batch]:
    device = model_device(model)
    out = [to_device(b, device) for b in batches]
    if not out:
        raise ValueError("no batches given: the diagnostics need at least one batch of held-out tokens")
    return out


def _variance(sums: torch.Tensor) -> torch.Tensor:
    """Variance from ``[..., 4]`` sums (sum, sum of squares, sum of |.|, count)."""
    mean = sums[..., 0] / sums[..., 3]
    return (sums[..., 1] / sums[..., 3] - mean.square()).clamp(min=0)


LAYER_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "layer_var": _variance,
    "layer_std": lambda sums: _variance(sums).sqrt(),
    "layer_mean_abs": lambda sums: sums[..., 2] / sums[..., 3],
}


@torch.no_grad()
def layer_variance(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> dict:
    """Variance and std of h_0..h_L over all elements of the real tokens.

    Returns ``{"embed_var", "layer_var": [L], "layer_std": [L], "layer_mean_abs": [L]}``; ``layer_var[l-1]``
    is the variance of layer l's output. Each per-layer key comes with its spread over batches (``_std``,
    ``_lo``, ``_hi``: :func:`cod_train.eval.depth_progress.sums_spread`).
    """
    batches = _prepared(model, batches)
    n_states = len(decoder_layers(model)) + 1
    sums = torch.zeros(len(batches), n_states, 4, dtype=torch.float64)  # per batch: LAYER_STATS' sums
    model.eval()
    for b, batch in enumerate(tracked(batches, "variance", progress)):
        mask = valid_token_mask(batch)

        def record(idx: int, hidden: torch.Tensor, mask: torch.Tensor = mask, b: int = b) -> None:
            vals = hidden[mask.to(hidden.device)].double()
            parts = [vals.sum(), vals.square().sum(), vals.abs().sum()]
            sums[b, idx] += torch.tensor([float(p) for p in parts] + [vals.numel()], dtype=torch.float64)

        with residual_stream_hooks(model, record):
            run_backbone(model, batch)
    out: dict[str, Any] = {"embed_var": float(_variance(sums[:, 0].sum(0)))}
    for key, stat in LAYER_STATS.items():
        with_spread(out, key, sums_spread(sums[:, 1:], stat))
    return out


@torch.no_grad()
def last_token_states(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> torch.Tensor:
    """``[N, L+1, D]`` float64: h_0..h_L at each row's last real token, rows of all batches stacked."""
    batches = _prepared(model, batches)
    n_states = len(decoder_layers(model)) + 1
    rows = []
    model.eval()
    for batch in tracked(batches, "angular distance", progress):
        last = last_token_index(batch)
        states: list[torch.Tensor | None] = [None] * n_states

        def record(idx: int, hidden: torch.Tensor, last: torch.Tensor = last, states: list = states) -> None:
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]
            states[idx] = picked.double().cpu()

        with residual_stream_hooks(model, record):
            run_backbone(model, batch)
        rows.append(torch.stack(cast("list[torch.Tensor]", states), dim=1))  # the hooks filled every slot
    return torch.cat(rows, dim=0)


def angular_distance_matrix(states: torch.Tensor) -> torch.Tensor:
    """From ``[N, L+1, D]`` states: ``[L, L]`` with ``[l, n-1]`` = mean_rows arccos(cos(h_l, h_{l+n}))/pi
    for l = 0..L-1, n = 1..L-l, NaN where l + n > L."""
    unit = nn.functional.normalize(states, dim=-1)
    cos = torch.einsum("nid,njd->nij", unit, unit).clamp(-1.0, 1.0)
    dist = (torch.arccos(cos) / math.pi).mean(dim=0)  # [L+1, L+1]
    n_layers = states.shape[1] - 1
    out = torch.full((n_layers, n_layers), float("nan"), dtype=torch.float64)
    for start in range(n_layers):
        for span in range(1, n_layers - start + 1):
            out[start, span - 1] = dist[start, start + span]
    return out


def _nan_to_none(rows: torch.Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in rows.tolist()]


def angular_distances(model: nn.Module, batches: Iterable[Batch], *, progress: bool = True) -> dict:
    """ShortGPT-style angular distances on the last real token.

    Returns ``{"distance", "adjacent", "num_samples"}``: ``distance[l][n-1]`` = d(h_l, h_{l+n}) for start
    l = 0..L-1 (0 = embedding output) and block size n = 1..L-l (None where l + n > L);
    ``adjacent[l-1]`` = d(h_{l-1}, h_l), layer l's own change; ``num_samples`` rows averaged.
    """
    states = last_token_states(model, batches, progress=progress)
    matrix = angular_distance_matrix(states)
    return {
        "distance": _nan_to_none(matrix),
        "adjacent": matrix[:, 0].tolist(),
        "num_samples": states.shape[0],
    }


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
    which: Sequence[str] = DIAGNOSTICS,
    grad_batches: int = 1,
    metric_fn: MetricFn | None = None,
    layers: Sequence[int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Run the selected diagnostics (names in ``DIAGNOSTICS``); returns ``{name: result}``.

    ``layers`` (0-based) restricts the removal analyses (pruning, skip effect); pruning and the skip effect
    share one prefix-cached sweep when both are asked for.
    """
    unknown = sorted(set(which) - set(DIAGNOSTICS))
    if unknown:
        raise ValueError(f"unknown diagnostics {unknown}; valid: {', '.join(DIAGNOSTICS)}")
    batches = _prepared(model, batches)
    chosen = check_layers(model, layers)
    show = {"progress": progress}
    runners: dict[str, Callable[[], dict]] = {
        "variance": lambda: layer_variance(model, batches, **show),
        "angular": lambda: angular_distances(model, batches, **show),
        "grad_norms": lambda: layer_grad_norms(model, batches[: max(1, grad_batches)], **show),
        "block_influence": lambda: block_influence(model, batches, **show),
        "logit_lens": lambda: logit_lens(model, batches, **show),
        "sublayer": lambda: sublayer_contribution(model, batches, **show),
    }
    out: dict[str, dict] = {}
    if "pruning" in which or "skip_effect" in which:
        if log:
            log("  " + " + ".join(n for n in ("pruning", "skip_effect") if n in which) + " ...")
        removal = removal_analyses(model, batches, layers=chosen, skip_effect="skip_effect" in which, **show)
        if "pruning" in which:
            out["pruning"] = removal["pruning"]
            if metric_fn is not None:
                out["pruning"].update(_metric_curve(model, metric_fn, chosen, progress))
        if "skip_effect" in which:
            out["skip_effect"] = removal["skip_effect"]
    for name in DIAGNOSTICS:
        if name in which and name in runners:
            if log:
                log(f"  {name} ...")
            out[name] = runners[name]()
    return out
