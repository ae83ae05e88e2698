"""Figures for the depth diagnostics and the run report (matplotlib, Agg backend, PNG).

Every function takes a list of "model entries" — dicts with a ``"label"`` plus the fields of one
diagnostic (the ``models`` list of an ``analysis/<name>.json``) — and draws one line per model, so
variants can be compared on one figure. Entries lacking the needed field are skipped; a figure with
nothing to draw is not written (the function returns None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def _xs(entry: Entry, n: int, first: int = 1) -> list[int]:
    """Layer numbers of a curve: the entry's ``layers`` (a subset) when given, else first..first+n-1."""
    layers = entry.get("layers")
    return list(layers) if isinstance(layers, list) and len(layers) == n else list(range(first, first + n))


def _curve(ax: Any, entry: Entry, key: str, color: str, label: str, *, first: int = 1, scale: float = 1.0,
           style: str = "-") -> list[float]:  # fmt: skip
    """One line, with the entry's ``key_lo`` / ``key_hi`` (95% interval over batches) as a band."""
    ys = [v * scale for v in _finite(entry[key])]
    xs = _xs(entry, len(ys), first)
    ax.plot(xs, ys, style, color=color, marker="o", markersize=3, label=label)
    lo, hi = entry.get(f"{key}_lo"), entry.get(f"{key}_hi")
    if lo and hi and len(lo) == len(ys):
        ax.fill_between(xs, [v * scale for v in _finite(lo)], [v * scale for v in _finite(hi)], color=color,
                        alpha=0.18, linewidth=0)  # fmt: skip
    return ys


def _finish(ax: Any, *, xlabel: str, ylabel: str, title: str, values: Sequence[float], log_y: bool) -> None:
    finite = [v for v in values if not math.isnan(v)]
    if log_y and finite and min(finite) > 0 and max(finite) / min(finite) > 20:  # log only for a wide range
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


BAND_NOTE = " (band: 95% interval over batches)"


def _per_layer_lines(
    entries: Sequence[Entry], key: str, path: Path, *, title: str, ylabel: str, log_y: bool = True
) -> Path | None:
    usable = [e for e in entries if e.get(key)]
    if not usable:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    values: list[float] = []
    for idx, entry in enumerate(usable):
        values += _curve(ax, entry, key, f"C{idx % 10}", entry["label"])
    banded = any(e.get(f"{key}_lo") for e in usable)
    _finish(ax, xlabel="layer l (1 = first)", ylabel=ylabel, title=title + (BAND_NOTE if banded else ""),
            values=values, log_y=log_y)  # fmt: skip
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
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4.4), squeeze=False)
    ax = axes[0][0]
    values: list[float] = []
    for idx, entry in enumerate(usable):
        if not entry.get("delta_ppl_pct"):
            entry = {
                **entry,
                "delta_ppl_pct": [100.0 * (p / entry["base_ppl"] - 1.0) for p in _finite(entry["ppl"])],
            }
        label = f"{entry['label']} (ppl {entry['base_ppl']:.4g})"
        values += _curve(ax, entry, "delta_ppl_pct", f"C{idx % 10}", label)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    if max([0.0, *(abs(v) for v in values if math.isfinite(v))]) > 100:  # keep small changes readable
        ax.set_yscale("symlog", linthresh=10)
    banded = any(e.get("delta_ppl_pct_lo") for e in usable)
    _finish(ax, xlabel="removed layer l", ylabel="perplexity increase without layer l (%)",
            title="Layer pruning: cost of removing one layer" + (BAND_NOTE if banded else ""), values=[],
            log_y=False)  # fmt: skip
    if with_metric:
        ax2 = axes[0][1]
        for idx, entry in enumerate(usable):
            if entry.get("delta_metric"):
                _curve(ax2, {**entry, "d": [v * 100 for v in _finite(entry["delta_metric"])]}, "d", f"C{idx % 10}",
                       entry["label"])  # fmt: skip
        ax2.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        name = with_metric[0].get("metric_name", "metric")
        _finish(ax2, xlabel="removed layer l", ylabel=f"change in {name} (percentage points)",
                title="Layer pruning: downstream metric", values=[], log_y=False)  # fmt: skip
    return _save(fig, path)


def plot_block_influence(entries: Sequence[Entry], path: Path, title: str = "Block Influence") -> Path | None:
    """BI_l = 1 - cos(h_{l-1}, h_l) per layer (ShortGPT): near 0 = the layer barely turns the stream."""
    ylabel = "BI = 1 - cos(h_{l-1}, h_l), token mean"
    return _per_layer_lines(entries, "bi", path, title=title, ylabel=ylabel)


