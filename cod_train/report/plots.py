"""Figures for the depth diagnostics and the run report (matplotlib, Agg backend, PNG).

Every function takes a list of "model entries" — dicts with a ``"label"`` plus the fields of one
diagnostic (the ``models`` list of an ``analysis/<name>.json``) — and draws one line per model, so
variants can be compared on one figure. Entries lacking the needed field are skipped; a figure with
nothing to draw is not written (the function returns None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

Entry = dict[str, Any]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def _per_layer_lines(
    entries: Sequence[Entry], key: str, path: Path, *, title: str, ylabel: str, log_y: bool = True
) -> Path | None:
    usable = [e for e in entries if e.get(key)]
    if not usable:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for entry in usable:
        ys = _finite(entry[key])
        ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=entry["label"])
    values = [v for e in usable for v in _finite(e[key]) if not math.isnan(v)]
    if log_y and values and min(values) > 0 and max(values) / min(values) > 20:  # log only for a wide range
        ax.set_yscale("log")
    ax.set_xlabel("layer l (1 = first)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_layer_variance(
    entries: Sequence[Entry], path: Path, title: str = "Residual-stream variance after each layer"
) -> Path | None:
    """Variance of each layer's output (log scale) — grows with depth under Pre-LN."""
    return _per_layer_lines(entries, "layer_var", path, title=title, ylabel="output variance")


def plot_grad_norms(
    entries: Sequence[Entry], path: Path, title: str = "Gradient norm per layer"
) -> Path | None:
    """Gradient norm of each layer's parameters (log scale)."""
    ylabel = "||grad|| of the layer's parameters"
    return _per_layer_lines(entries, "layer_grad_norm", path, title=title, ylabel=ylabel)


def plot_pruning(entries: Sequence[Entry], path: Path) -> Path | None:
    """Perplexity after removing layer l, relative to the full model (and the metric change, when given)."""
    usable = [e for e in entries if e.get("ppl") and e.get("base_ppl")]
    if not usable:
        return None
    with_metric = [e for e in usable if e.get("delta_metric")]
    ncols = 2 if with_metric else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4.2), squeeze=False)
    ax = axes[0][0]
    biggest = 0.0
    for entry in usable:
        pct = [100.0 * (p / entry["base_ppl"] - 1.0) for p in _finite(entry["ppl"])]
        biggest = max([biggest, *(abs(v) for v in pct if math.isfinite(v))])
        ax.plot(range(1, len(pct) + 1), pct, marker="o", markersize=3, label=entry["label"])
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    if biggest > 100:  # some layer is essential: keep small changes readable next to huge ones
        ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("removed layer l")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("perplexity increase without layer l (%)")
    ax.set_title("Layer pruning: cost of removing one layer")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if with_metric:
        ax2 = axes[0][1]
        for entry in with_metric:
            ys = _finite(entry["delta_metric"])
            ax2.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=entry["label"])
        ax2.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        ax2.set_xlabel("removed layer l")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.set_ylabel(f"change in {with_metric[0].get('metric_name', 'metric')}")
        ax2.set_title("Layer pruning: downstream metric")
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=8)
    return _save(fig, path)


def plot_angular_heatmaps(entries: Sequence[Entry], path: Path) -> Path | None:
    """One heatmap per model: d(h_l, h_{l+n}) for start l (rows) and block size n (columns)."""
    usable = [e for e in entries if e.get("distance")]
    if not usable:
        return None
    ncols = min(len(usable), 4)
    nrows = math.ceil(len(usable) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols + 1.2, 3.4 * nrows + 0.6), squeeze=False, layout="constrained"
    )
    image = None
    values = [v for e in usable for row in e["distance"] for v in _finite(row) if not math.isnan(v)]
    vmax = max([1e-3, *values])
    for idx, entry in enumerate(usable):
        ax = axes[idx // ncols][idx % ncols]
        grid = [_finite(row) for row in entry["distance"]]
        n_layers = len(grid)
        image = ax.imshow(
            grid, vmin=0.0, vmax=vmax, cmap="viridis", origin="upper", aspect="auto",
            extent=(0.5, n_layers + 0.5, n_layers - 0.5, -0.5),
        )  # fmt: skip
        ax.set_xlabel("block size n (layers skipped)")
        ax.set_ylabel("start layer l (0 = embedding)")
        ax.set_title(entry["label"], fontsize=9)
    for idx in range(len(usable), nrows * ncols):
        axes[idx // ncols][idx % ncols].axis("off")
    assert image is not None  # drawn for each of the (non-empty) usable entries
    cbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    cbar.set_label("angular distance arccos(cos)/pi, last token")
    fig.suptitle("Angular distance between h_l and h_{l+n}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot_loss_curves(runs: Sequence[Entry], path: Path) -> Path | None:
    """Training loss (lines) and eval loss (markers, same colour) against tokens or steps, one colour per run.

    Each entry: ``{"label", "train": [(step, tokens|None, loss)], "eval": [(step, tokens|None, eval_loss)]}``.
    """
    usable = [r for r in runs if r.get("train") or r.get("eval")]
    if not usable:
        return None
    use_tokens = all(
        t is not None for r in usable for _, t, _ in (r.get("train") or []) + (r.get("eval") or [])
    )
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for idx, run in enumerate(usable):
        color = f"C{idx % 10}"
        train = run.get("train") or []
        if train:
            xs, ys = [(t if use_tokens else s) for s, t, _ in train], [v for _, _, v in train]
            if len(ys) > 50:  # noisy: faint raw curve plus an exponential moving average
                ax.plot(xs, ys, color=color, linewidth=0.6, alpha=0.25)
                ys = _ema(ys, alpha=min(1.0, 10.0 / len(ys)))
            ax.plot(xs, ys, color=color, linewidth=1.3, label=f"{run['label']} (train)")
        evals = run.get("eval") or []
        if evals:
            xs = [(t if use_tokens else s) for s, t, _ in evals]
            ax.plot(xs, [v for _, _, v in evals], color=color, marker="s", markersize=4, linestyle="--",
                    label=f"{run['label']} (eval)")  # fmt: skip
    ax.set_xlabel("tokens seen" if use_tokens else "step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title("Training (solid) and eval (dashed, squares) loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
