"""Attention Residuals' modules (Kimi Team 2026, arXiv 2603.15031); the schemes are
`cod_train/model/residuals/attnres.py`.

Each sub-layer's input is h = sum_i alpha_i v_i over the sources v_i in the stream (a `ResidualHistory`), with
alpha = softmax_i(w . RMSNorm(v_i)), one learned pseudo-query w per sub-layer (`query`, init 0: uniform weights
at init) and the key norm's learned weight g (`key_norm`, init 1). Computed without normalizing each source
anew for each reader: w . (g * v_i * r_i) = (v_i . (w * g)) r_i with r_i = 1 / rms(v_i) cached in the stream
when v_i is written. Softmax in fp32, the dot products and the sum in the sources' dtype.

Full AttnRes: the sources are the embedding and every earlier sub-layer output (appended). Block AttnRes: the
sources are the embedding and one sum per block (`attnres_blocks` blocks of whole layers); a sub-layer adds its
output to its own block's sum (the partial sum b_n^i of the paper), so a layer reads the completed blocks and its
block's partial sum. The final norm reads one more aggregation (`attnres_out` on the backbone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from cod_train.model.history import ResidualHistory, history_of, weighted_sum


def attn_res_inverse_rms(v: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / rms(v) over the last dim, fp32, [.., 1] (vector_norm accumulates in fp32 and keeps v itself for the
    backward, not an fp32 copy of it)."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True, dtype=torch.float32)
    return torch.rsqrt(norm.pow(2) / v.shape[-1] + eps)


class DepthAttention(nn.Module):
    """One reader's pseudo-query w and key-norm weight g; `forward(stream)` -> (h, alpha [S, B, T])."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(hidden_size))
        self.key_norm = nn.Parameter(torch.ones(hidden_size))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.query.zero_()
            self.key_norm.fill_(1.0)

    def forward(self, stream: ResidualHistory) -> tuple[torch.Tensor, torch.Tensor]:
        outputs, scales = stream.present()
        # (v * u).sum, not a matmul: under autocast a matmul would keep a cast copy of every source per reader
        u = (self.query * self.key_norm).to(outputs[0].dtype)
        logits = torch.stack([(v * u).sum(-1, dtype=torch.float32) * cast(torch.Tensor, r)[..., 0]
                              for v, r in zip(outputs, scales, strict=True)])
        alpha = logits.softmax(0)
        return weighted_sum(list(alpha.to(outputs[0].dtype).unbind(0)), outputs), alpha


def _attn_res_write(stream: ResidualHistory, f: torch.Tensor, slot: int | None, eps: float
                    ) -> ResidualHistory:
    """Append f (full AttnRes: `slot` None) or add it to the block sum in `slot` (Block AttnRes)."""
    if slot is None:
        return stream.appended(f, attn_res_inverse_rms(f, eps))
    old = stream.outputs[slot]
    total = f if old is None else old + f
    return stream.replaced(slot, total, attn_res_inverse_rms(total, eps))


def attn_res_layer(b: Any, stream: ResidualHistory, attn: Callable[[torch.Tensor], torch.Tensor]) -> ResidualHistory:
    """A Pre-LN / LNS decoder layer `b`: each sub-layer reads its depth attention over the stream and writes its
    output into it (`b.attnres_slot`: None = append, else its block's slot)."""
    s, eps, slot = b.lns_scale, b.attnres_eps, b.attnres_slot

    def scaled(h: torch.Tensor) -> torch.Tensor:
        return h * s if s != 1.0 else h

    h, _ = b.attnres_attn(stream)
    stream = _attn_res_write(stream, attn(scaled(b.input_layernorm(h))), slot, eps)
    h, _ = b.attnres_mlp(stream)
    return _attn_res_write(stream, b.mlp(scaled(b.post_attention_layernorm(h))), slot, eps)


def open_attn_res_history(x: torch.Tensor, slots: int, eps: float) -> ResidualHistory:
    """The stream at the first layer: the embedding (its inverse RMS cached), then `slots - 1` empty blocks."""
    stream = history_of(x, slots)
    return stream.replaced(0, x, attn_res_inverse_rms(x, eps))


# -- diagnostics: which sources each reader weighs (token mean and spread of alpha) --


def attn_res_readers(backbone: nn.Module) -> list[nn.Module]:
    """The 2L sub-layer readers in order (layer 1 attention, layer 1 MLP, ...), then the output's; [] without.
    `backbone`: the backbone or the causal LM."""
    backbone = getattr(backbone, "model", backbone)
    layers = getattr(backbone, "layers", None) or []
    found = [m for layer in layers for m in (getattr(layer, "attnres_attn", None), getattr(layer, "attnres_mlp", None))
             if m is not None]
    out = getattr(backbone, "attnres_out", None)
    return found + [out] if found and out is not None else []


