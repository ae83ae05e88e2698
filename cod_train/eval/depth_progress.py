"""Progress bars with ETA for the depth analyses (tqdm on stderr), and spread over batches.

Every analysis counts its units of work (a batch forward, a removed layer on one batch, a downstream run)
into one :class:`Progress`; the bar shows done/total, rate and the estimated time left.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

BOOTSTRAP_SAMPLES = 1000
T = TypeVar("T")


class Progress:
    """A tqdm bar (``disable=True`` makes it silent); ``update(n)`` adds ``n`` units of work."""

    def __init__(self, total: int, desc: str, *, disable: bool = False) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, desc=desc, unit="step", file=sys.stderr, disable=disable, dynamic_ncols=True,
            mininterval=0.5, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate_fmt}]",
        )  # fmt: skip

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def tracked(items: Sequence[T], desc: str, show: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (one unit per item)."""
    with Progress(len(items), desc, disable=not show) as bar:
        for item in items:
            yield item
            bar.update()


def spread(per_batch: torch.Tensor, weights: torch.Tensor, *, seed: int = 0) -> dict[str, list]:
    """Weighted mean over batches of per-batch means ``per_batch`` ``[NB, ...]`` (weights ``[NB]``, e.g.
    tokens), the standard deviation of the per-batch means, and a bootstrap 95% interval of the weighted
    mean (batches resampled with replacement, ``BOOTSTRAP_SAMPLES`` times, fixed seed).

    Returns ``{"mean", "std", "lo", "hi"}``, each shaped like ``per_batch[0]`` (NaN stays NaN).
    """
    values, w = per_batch.double(), weights.double()
    return ratio_spread(values * _bcast(w, values), _bcast(w, values).expand_as(values), seed=seed)


def ratio_spread(num: torch.Tensor, den: torch.Tensor, *, seed: int = 0, fn: Any = None) -> dict[str, list]:
    """Like :func:`spread` for sum(num) / sum(den) over batches (``fn`` maps that ratio to the statistic)."""
    fn = fn or (lambda x: x)
    return sums_spread(torch.stack([num, den], dim=-1), lambda s: fn(s[..., 0] / s[..., 1]), seed=seed)


def sums_spread(parts: torch.Tensor, stat: Callable[[torch.Tensor], torch.Tensor], *, seed: int = 0) -> dict[str, list]:
    """A statistic of sums over batches: ``parts`` ``[NB, ..., C]`` holds C sums per batch (e.g. sum, sum of
    squares, count), ``stat`` maps summed parts ``[..., C]`` to the statistic ``[...]``. ``mean``: the statistic
    of all batches; ``std``: the standard deviation of each batch's own statistic; ``lo`` / ``hi``: a bootstrap
    95% interval (the batches resampled with replacement ``BOOTSTRAP_SAMPLES`` times, fixed seed)."""
    parts = parts.double()
    nb = parts.shape[0]
    mean = stat(parts.sum(0))
    per = stat(parts)
    std = per.std(0, unbiased=True) if nb > 1 else torch.zeros_like(mean)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, nb, (BOOTSTRAP_SAMPLES, nb), generator=gen)
    boot = stat(parts[idx].sum(1))  # [S, ...]
    lo, hi = _nanquantile(boot, 0.025), _nanquantile(boot, 0.975)
    return {"mean": _list(mean), "std": _list(std), "lo": _list(lo), "hi": _list(hi)}


def _bcast(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape + (1,) * (like.dim() - 1))


def _nanquantile(x: torch.Tensor, q: float) -> torch.Tensor:
    return torch.nanquantile(x, q, dim=0) if x.numel() else x.sum(0)


def _list(t: torch.Tensor) -> Any:
    if t.dim() == 0:
        value = float(t)
        return None if value != value else value
    return [None if v != v else v for v in t.tolist()] if t.dim() == 1 else [_list(r) for r in t]


def with_spread(out: dict[str, Any], key: str, stats: dict[str, list]) -> dict[str, Any]:
    """``out[key] = mean``, ``out[key + "_std"]``, ``out[key + "_lo"]``, ``out[key + "_hi"]``."""
    out[key] = stats["mean"]
    for suffix in ("std", "lo", "hi"):
        out[f"{key}_{suffix}"] = stats[suffix]
    return out


def layer_numbers(indices: Sequence[int]) -> list[int]:
    """0-based layer indices -> the 1-based numbers the JSON files and figures use."""
    return [i + 1 for i in indices]
