"""Depth analyses beyond the two papers': Block Influence, logit lens, sub-layer contribution, skip effect.

Conventions as in :mod:`cod_train.eval.diagnostics`: h_0 = embedding output (the first layer's input), h_l =
output of layer l (l = 1..L) before the final norm; token averages run over real (non-pad) tokens. Every
per-layer curve ``key`` comes with ``key_std`` (std of the per-batch values), ``key_lo`` / ``key_hi`` (bootstrap
95% interval over batches, see :func:`cod_train.eval.depth_progress.ratio_spread`).

- :func:`block_influence` (ShortGPT, arXiv 2403.03853): BI_l = 1 - cos(h_{l-1}, h_l), mean over tokens.
- :func:`logit_lens`: for l = 0..L, KL(p_L || p_l) with p_l = softmax(lm_head(norm(h_l))), the top-1 agreement
  of p_l with p_L, and the cross-entropy of p_l on the labels. ``settling_layer``: the first layer from which
  the top-1 agreement stays >= 50% (:func:`cod_train.eval.depth_summary.settling_layer`).
- :func:`sublayer_contribution` (Csordas et al., arXiv 2505.13898): for the attention and MLP sub-layers and the
  whole layer, ||F|| / ||x|| and cos(F, x), where x is the residual stream entering the sub-layer and F the
  change it makes to it (F = stream after - stream before; for pre-norm layers F is exactly the sub-layer's
  output). The stream between the sub-layers is the MLP's input for post-norm layers (our ``post_ln`` /
  ``deepnorm`` placements, Olmo2's reordered norm), else the input of ``post_attention_layernorm``.
  Hyper-connection layers (residual=hc | mhc) pass n streams, and no one stream is "the stream before and after
  the sub-layer": x is the sub-layer's own read of the streams (its norm's input), F its branch output
  (``self_attn`` / ``mlp``); the whole layer's entry is the change of the collapsed stream
  (``STREAMS_DEFINITION``, also written into the result as ``definition``).
- :func:`removal_analyses`: the pruning curve and the skip effect from one prefix-cached sweep
  (:mod:`cod_train.eval.depth_cache`): removing layer l, the relative change ||h'_j - h_j|| / ||h_j|| of each
  later layer's output j > l, and KL(p_full || p_without_l) on the final distribution.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from cod_train.eval.depth_cache import final_norm, removal_sweep
from cod_train.eval.depth_hooks import (
    Batch,
    decoder_layers,
    first_tensor,
    one_stream,
    residual_stream_hooks,
    run_backbone,
    unwrap_model,
    valid_token_mask,
)
from cod_train.eval.depth_progress import Progress, layer_numbers, ratio_spread, with_spread
from cod_train.eval.depth_summary import settling_layer

MetricFn = Callable[[nn.Module], float]


def _states(model: nn.Module, batch: Batch) -> list[torch.Tensor]:
    states: list[torch.Tensor] = [torch.empty(0)] * (len(decoder_layers(model)) + 1)

    def record(idx: int, hidden: torch.Tensor) -> None:
        states[idx] = hidden

    with residual_stream_hooks(model, record):
        run_backbone(model, batch)
    return states


def per_token_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)


def _bar(total: int, desc: str, show: bool) -> Progress:
    return Progress(total, desc, disable=not show)


@torch.no_grad()
def block_influence(model: nn.Module, batches: Sequence[Batch], *, progress: bool = True) -> dict[str, Any]:
    """``{"bi": [L], "bi_std", "bi_lo", "bi_hi", "num_batches", "num_tokens"}``; ``bi[l-1]`` = BI of layer l."""
    n_layers = len(decoder_layers(model))
    sums, counts = torch.zeros(len(batches), n_layers, dtype=torch.float64), torch.zeros(len(batches))
    model.eval()
    with _bar(len(batches), "block influence", progress) as bar:
        for b, batch in enumerate(batches):
            states = _states(model, batch)
            mask = valid_token_mask(batch).to(states[0].device)
            for layer in range(1, n_layers + 1):
                sums[b, layer - 1] = float(
                    (1.0 - per_token_cos(states[layer - 1], states[layer]))[mask].sum()
                )
            counts[b] = float(mask.sum())
            bar.update()
    stats = ratio_spread(sums, counts[:, None].expand_as(sums))
    return with_spread({"num_batches": len(batches), "num_tokens": int(counts.sum())}, "bi", stats)


@torch.no_grad()
def logit_lens(model: nn.Module, batches: Sequence[Batch], *, progress: bool = True) -> dict[str, Any]:
    """Per state l = 0..L (0 = embedding output): ``kl``, ``top1``, ``lens_loss`` (each with spread),
    ``settling_layer`` and ``settling_depth`` (= settling_layer / L)."""
    n_layers = len(decoder_layers(model))
    nb = len(batches)
    kl, top1 = (
        torch.zeros(nb, n_layers + 1, dtype=torch.float64),
        torch.zeros(nb, n_layers + 1, dtype=torch.float64),
    )
    ce, real, labelled = torch.zeros(nb, n_layers + 1, dtype=torch.float64), torch.zeros(nb), torch.zeros(nb)
    head, norm = cast(nn.Module, unwrap_model(model).lm_head), final_norm(model)
    model.eval()
    with _bar(nb, "logit lens", progress) as bar:
        for b, batch in enumerate(batches):
            states = _states(model, batch)
            mask = valid_token_mask(batch).to(states[0].device)
            labels = batch["labels"].to(mask.device)
            real[b], labelled[b] = float(mask.sum()), float((labels != -100).sum())
            for row in range(mask.shape[0]):
                final = torch.log_softmax(head(norm(states[n_layers][row])).float(), dim=-1)
                for layer in range(n_layers + 1):
                    logp = torch.log_softmax(head(norm(states[layer][row])).float(), dim=-1)
                    keep = mask[row]
                    kl[b, layer] += float((final.exp() * (final - logp)).sum(-1)[keep].double().sum())
                    top1[b, layer] += float((final.argmax(-1) == logp.argmax(-1))[keep].sum())
                    ce[b, layer] += float(
                        nn.functional.cross_entropy(logp, labels[row], ignore_index=-100, reduction="sum")
                    )
            bar.update()
    out: dict[str, Any] = {"num_batches": nb, "num_tokens": int(real.sum())}
    for key, num, den in (("kl", kl, real), ("top1", top1, real), ("lens_loss", ce, labelled)):
        with_spread(out, key, ratio_spread(num, den[:, None].expand_as(num)))
    out["settling_layer"] = settling_layer(out["top1"])
    out["settling_depth"] = out["settling_layer"] / n_layers
    return out


def _mid_stream_module(layer: nn.Module) -> nn.Module:
    """The module whose *input* is the residual stream between attention and MLP (see module docstring)."""
    post_norm = getattr(layer, "placement", None) in ("post_ln", "deepnorm")
    if (
        post_norm
        or hasattr(layer, "post_feedforward_layernorm")
        or not hasattr(layer, "post_attention_layernorm")
    ):
        return cast(nn.Module, layer.mlp)  # (reordered_ln: the MLP takes the stream h itself)
    return cast(nn.Module, layer.post_attention_layernorm)


SUBLAYER_KEYS = ("attn_ratio", "attn_cos", "mlp_ratio", "mlp_cos", "layer_ratio", "layer_cos")
STREAMS_DEFINITION = (
    "hyper-connections: attention / MLP x = the sub-layer's read of the n streams (pre^T H), F = its output (what "
    "it writes, post_i F into stream i); layer: the change of the collapsed stream (hc_head), as Block Influence"
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
    """n streams (residual=hc | mhc; ``STREAMS_DEFINITION``): each sub-layer's read of the streams (the input of
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
        x, y = one_stream(model, seen.pop("x")).double(), one_stream(model, first_tensor(out)).double()
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
    """A hyper-connection layer (residual=hc | mhc): it passes n streams."""
    return getattr(layer, "attn_hc", None) is not None


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


