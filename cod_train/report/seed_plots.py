"""Figures over seeds: one line per scheme (the mean over its seeds) and its band (the 95% t-interval over seeds).

The layout helpers are cod_train.report.plots' (one legend below the panels, wrapped titles); the colours are
one per scheme: matplotlib's ten default colours up to ten schemes, tab20's twenty beyond, then again dashed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cod_train.report import plots
from cod_train.report.groups import BOUNDS, GEOMETRIC

BAND_ALPHA = 0.18
SEED_BAND_NOTE = " (band: 95% t-interval over seeds)"
GEOMETRIC_BAND_NOTE = " (geometric mean; band: 95% t-interval of the log over seeds)"


def scheme_style(idx: int, count: int) -> dict[str, Any]:
    """A distinct colour per scheme for up to 20 schemes (tab20 past 10), then the same colours dashed."""
    import matplotlib

    if count <= 10:
        color: Any = f"C{idx % 10}"
    else:
        color = matplotlib.colormaps["tab20"](idx % 20)
    return {"color": color, "linestyle": plots.LINESTYLES[(idx // 20) % len(plots.LINESTYLES)],
            "marker": plots.MARKERS[idx % len(plots.MARKERS)]}  # fmt: skip


def _nan(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _band(ax: Any, xs: Sequence[float], band: dict[str, Any], style: dict[str, Any], label: str,
          markers: bool = True, bounds: tuple[float, float] | None = None) -> None:  # fmt: skip
    """The mean line and its band, the band cut to ``bounds`` (a metric's range, or a log axis' positive part)."""
    ys = _nan(band["mean"])
    line_style = style if markers else {k: v for k, v in style.items() if k != "marker"}
    ax.plot(xs, ys, markersize=3.5, linewidth=1.4, label=f"{label} (n={band['n']})", **line_style)
    if band["n"] > 1:
        lo, hi = bounds or (-math.inf, math.inf)
        lows, highs = ([min(max(v, lo), hi) for v in _nan(band[k])] for k in ("lo", "hi"))
        ax.fill_between(xs, lows, highs, color=style["color"], alpha=BAND_ALPHA, linewidth=0)


def plot_seed_curves(entries: Sequence[dict[str, Any]], panels: Sequence[tuple[str, str, str]], path: Path,
                     title: str) -> Path | None:  # fmt: skip
    """Per-layer curves, one panel per ``(stem, key, ylabel)`` of ``panels``; entry: ``{"label", "curves":
    {stem: band}}`` with band = groups.curve_band's dict. A band is cut to its metric's range (groups.BOUNDS: a
    t-interval over 3 seeds of a fraction can reach past 1)."""
    shown = [p for p in panels if any(e["curves"].get(p[0]) for e in entries)]
    if not shown:
        return None
    ncols = 2 if len(shown) > 1 else 1
    fig, axes = plots._figure(math.ceil(len(shown) / ncols), ncols, (6.2, 4.2))
    flat = list(axes.ravel())
    for ax in flat[len(shown):]:
        ax.axis("off")
    for ax, (stem, _, ylabel) in zip(flat, shown, strict=False):
        bands = [(idx, e["label"], e["curves"][stem]) for idx, e in enumerate(entries) if e["curves"].get(stem)]
        means = [v for _, _, band in bands for v in _nan(band["mean"]) if math.isfinite(v)]
        log_y = stem == "layer_variance" and bool(means) and min(means) > 0
        for idx, label, band in bands:
            bounds = (min(means) / 10, math.inf) if log_y else BOUNDS.get(stem)
            _band(ax, band["layers"], band, scheme_style(idx, len(entries)), label, bounds=bounds)
        if stem == "layer_pruning":
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")  # the depth-utilization threshold
            if max([0.0, *(abs(v) for v in means)]) > 100:  # removing an early layer can cost 1000s of %
                ax.set_yscale("symlog", linthresh=10)
        xlabel = "layer l (0 = embedding output)" if stem == "logit_lens" else "layer l (1 = first)"
        note = GEOMETRIC_BAND_NOTE if stem in GEOMETRIC else SEED_BAND_NOTE
        plots._finish(ax, xlabel=xlabel, ylabel=ylabel, title=ylabel.split(" (")[0] + note, values=means,
                      log_y=log_y)  # fmt: skip
        if log_y:
            ax.set_ylim(bottom=min(means) / 3)
    plots._suptitle(fig, title)
    plots._legend(fig, flat[: len(shown)], title="scheme (n = complete seeds)")
    return plots._save(fig, path)


def plot_seed_loss(entries: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Training loss (left, moving average of the seeds' mean) and held-out loss (right) against tokens, one
    line per scheme and its band over seeds; entry: ``{"label", "train": band, "eval": band}`` (groups.loss_band)."""
    usable = [e for e in entries if e.get("train") or e.get("eval")]
    if not usable:
        return None
    fig, axes = plots._figure(1, 2, (6.4, 4.3))
    smoothed = False
    drawn: dict[str, list[float]] = {"train": [], "eval": []}  # the means: the y range (a band may go past it)
    for idx, entry in enumerate(usable):
        style = scheme_style(idx, len(usable))
        for ax, kind in zip(axes[0], ("train", "eval"), strict=True):
            band = entry.get(kind)
            if not band:
                continue
            if kind == "train" and len(band["mean"]) > 20:  # per-step losses are noisy: smooth the band with them
                alpha = min(1.0, 10.0 / len(band["mean"]))
                band = {**band, **{k: plots._ema(_nan(band[k]), alpha) for k in ("mean", "lo", "hi")}}
                smoothed = True
            _band(ax, band["x"], band, style, entry["label"], markers=kind == "eval", bounds=(0.0, math.inf))
            drawn[kind] += [v for v in _nan(band["mean"]) if math.isfinite(v)]
    train_title = "Training loss" + (" (moving average)" if smoothed else "")
    for ax, kind, what in zip(axes[0], ("train", "eval"), (train_title, "Held-out loss"), strict=True):
        tokens = all(e[kind]["tokens"] for e in usable if e.get(kind))
        plots._finish(ax, xlabel="tokens seen" if tokens else "training step", ylabel="loss (nats / token)",
                      title=what + SEED_BAND_NOTE, values=[], log_y=False)  # fmt: skip
        if drawn[kind]:  # the lines fill the panel; a seed's spike widens its band past the edge, not the axis
            lo, hi = min(drawn[kind]), max(drawn[kind])
            pad = 0.05 * (hi - lo) or 0.05
            ax.set_ylim(lo - pad, hi + pad)
    plots._suptitle(fig, title)
    plots._legend(fig, list(axes[0]), title="scheme (n = complete seeds)")
    return plots._save(fig, path)