class AttnResWeights:
    """While active (a context manager), the token mean and standard deviation of every reader's weights over
    the forwards run, per source slot (`mask` [B, T] keeps only those tokens). Sources are slots: full AttnRes
    0 = embedding, s = sub-layer s's output; Block AttnRes 0 = embedding, n = block n's sum. A reader's weights
    go to the slots present in its stream (a slot not read: None)."""

    def __init__(self, backbone: nn.Module, mask: torch.Tensor | None = None):
        self.readers, self.mask = attn_res_readers(backbone), mask
        self.sums: list[torch.Tensor | None] = [None] * len(self.readers)
        self.counts = [0] * len(self.readers)
        self.slots: list[list[int]] = [[] for _ in self.readers]
        self.handles: list[Any] = []

    def _hook(self, idx: int) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple, out: tuple[torch.Tensor, torch.Tensor]) -> None:
            alpha = out[1].detach().double()  # [S, B, T]
            if self.mask is not None and alpha.shape[1:] == self.mask.shape:
                alpha = alpha[:, self.mask.to(alpha.device)]
            alpha = alpha.reshape(alpha.shape[0], -1)
            sums = torch.stack([alpha.sum(1), alpha.pow(2).sum(1)])
            old = self.sums[idx]
            self.sums[idx] = sums if old is None or old.shape != sums.shape else old + sums
            self.counts[idx] = alpha.shape[1] + (self.counts[idx] if old is not None else 0)
            self.slots[idx] = [i for i, t in enumerate(args[0].outputs) if t is not None]

        return hook

    def __enter__(self) -> AttnResWeights:
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.readers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def maps(self) -> tuple[list[list[float | None]], list[list[float | None]]] | None:
        """(mean, std) [readers][slots]: each reader's token mean and spread of the weight of each slot; None
        before a forward."""
        if not self.readers or any(s is None for s in self.sums):
            return None
        width = max(max(slots) for slots in self.slots) + 1
        means: list[list[float | None]] = []
        stds: list[list[float | None]] = []
        for sums, count, slots in zip(self.sums, self.counts, self.slots, strict=True):
            mean = cast(torch.Tensor, sums)[0] / count
            var = (cast(torch.Tensor, sums)[1] / count - mean.pow(2)).clamp(min=0.0)
            means.append([None] * width)
            stds.append([None] * width)
            for k, slot in enumerate(slots):
                means[-1][slot], stds[-1][slot] = float(mean[k]), float(var[k].sqrt())
        return means, stds

    def stats(self) -> dict[str, Any]:
        """Per layer (lists of L): `{attn,mlp}_attnres.src.{s}.tokens` (the token mean of the weight with which
        the sub-layer reads source slot s) and `....spread.tokens` (its token standard deviation), and
        `attnres_out.src.{s}.tokens` / `.spread.tokens` for the final norm's read (floats); {} before a forward."""
        maps = self.maps()
        if maps is None:
            return {}
        n_layers, out = (len(self.readers) - 1) // 2, cast(dict[str, Any], {})
        for kind, grid in (("", maps[0]), (".spread", maps[1])):
            for k, row in enumerate(grid[:-1]):
                sub, layer = ("attn", "mlp")[k % 2], k // 2
                for s, v in enumerate(row):
                    if v is not None:
                        out.setdefault(f"{sub}_attnres.src.{s}{kind}.tokens", [None] * n_layers)[layer] = v
            for s, v in enumerate(grid[-1]):
                if v is not None:
                    out[f"attnres_out.src.{s}{kind}.tokens"] = v
        return out


def record_attn_res_weights(backbone: nn.Module, batch: dict[str, torch.Tensor]) -> AttnResWeights:
    """A no-grad forward of the backbone on `batch` (its real tokens: `attention_mask` where given), recorded."""
    mask = batch.get("attention_mask")
    with torch.no_grad(), AttnResWeights(backbone, mask.bool() if mask is not None else None) as rec:
        backbone(input_ids=batch["input_ids"], attention_mask=mask, use_cache=False)
    return rec


def attn_res_query_norms(backbone: nn.Module, value: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> dict[str, Any]:
    """Input-independent: ||w * g|| of each reader (0 at init: uniform weights), per layer and the output's."""
    found = attn_res_readers(backbone)
    if not found:
        return {}
    value = value or (lambda p: p.detach())
    with torch.no_grad():
        norms = [float((value(cast(torch.Tensor, m.query)).float() * value(cast(torch.Tensor, m.key_norm)).float())
                       .norm()) for m in found]
    n_layers = (len(found) - 1) // 2
    return {"attn_attnres.query_norm": norms[0:-1:2], "mlp_attnres.query_norm": norms[1:-1:2],
            "attnres_out.query_norm": norms[-1]} if n_layers else {}