def sublayer_sums(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, float]:
    """``[L, 6]`` sums over the batch's real tokens (columns: ``SUBLAYER_KEYS``) and the number of real tokens."""
    mask = valid_token_mask(batch)
    sums = torch.zeros(len(decoder_layers(model)), len(SUBLAYER_KEYS), dtype=torch.float64)
    with sublayer_hooks(model, mask, sums):
        run_backbone(model, batch)
    return sums, float(mask.sum())


@torch.no_grad()
def sublayer_contribution(
    model: nn.Module, batches: Sequence[Batch], *, progress: bool = True
) -> dict[str, Any]:
    """Per layer: ``attn_ratio``, ``attn_cos``, ``mlp_ratio``, ``mlp_cos``, ``layer_ratio``, ``layer_cos`` (means
    over real tokens, each with spread); entry l-1 is layer l. Hyper-connection models add ``definition``."""
    model.eval()
    sums, counts = [], []
    with _bar(len(batches), "sub-layer contribution", progress) as bar:
        for batch in batches:
            s, n = sublayer_sums(model, batch)
            sums.append(s)
            counts.append(n)
            bar.update()
    stacked, den = torch.stack(sums), torch.tensor(counts, dtype=torch.float64)
    out: dict[str, Any] = {"num_batches": len(batches), "num_tokens": int(den.sum())}
    if any(has_streams(layer) for layer in decoder_layers(model)):
        out["definition"] = STREAMS_DEFINITION
    for col, key in enumerate(SUBLAYER_KEYS):
        num = stacked[:, :, col]
        with_spread(out, key, ratio_spread(num, den[:, None].expand_as(num)))
    return out


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