def plot_metric_intervals(entries: Sequence[dict[str, Any]], metrics: Sequence[tuple[str, str]], path: Path,
                          title: str) -> Path | None:  # fmt: skip
    """One panel per metric: each scheme's mean (dot) and 95% t-interval over seeds (bar), each seed's value as a
    small cross. Entry: ``{"label", "intervals": {key: Interval dict}, "values": {key: [...]}}``."""
    shown = [(k, name) for k, name in metrics if any(e["intervals"].get(k) for e in entries)]
    if not shown:
        return None
    height = max(3.2, 0.3 * len(entries) + 1.4)
    fig, axes = plots._figure(1, len(shown), (2.9, height), sharey=True)  # one row: the names once, at the left
    flat = list(axes.ravel())
    ys = list(range(len(entries)))[::-1]
    for ax, (key, name) in zip(flat, shown, strict=False):
        for y, (idx, entry) in zip(ys, enumerate(entries), strict=True):
            found = entry["intervals"].get(key)
            if not found:
                continue
            color = scheme_style(idx, len(entries))["color"]
            if found["lo"] is not None:
                ax.plot([found["lo"], found["hi"]], [y, y], color=color, linewidth=2.2)
            ax.plot([found["mean"]], [y], marker="o", color=color, markersize=5)
            ax.plot(entry["values"][key], [y] * len(entry["values"][key]), linestyle="none", marker="x",
                    color=color, markersize=4, alpha=0.7)  # fmt: skip
        ax.set_yticks(ys, [e["label"] for e in entries], fontsize=8)
        ax.tick_params(axis="y", labelleft=ax is flat[0])
        ax.set_ylim(-0.6, len(entries) - 0.4)
        ax.set_xlabel(name)
        ax.grid(True, axis="x", alpha=0.3)
        plots._title(ax, name)
    plots._suptitle(fig, title + " (dot: mean; bar: 95% t-interval over seeds; x: each seed)")
    return plots._save(fig, path)