def plot_logit_lens(entries: Sequence[Entry], path: Path) -> Path | None:
    """KL(final || lens at layer l) and top-1 agreement, layer 0 (embedding) .. L; dotted: settling layer."""
    usable = [e for e in entries if e.get("kl") and e.get("top1")]
    if not usable:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    for idx, entry in enumerate(usable):
        color = f"C{idx % 10}"
        upto_last = {k: entry[k][:-1] for k in ("kl", "kl_lo", "kl_hi") if entry.get(k)}  # KL at L is 0
        _curve(ax1, {"layers": list(range(len(upto_last["kl"]))), **upto_last}, "kl", color, entry["label"])
        _curve(ax2, entry, "top1", color, entry["label"], first=0, scale=100.0)
        if entry.get("settling_layer") is not None:
            ax2.axvline(entry["settling_layer"], color=color, linestyle=":", linewidth=1.2)
    ax1.set_yscale("log")
    _finish(ax1, xlabel="layer l (0 = embedding output)", ylabel="KL(p_final || p_lens(l)) (nats / token)",
            title="Logit lens: distance to the final prediction" + BAND_NOTE, values=[], log_y=False)  # fmt: skip
    ax2.axhline(50.0, color="grey", linewidth=0.8, linestyle="--")
    _finish(ax2, xlabel="layer l (0 = embedding output)", ylabel="top-1 agreement with the final prediction (%)",
            title="Logit lens: top-1 agreement (dotted: settling layer)", values=[], log_y=False)  # fmt: skip
    return _save(fig, path)


def plot_sublayer(entries: Sequence[Entry], path: Path) -> Path | None:
    """||F(x)|| / ||x|| and cos(F(x), x) per layer; attention solid, MLP dashed, one colour per model."""
    usable = [e for e in entries if e.get("attn_ratio") and e.get("mlp_ratio")]
    if not usable:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
    values: list[float] = []
    for idx, entry in enumerate(usable):
        color = f"C{idx % 10}"
        for part, style in (("attn", "-"), ("mlp", "--")):
            label = f"{entry['label']}: {'attention' if part == 'attn' else 'MLP'}"
            values += _curve(ax1, entry, f"{part}_ratio", color, label, style=style)
            _curve(ax2, entry, f"{part}_cos", color, label, style=style)
    _finish(ax1, xlabel="layer l", ylabel="||F(x)|| / ||x||  (token mean)",
            title="Sub-layer contribution: relative norm" + BAND_NOTE, values=values, log_y=True)  # fmt: skip
    ax2.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    _finish(ax2, xlabel="layer l", ylabel="cos(F(x), x)  (token mean)",
            title="Sub-layer contribution: direction (< 0: erases the stream)", values=[], log_y=False)  # fmt: skip
    return _save(fig, path)


def plot_skip_effect(entries: Sequence[Entry], path: Path) -> Path | None:
    """Per model a heat map of ||h'_j - h_j|| / ||h_j|| (removed layer l rows, later layer j columns, log
    colour), and one panel with KL(p_full || p_without_l) per removed layer."""
    usable = [e for e in entries if e.get("change") and e.get("final_kl")]
    if not usable:
        return None
    from matplotlib.colors import LogNorm

    ncols = len(usable) + 1
    fig, axes = plt.subplots(1, ncols, figsize=(3.9 * ncols + 1.0, 4.0), squeeze=False, layout="constrained")
    cells = [v for e in usable for row in e["change"] for v in _finite(row) if v > 0]
    vmin, vmax = (min(cells), max(cells)) if cells else (1e-4, 1.0)
    image = None
    for idx, entry in enumerate(usable):
        ax = axes[0][idx]
        grid = [_finite(row) for row in entry["change"]]
        removed, n_layers = entry["layers"], len(grid[0])
        image = ax.imshow(grid, norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 1.01)), cmap="magma", aspect="auto",
                          extent=(0.5, n_layers + 0.5, len(grid) - 0.5, -0.5))  # fmt: skip
        ax.set_yticks(range(len(removed)), [str(r) for r in removed], fontsize=7 if len(removed) > 16 else 9)
        ax.set_xlabel("later layer j (output compared)")
        ax.set_ylabel("removed layer l")
        ax.set_title(entry["label"], fontsize=9)
    assert image is not None
    cbar = fig.colorbar(image, ax=axes[0][: len(usable)].tolist(), shrink=0.9)
    cbar.set_label("||h'_j - h_j|| / ||h_j||  (token mean)")
    ax = axes[0][-1]
    for idx, entry in enumerate(usable):
        _curve(ax, entry, "final_kl", f"C{idx % 10}", entry["label"])
    ax.set_yscale("log")
    _finish(ax, xlabel="removed layer l", ylabel="KL(p_full || p_without l) (nats / token)",
            title="Effect on the output\n" + BAND_NOTE.strip(), values=[], log_y=False)  # fmt: skip
    fig.suptitle("Skip effect: how much removing layer l changes each later layer")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def plot_training_depth(runs: Sequence[Entry], path: Path) -> Path | None:
    """Depth utilization over training, one colour per run: the logit-lens settling depth and the mean Block
    Influence over layers at each diagnostic step. Entry: ``{"label", "settling_depth": [(step, value)],
    "mean_bi": [(step, value)]}``."""
    usable = [r for r in runs if r.get("settling_depth") or r.get("mean_bi")]
    if not usable:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    for idx, run in enumerate(usable):
        color = f"C{idx % 10}"
        for ax, key in ((ax1, "settling_depth"), (ax2, "mean_bi")):
            points = run.get(key) or []
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], color=color, marker="o", markersize=3,
                        label=run["label"])  # fmt: skip
    ax1.set_ylim(0, 1.05)
    _finish(ax1, xlabel="training step", ylabel="settling layer / L (1 = only the last layer settles it)",
            title="In training: logit-lens settling depth", values=[], log_y=False)  # fmt: skip
    _finish(ax2, xlabel="training step", ylabel="mean over layers of BI = 1 - cos(h_{l-1}, h_l)",
            title="In training: mean Block Influence", values=[], log_y=False)  # fmt: skip
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def _sublayer_series(scalars: dict[str, Any], kind: str) -> dict[str, list[float]]:
    """``{label: values over the 2L sub-layers}`` (attention of layer 1, its MLP, ...) of one kind of hyper-connection
    weight (``read``, ``write`` per stream, ``res_dist``), token means (``.tokens``) where the model has them."""
    streams = {k.split(".")[2] for k in scalars if k.startswith(f"attn_hc.{kind}.")} - {"tokens"}
    names = [kind] if kind == "res_dist" else [f"{kind}.{j}" for j in sorted(streams, key=int)]
    out: dict[str, list[float]] = {}
    for name in names:
        suffix = ".tokens" if f"attn_hc.{name}.tokens" in scalars else ""
        attn, mlp = scalars.get(f"attn_hc.{name}{suffix}"), scalars.get(f"mlp_hc.{name}{suffix}")
        if attn and mlp:
            label = "||res - I||_F" if kind == "res_dist" else f"stream {name.split('.')[1]}"
            out[label] = [v for pair in zip(attn, mlp, strict=True) for v in pair]
    return out


