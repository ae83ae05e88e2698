"""The capture: one hooked forward per batch, feeding every ``capture`` diagnostic of
:mod:`cod_train.eval.depth_registry` (cod-analyze over its held-out batches, training on one batch).

:func:`capture_batch` runs the model once (no grad, eager, ``logits_to_keep=1``) with the residual-stream hooks
(and the sub-layer hooks when a diagnostic needs them) and hands a :class:`Capture` to each diagnostic's
``per_batch`` from inside ``lm_head``'s forward hook: under FSDP2 the head's parameters are gathered there, as in
the model's own forward, so the logit lens can apply it. Each diagnostic's ``finish()`` reduces its per-batch
sums to its JSON entry (means with their spread over batches, :mod:`cod_train.eval.depth_progress`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from cod_train.eval.depth_hooks import (
    Batch,
    backbone,
    decoder_layers,
    last_token_index,
    residual_stream_hooks,
    unwrap_model,
    valid_token_mask,
)
from cod_train.eval.depth_progress import Progress, ratio_spread, sums_spread, with_spread
from cod_train.eval.depth_registry import Diagnostic, diagnostic
from cod_train.eval.depth_sublayer import (
    STREAMS_DEFINITION,
    SUBLAYER_KEYS,
    has_streams,
    per_token_cos,
    sublayer_hooks,
)
from cod_train.eval.depth_summary import settling_layer


@dataclass
class Capture:
    """One batch's residual stream: ``states[l]`` = h_l ``[B, T, d]`` (detached, the streams closed into one),
    h_0 entering layer 1 and h_l leaving layer l; ``mask`` ``[B, T]`` its real tokens, ``last`` ``[B]`` each row's
    last real token, ``sublayer`` ``[L, 6]`` sums over the real tokens (``SUBLAYER_KEYS``; when asked for)."""

    model: nn.Module
    states: list[torch.Tensor]
    mask: torch.Tensor
    last: torch.Tensor
    labels: torch.Tensor | None
    sublayer: torch.Tensor | None

    @property
    def num_layers(self) -> int:
        return len(self.states) - 1

    def lens_logprobs(self, layer: int, row: int) -> torch.Tensor:
        """``[T, V]`` log p_layer of one row: the final norm and ``lm_head`` applied to h_layer."""
        head = cast(nn.Module, unwrap_model(self.model).lm_head)
        norm = cast(nn.Module, backbone(self.model).norm)
        return torch.log_softmax(head(norm(self.states[layer][row])).float(), dim=-1)


class Accumulator(Protocol):
    needs_sublayers: bool

    def per_batch(self, capture: Capture) -> None: ...

    def finish(self) -> dict[str, Any]: ...


def start(diag: Diagnostic) -> Accumulator:
    """A fresh accumulator of a ``capture`` diagnostic (the class its registry entry names)."""
    if diag.accumulator is None:
        raise ValueError(f"diagnostic {diag.name!r} is not computed from the capture forward")
    return cast(Accumulator, getattr(sys.modules[__name__], diag.accumulator)())


def capture_batch(model: nn.Module, batch: Batch, consumers: Sequence[Accumulator]) -> None:
    """One no-grad forward of ``batch`` (already on the model's device); each consumer's ``per_batch`` gets its
    :class:`Capture`. Hooks exist only during this call. Runs in the model's current train / eval mode."""
    inner = unwrap_model(model)
    n_layers = len(decoder_layers(inner))
    states: list[torch.Tensor | None] = [None] * (n_layers + 1)
    mask = valid_token_mask(batch)
    sums = torch.zeros(n_layers, len(SUBLAYER_KEYS), dtype=torch.float64)
    wants_sub = any(c.needs_sublayers for c in consumers)
    delivered: list[bool] = []

    def record(idx: int, hidden: torch.Tensor) -> None:
        states[idx] = hidden

    def on_head(_m: nn.Module, _args: tuple, _out: Any) -> None:
        if delivered or any(s is None for s in states):
            return
        delivered.append(True)  # first: the logit lens calls lm_head again
        full = cast("list[torch.Tensor]", states)
        labels = batch.get("labels")
        capture = Capture(inner, full, mask.to(full[0].device), last_token_index(batch),
                          labels.to(full[0].device) if labels is not None else None, sums if wants_sub else None)
        for consumer in consumers:
            consumer.per_batch(capture)

    sub = sublayer_hooks(inner, mask, sums) if wants_sub else contextlib.nullcontext()
    handle = cast(nn.Module, inner.lm_head).register_forward_hook(on_head)
    # force_eager: blocks compiled in place (`distributed.compile`) would trace these hooks: recompiles, breaks
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"), residual_stream_hooks(inner, record), sub:
            inner(**_forward_kwargs(batch))
    finally:
        handle.remove()
    if not delivered:
        raise RuntimeError(f"{type(inner).__name__}'s forward did not apply lm_head after its decoder layers")


def _forward_kwargs(batch: Batch) -> dict[str, Any]:
    # logits of the last position only: the diagnostics need the layers, not the lm_head over all tokens
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False, "logits_to_keep": 1}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    return kwargs