def plot_hyper_connections(entries: Sequence[Entry], path: Path) -> Path | None:
    """Per hyper-connection model (one row): each sub-layer's read weights pre_j and write weights post_j per
    stream, the stream mixing's distance from the identity, and the unfolded connection map (the HC paper's
    Lambda-shaped pattern: which earlier outputs each sub-layer input is made of)."""
    usable = [e for e in entries if e.get("hc_connection_map") and e.get("learned_scalars")]
    if not usable:
        return None
    fig, axes = plt.subplots(len(usable), 4, figsize=(17, 3.6 * len(usable)), squeeze=False)
    for row, entry in zip(axes, usable, strict=True):
        scalars = entry["learned_scalars"]
        tokens = any(k.endswith(".tokens") for k in scalars)
        for ax, (kind, ylabel) in zip(row[:3], (("read", "read weight pre_j"), ("write", "write weight post_j"),
                                               ("res_dist", "||res - I||_F")), strict=True):  # fmt: skip
            for idx, (label, ys) in enumerate(_sublayer_series(scalars, kind).items()):
                ax.plot(range(1, len(ys) + 1), ys, "-", color=f"C{idx % 10}", marker="o", markersize=3, label=label)
            _finish(ax, xlabel="sub-layer (2l-1: attention of layer l, 2l: its MLP)", ylabel=ylabel,
                    title=f"{entry['label']}: {kind}" + (" (token means)" if tokens else ""), values=[],
                    log_y=False)  # fmt: skip
        # each row over its largest |entry|: unconstrained HC mixes can grow the weights by orders of magnitude
        grid = [[v / (max(abs(x) for x in r) or 1.0) for v in r] for r in entry["hc_connection_map"]]
        image = row[3].imshow(grid, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto", origin="upper")
        row[3].xaxis.set_major_locator(MaxNLocator(integer=True))
        row[3].yaxis.set_major_locator(MaxNLocator(integer=True))
        row[3].set_xlabel("source s (0: embedding, s: sub-layer s's output)")
        row[3].set_ylabel("reader k (sub-layer k+1's input; last: collapse)", fontsize=8)
        peak = max(abs(v) for r in entry["hc_connection_map"] for v in r)
        row[3].set_title(f"{entry['label']}: unfolded map (row-scaled; max {peak:.3g})", fontsize=10)
        fig.colorbar(image, ax=row[3])
    return _save(fig, path)


PLOTTERS: dict[str, Callable[[Sequence[Entry], Path], Path | None]] = {
    "layer_variance": plot_layer_variance,
    "angular_distance": plot_angular_heatmaps,
    "layer_pruning": plot_pruning,
    "grad_norms": plot_grad_norms,
    "block_influence": plot_block_influence,
    "logit_lens": plot_logit_lens,
    "sublayer_contribution": plot_sublayer,
    "skip_effect": plot_skip_effect,
}  # analysis file stem -> figure