def run_captures(
    model: nn.Module, batches: Sequence[Batch], names: Sequence[str], *, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """The ``capture`` diagnostics ``names`` over ``batches`` (on the model's device): one forward per batch for
    all of them; ``{name: finish()}``."""
    chosen = [diagnostic(n) for n in names]
    accumulators = [start(d) for d in chosen]
    model.eval()
    with Progress(len(batches), " + ".join(names), disable=not progress) as bar:
        for batch in batches:
            capture_batch(model, batch, accumulators)
            bar.update()
    return {d.name: acc.finish() for d, acc in zip(chosen, accumulators, strict=True)}


# ----------------------------------------------------------------------------- the capture diagnostics


def variance_sums(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[4]`` float64 on ``hidden``'s device: sum, sum of squares, sum of |.| and count of the elements of the
    real tokens (all tokens when ``mask`` is None)."""
    vals = (hidden[mask.to(hidden.device)] if mask is not None else hidden).double()
    return torch.stack([vals.sum(), vals.square().sum(), vals.abs().sum(), vals.new_tensor(vals.numel())])


def variance_of_sums(sums: torch.Tensor) -> torch.Tensor:
    """Variance from ``[..., 4]`` sums (:func:`variance_sums`): E[x^2] - E[x]^2, in float64."""
    mean = sums[..., 0] / sums[..., 3]
    return (sums[..., 1] / sums[..., 3] - mean.square()).clamp(min=0)


LAYER_STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "layer_var": variance_of_sums,
    "layer_std": lambda sums: variance_of_sums(sums).sqrt(),
    "layer_mean_abs": lambda sums: sums[..., 2] / sums[..., 3],
}


class LayerVariance:
    """``{"embed_var", "layer_var": [L], "layer_std": [L], "layer_mean_abs": [L]}`` over all elements of the real
    tokens; ``layer_var[l-1]`` is layer l's output. Spread: the statistic of resampled batches (``sums_spread``)."""

    needs_sublayers = False

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []  # per batch [L+1, 4]

    def per_batch(self, capture: Capture) -> None:
        self.sums.append(torch.stack([variance_sums(h, capture.mask) for h in capture.states]).cpu())

    def finish(self) -> dict[str, Any]:
        sums = torch.stack(self.sums)
        out: dict[str, Any] = {"embed_var": float(variance_of_sums(sums[:, 0].sum(0)))}
        for key, stat in LAYER_STATS.items():
            with_spread(out, key, sums_spread(sums[:, 1:], stat))
        return out


def angular_distance_matrix(states: torch.Tensor) -> torch.Tensor:
    """From ``[N, L+1, D]`` states: ``[L, L]`` with ``[l, n-1]`` = mean_rows arccos(cos(h_l, h_{l+n}))/pi
    for l = 0..L-1, n = 1..L-l, NaN where l + n > L."""
    unit = nn.functional.normalize(states, dim=-1)
    cos = torch.einsum("nid,njd->nij", unit, unit).clamp(-1.0, 1.0)
    dist = (torch.arccos(cos) / math.pi).mean(dim=0)  # [L+1, L+1]
    n_layers = states.shape[1] - 1
    out = torch.full((n_layers, n_layers), float("nan"), dtype=torch.float64)
    for begin in range(n_layers):
        for span in range(1, n_layers - begin + 1):
            out[begin, span - 1] = dist[begin, begin + span]
    return out


class AngularDistance:
    """ShortGPT-style angular distances on each row's last real token: ``{"distance", "adjacent",
    "num_samples"}``; ``distance[l][n-1]`` = d(h_l, h_{l+n}) (None where l + n > L), ``adjacent[l-1]`` =
    d(h_{l-1}, h_l)."""

    needs_sublayers = False

    def __init__(self) -> None:
        self.rows: list[torch.Tensor] = []  # per batch [B, L+1, D] float64

    def per_batch(self, capture: Capture) -> None:
        rows = torch.arange(capture.mask.shape[0], device=capture.states[0].device)
        last = capture.last.to(rows.device)
        self.rows.append(torch.stack([h[rows, last].double().cpu() for h in capture.states], dim=1))

    def finish(self) -> dict[str, Any]:
        states = torch.cat(self.rows, dim=0)
        matrix = angular_distance_matrix(states)
        distance = [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]
        return {"distance": distance, "adjacent": matrix[:, 0].tolist(), "num_samples": states.shape[0]}


class BlockInfluence:
    """``{"bi": [L], "bi_std", "bi_lo", "bi_hi", "num_batches", "num_tokens"}``; ``bi[l-1]`` = 1 - cos(h_{l-1},
    h_l) of layer l, token mean (ShortGPT, arXiv 2403.03853)."""

    needs_sublayers = False

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []
        self.counts: list[float] = []

    def per_batch(self, capture: Capture) -> None:
        s, mask = capture.states, capture.mask
        per_layer = [float((1.0 - per_token_cos(s[i - 1], s[i]))[mask].sum()) for i in range(1, len(s))]
        self.sums.append(torch.tensor(per_layer, dtype=torch.float64))
        self.counts.append(float(mask.sum()))

    def finish(self) -> dict[str, Any]:
        sums, counts = torch.stack(self.sums), torch.tensor(self.counts)
        stats = ratio_spread(sums, counts[:, None].expand_as(sums))
        return with_spread({"num_batches": len(self.counts), "num_tokens": int(counts.sum())}, "bi", stats)


class LogitLens:
    """Per state l = 0..L (0 = embedding output): ``kl`` = KL(p_L || p_l) and ``top1`` agreement with p_L over
    the real tokens, ``lens_loss`` = cross-entropy of p_l on the labels (each with spread), ``settling_layer``
    and ``settling_depth`` (= settling_layer / L)."""

    needs_sublayers = False

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []  # per batch [3, L+1]: kl, top1, cross-entropy
        self.counts: list[tuple[float, float]] = []  # per batch: real tokens, labelled tokens

    def per_batch(self, capture: Capture) -> None:
        if capture.labels is None:
            raise ValueError("the logit lens needs labels (the cross-entropy of each layer's lens)")
        sums = torch.zeros(3, capture.num_layers + 1, dtype=torch.float64)
        for row in range(capture.mask.shape[0]):
            final, keep = capture.lens_logprobs(capture.num_layers, row), capture.mask[row]
            for layer in range(capture.num_layers + 1):
                logp = capture.lens_logprobs(layer, row)
                sums[0, layer] += float((final.exp() * (final - logp)).sum(-1)[keep].double().sum())
                sums[1, layer] += float((final.argmax(-1) == logp.argmax(-1))[keep].sum())
                sums[2, layer] += float(nn.functional.cross_entropy(
                    logp, capture.labels[row], ignore_index=-100, reduction="sum"))  # fmt: skip
        self.sums.append(sums)
        self.counts.append((float(capture.mask.sum()), float((capture.labels != -100).sum())))

    def finish(self) -> dict[str, Any]:
        sums, counts = torch.stack(self.sums), torch.tensor(self.counts)
        out: dict[str, Any] = {"num_batches": len(self.counts), "num_tokens": int(counts[:, 0].sum())}
        for idx, key in enumerate(("kl", "top1", "lens_loss")):
            num, den = sums[:, idx], counts[:, 1 if key == "lens_loss" else 0]
            with_spread(out, key, ratio_spread(num, den[:, None].expand_as(num)))
        n_layers = sums.shape[-1] - 1
        out["settling_layer"] = settling_layer(out["top1"])
        out["settling_depth"] = out["settling_layer"] / n_layers
        return out


class SublayerContribution:
    """Per layer: ``attn_ratio``, ``attn_cos``, ``mlp_ratio``, ``mlp_cos``, ``layer_ratio``, ``layer_cos`` (means over
    real tokens, each with spread; :mod:`cod_train.eval.depth_sublayer`); entry l-1 is layer l. Hyper-connection
    models add ``definition``."""

    needs_sublayers = True

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] = []  # per batch [L, 6]
        self.counts: list[float] = []
        self.streams = False

    def per_batch(self, capture: Capture) -> None:
        assert capture.sublayer is not None, "capture_batch registers the sub-layer hooks for this diagnostic"
        self.sums.append(capture.sublayer.clone())
        self.counts.append(float(capture.mask.sum()))
        self.streams = any(has_streams(layer) for layer in decoder_layers(capture.model))

    def finish(self) -> dict[str, Any]:
        stacked, den = torch.stack(self.sums), torch.tensor(self.counts, dtype=torch.float64)
        out: dict[str, Any] = {"num_batches": len(self.counts), "num_tokens": int(den.sum())}
        if self.streams:
            out["definition"] = STREAMS_DEFINITION
        for col, key in enumerate(SUBLAYER_KEYS):
            num = stacked[:, :, col]
            with_spread(out, key, ratio_spread(num, den[:, None].expand_as(num)))
        return out
