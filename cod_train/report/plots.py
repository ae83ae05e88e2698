"""Figures for the depth diagnostics and the run report (matplotlib, Agg backend, PNG).

Every function takes a list of "model entries" — dicts with a ``"label"`` plus the fields of one
diagnostic (the ``models`` list of an ``analysis/<name>.json``) — and draws one line per model, so
variants can be compared on one figure. Entries lacking the needed field are skipped; a figure with
nothing to draw is not written (the function returns None).

Layout (the same for 1 or 20 models): constrained layout; one legend per figure, below the panels and outside
them, in as many columns as fit the width (the figure grows downwards to hold it); each model keeps one colour,
line style and marker on every panel (:func:`model_style`); titles wrap to their panel's width.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cod_train.eval.depth_registry import DIAGNOSTICS  # noqa: E402

Entry = dict[str, Any]
DPI = 110
LEGEND_FONTSIZE = 8
TITLE_FONTSIZE = 10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")
HEATMAP_COLUMNS = 4


def model_style(idx: int) -> dict[str, Any]:
    """Colour, line style and marker of the idx-th model: ten colours, then the same colours dashed (then dotted,
    ...); the marker cycles over eight shapes, so neighbours differ in marker too. Distinct for 40 models."""
    return {"color": f"C{idx % 10}", "linestyle": LINESTYLES[(idx // 10) % len(LINESTYLES)],
            "marker": MARKERS[idx % len(MARKERS)]}  # fmt: skip


def _figure(nrows: int, ncols: int, panel: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), squeeze=False,
                             layout="constrained", **kwargs)  # fmt: skip
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches (a character is ~0.55 em wide)."""
    chars = max(16, int(width_in * 72 / (fontsize * 0.55)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _title(ax: Any, text: str, fontsize: float = TITLE_FONTSIZE) -> None:
    width = ax.get_position().width * ax.figure.get_figwidth()
    ax.set_title(_wrap(text, width, fontsize), fontsize=fontsize)


def _suptitle(fig: Figure, text: str) -> None:
    fig.suptitle(_wrap(text, fig.get_figwidth() * 0.95, 12), fontsize=12)


def _legend(fig: Figure, axes: Sequence[Any], title: str | None = None) -> None:
    """One legend for the whole figure, below the panels: the labelled lines of ``axes`` (each label once), in the
    most columns that fit the figure's width; the figure grows by the legend's height."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if not labels:
        return
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]  # the Agg canvas (matplotlib.use above)
    for ncol in range(min(len(labels), 6), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=LEGEND_FONTSIZE,
                            title=title, title_fontsize=LEGEND_FONTSIZE, frameon=False)  # fmt: skip
        box = legend.get_window_extent(renderer)
        if box.width <= 0.97 * fig.bbox.width or ncol == 1:
            break
        legend.remove()
    fig.set_figheight(fig.get_figheight() + box.height / fig.dpi + 0.1)


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if v is not None and math.isfinite(float(v)) else math.nan for v in values]


def _xs(entry: Entry, n: int, first: int = 1) -> list[int]:
    """Layer numbers of a curve: the entry's ``layers`` (a subset) when given, else first..first+n-1."""
    layers = entry.get("layers")
    return list(layers) if isinstance(layers, list) and len(layers) == n else list(range(first, first + n))


def _curve(ax: Any, entry: Entry, key: str, style: dict[str, Any], label: str | None, *, first: int = 1,
           scale: float = 1.0, lines: int = 1) -> list[float]:  # fmt: skip
    """One line, with the entry's ``key_lo`` / ``key_hi`` (95% interval over batches) as a band, fainter when many
    (``lines``) share the panel."""
    ys = [v * scale for v in _finite(entry[key])]
    xs = _xs(entry, len(ys), first)
    ax.plot(xs, ys, markersize=3.5, label=label, **style)
    lo, hi = entry.get(f"{key}_lo"), entry.get(f"{key}_hi")
    if lo and hi and len(lo) == len(ys):
        alpha = 0.15 if lines <= 4 else 0.06
        ax.fill_between(xs, [v * scale for v in _finite(lo)], [v * scale for v in _finite(hi)],
                        color=style["color"], alpha=alpha, linewidth=0)  # fmt: skip
    return ys


def _finish(ax: Any, *, xlabel: str, ylabel: str, title: str, values: Sequence[float], log_y: bool) -> None:
    finite = [v for v in values if not math.isnan(v)]
    if log_y and finite and min(finite) > 0 and max(finite) / min(finite) > 20:  # log only for a wide range
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    _title(ax, title)
    ax.grid(True, alpha=0.3)


BAND_NOTE = " (band: 95% interval over batches)"


def _per_layer_lines(
    entries: Sequence[Entry], key: str, path: Path, *, title: str, ylabel: str, log_y: bool = True
) -> Path | None:
    usable = [e for e in entries if e.get(key)]
    if not usable:
        return None
    fig, axes = _figure(1, 1, (7.5, 4.4))
    ax = axes[0][0]
    values: list[float] = []
    for idx, entry in enumerate(usable):
        values += _curve(ax, entry, key, model_style(idx), entry["label"], lines=len(usable))
    banded = any(e.get(f"{key}_lo") for e in usable)
    _finish(ax, xlabel="layer l (1 = first)", ylabel=ylabel, title=title + (BAND_NOTE if banded else ""),
            values=values, log_y=log_y)  # fmt: skip
    _legend(fig, [ax])
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
    fig, axes = _figure(1, 2 if with_metric else 1, (7.0, 4.4))
    ax = axes[0][0]
    values: list[float] = []
    for idx, entry in enumerate(usable):
        if not entry.get("delta_ppl_pct"):
            entry = {
                **entry,
                "delta_ppl_pct": [100.0 * (p / entry["base_ppl"] - 1.0) for p in _finite(entry["ppl"])],
            }
        label = f"{entry['label']} (ppl {entry['base_ppl']:.4g})"
        values += _curve(ax, entry, "delta_ppl_pct", model_style(idx), label, lines=len(usable))
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
                _curve(ax2, {**entry, "d": [v * 100 for v in _finite(entry["delta_metric"])]}, "d", model_style(idx),
                       None, lines=len(usable))  # fmt: skip
        ax2.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        name = with_metric[0].get("metric_name", "metric")
        _finish(ax2, xlabel="removed layer l", ylabel=f"change in {name} (percentage points)",
                title="Layer pruning: downstream metric", values=[], log_y=False)  # fmt: skip
    _legend(fig, [ax])
    return _save(fig, path)


def plot_block_influence(entries: Sequence[Entry], path: Path, title: str = "Block Influence") -> Path | None:
    """BI_l = 1 - cos(h_{l-1}, h_l) per layer (ShortGPT): near 0 = the layer barely turns the stream."""
    ylabel = "BI = 1 - cos(h_{l-1}, h_l), token mean"
    return _per_layer_lines(entries, "bi", path, title=title, ylabel=ylabel)


def plot_logit_lens(entries: Sequence[Entry], path: Path) -> Path | None:
    """KL(final || lens at layer l) and top-1 agreement, layer 0 (embedding) .. L on both panels; dotted: the
    settling layer."""
    usable = [e for e in entries if e.get("kl") and e.get("top1")]
    if not usable:
        return None
    fig, axes = _figure(1, 2, (6.5, 4.4), sharex=True)
    ax1, ax2 = axes[0]
    for idx, entry in enumerate(usable):
        style = model_style(idx)
        upto_last = {k: entry[k][:-1] for k in ("kl", "kl_lo", "kl_hi") if entry.get(k)}  # KL at L is 0
        _curve(ax1, {"layers": list(range(len(upto_last["kl"]))), **upto_last}, "kl", style, entry["label"],
               lines=len(usable))  # fmt: skip
        _curve(ax2, entry, "top1", style, None, first=0, scale=100.0, lines=len(usable))
        if entry.get("settling_layer") is not None:
            ax2.axvline(entry["settling_layer"], color=style["color"], linestyle=":", linewidth=1.2)
    ax1.set_yscale("log")
    _finish(ax1, xlabel="layer l (0 = embedding output)", ylabel="KL(p_final || p_lens(l)) (nats / token)",
            title="Logit lens: distance to the final prediction (0 at the last layer, not drawn)" + BAND_NOTE,
            values=[], log_y=False)  # fmt: skip
    ax2.axhline(50.0, color="grey", linewidth=0.8, linestyle="--")
    _finish(ax2, xlabel="layer l (0 = embedding output)", ylabel="top-1 agreement with the final prediction (%)",
            title="Logit lens: top-1 agreement (dotted: settling layer)", values=[], log_y=False)  # fmt: skip
    last = max(len(e["top1"]) for e in usable) - 1
    ax2.set_xlim(-0.3, last + 0.3)  # both panels show layers 0..L (sharex)
    _legend(fig, [ax1])
    return _save(fig, path)


def plot_sublayer(entries: Sequence[Entry], path: Path) -> Path | None:
    """||F(x)|| / ||x|| and cos(F(x), x) per layer of the attention (left) and MLP (right) sub-layers."""
    usable = [e for e in entries if e.get("attn_ratio") and e.get("mlp_ratio")]
    if not usable:
        return None
    fig, axes = _figure(2, 2, (6.5, 3.9), sharey="row")
    values: list[float] = []
    for idx, entry in enumerate(usable):
        for col, part in enumerate(("attn", "mlp")):
            label = entry["label"] if col == 0 else None
            values += _curve(axes[0][col], entry, f"{part}_ratio", model_style(idx), label, lines=len(usable))
            _curve(axes[1][col], entry, f"{part}_cos", model_style(idx), None, lines=len(usable))
    for col, name in enumerate(("attention", "MLP")):
        _finish(axes[0][col], xlabel="layer l", ylabel="||F(x)|| / ||x||  (token mean)",
                title=f"{name}: relative norm of its output{BAND_NOTE}", values=values, log_y=True)  # fmt: skip
        axes[1][col].axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        _finish(axes[1][col], xlabel="layer l", ylabel="cos(F(x), x)  (token mean)",
                title=f"{name}: direction (< 0: against x)", values=[], log_y=False)  # fmt: skip
    _legend(fig, [axes[0][0]])
    return _save(fig, path)


def _grid(n_panels: int, panel: tuple[float, float]) -> tuple[Figure, list[Any]]:
    """Up to HEATMAP_COLUMNS panels per row; panels past ``n_panels`` are hidden."""
    ncols = min(n_panels, HEATMAP_COLUMNS)
    nrows = math.ceil(n_panels / ncols)
    fig, axes = _figure(nrows, ncols, panel)
    flat = list(axes.ravel())
    for ax in flat[n_panels:]:
        ax.axis("off")
    return fig, flat[:n_panels]


def _integer_ticks(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def plot_skip_effect(entries: Sequence[Entry], path: Path) -> Path | None:
    """Per model a heat map of ||h'_j - h_j|| / ||h_j|| (removed layer l rows, later layer j columns, log
    colour), and one panel with KL(p_full || p_without_l) per removed layer."""
    usable = [e for e in entries if e.get("change") and e.get("final_kl")]
    if not usable:
        return None
    from matplotlib.colors import LogNorm

    n = len(usable)
    if n < HEATMAP_COLUMNS:  # one row: the heat maps, then the output panel
        fig, grid_axes = _figure(1, n + 1, (4.0, 3.6))
        axes = list(grid_axes[0])
    else:  # rows of heat maps, then the output panel across the whole width
        ncols, nrows = HEATMAP_COLUMNS, math.ceil(n / HEATMAP_COLUMNS)
        fig = plt.figure(figsize=(4.0 * ncols, 3.6 * (nrows + 1)), layout="constrained")
        spec = fig.add_gridspec(nrows + 1, ncols)
        axes = [fig.add_subplot(spec[k // ncols, k % ncols]) for k in range(n)] + [fig.add_subplot(spec[nrows, :])]
    cells = [v for e in usable for row in e["change"] for v in _finite(row) if v > 0]
    vmin, vmax = (min(cells), max(cells)) if cells else (1e-4, 1.0)
    image = None
    for ax, entry in zip(axes, usable, strict=False):
        grid = [_finite(row) for row in entry["change"]]
        removed, n_layers = entry["layers"], len(grid[0])
        image = ax.imshow(grid, norm=LogNorm(vmin=vmin, vmax=max(vmax, vmin * 1.01)), cmap="magma", aspect="auto",
                          extent=(0.5, n_layers + 0.5, len(grid) - 0.5, -0.5))  # fmt: skip
        ax.set_yticks(range(len(removed)), [str(r) for r in removed], fontsize=7 if len(removed) > 16 else 9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("later layer j (output compared)")
        ax.set_ylabel("removed layer l")
        _title(ax, entry["label"], fontsize=9)
    assert image is not None
    cbar = fig.colorbar(image, ax=axes[:-1], shrink=0.9)
    cbar.set_label("||h'_j - h_j|| / ||h_j||  (token mean)")
    ax = axes[-1]
    for idx, entry in enumerate(usable):
        _curve(ax, entry, "final_kl", model_style(idx), entry["label"], lines=len(usable))
    ax.set_yscale("log")
    _finish(ax, xlabel="removed layer l", ylabel="KL(p_full || p_without l) (nats / token)",
            title="Effect on the output" + BAND_NOTE, values=[], log_y=False)  # fmt: skip
    _suptitle(fig, "Skip effect: how much removing layer l changes each later layer")
    _legend(fig, [ax])
    return _save(fig, path)


def plot_angular_heatmaps(entries: Sequence[Entry], path: Path) -> Path | None:
    """One heatmap per model: d(h_l, h_{l+n}) for start l (rows) and block size n (columns)."""
    usable = [e for e in entries if e.get("distance")]
    if not usable:
        return None
    fig, axes = _grid(len(usable), (3.8, 3.4))
    image = None
    values = [v for e in usable for row in e["distance"] for v in _finite(row) if not math.isnan(v)]
    vmax = max([1e-3, *values])
    for ax, entry in zip(axes, usable, strict=True):
        grid = [_finite(row) for row in entry["distance"]]
        n_layers = len(grid)
        image = ax.imshow(
            grid, vmin=0.0, vmax=vmax, cmap="viridis", origin="upper", aspect="auto",
            extent=(0.5, n_layers + 0.5, n_layers - 0.5, -0.5),
        )  # fmt: skip
        _integer_ticks(ax)
        ax.set_xlabel("block size n (layers skipped)")
        ax.set_ylabel("start layer l (0 = embedding)")
        _title(ax, entry["label"], fontsize=9)
    assert image is not None  # drawn for each of the (non-empty) usable entries
    cbar = fig.colorbar(image, ax=axes, shrink=0.9)
    cbar.set_label("angular distance arccos(cos)/pi, last token")
    _suptitle(fig, "Angular distance between h_l and h_{l+n}")
    return _save(fig, path)


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None or not math.isfinite(acc) else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def plot_loss_curves(runs: Sequence[Entry], path: Path) -> Path | None:
    """Training loss (left) and eval loss (right) against tokens or steps, one line style per run.

    Each entry: ``{"label", "train": [(step, tokens|None, loss)], "eval": [(step, tokens|None, eval_loss)]}``.
    """
    usable = [r for r in runs if r.get("train") or r.get("eval")]
    if not usable:
        return None
    use_tokens = all(
        t is not None for r in usable for _, t, _ in (r.get("train") or []) + (r.get("eval") or [])
    )
    with_eval = any(r.get("eval") for r in usable)
    fig, axes = _figure(1, 2 if with_eval else 1, (6.5, 4.4), sharex=True)
    ax1 = axes[0][0]
    smoothed = False
    for idx, run in enumerate(usable):
        style = model_style(idx)
        train = run.get("train") or []
        if train:
            xs, ys = [(t if use_tokens else s) for s, t, _ in train], [v for _, _, v in train]
            if len(ys) > 50:  # noisy: faint raw curve plus an exponential moving average
                ax1.plot(xs, ys, color=style["color"], linewidth=0.6, alpha=0.2)
                ys, smoothed = _ema(ys, alpha=min(1.0, 10.0 / len(ys))), True
            ax1.plot(xs, ys, color=style["color"], linestyle=style["linestyle"], linewidth=1.3, label=run["label"])
        evals = run.get("eval") or []
        if evals:
            xs = [(t if use_tokens else s) for s, t, _ in evals]
            axes[0][1].plot(xs, [v for _, _, v in evals], markersize=4, linewidth=1.2,
                            label=None if train else run["label"], **style)  # fmt: skip
    xlabel = "tokens seen" if use_tokens else "step"
    for ax, what in zip(axes[0], ("Training loss" + (" (moving average; raw: faint)" if smoothed else ""),
                                  "Eval loss (held-out)"), strict=False):  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats / token)")
        _title(ax, what)
        ax.grid(True, alpha=0.3)
    _legend(fig, list(axes[0]))
    return _save(fig, path)


def plot_training_depth(runs: Sequence[Entry], path: Path) -> Path | None:
    """Depth utilization over training, one line style per run: the logit-lens settling depth and the mean Block
    Influence over layers at each diagnostic step. Entry: ``{"label", "settling_depth": [(step, value)],
    "mean_bi": [(step, value)]}``."""
    usable = [r for r in runs if r.get("settling_depth") or r.get("mean_bi")]
    if not usable:
        return None
    fig, axes = _figure(1, 2, (6.5, 4.2), sharex=True)
    ax1, ax2 = axes[0]
    for idx, run in enumerate(usable):
        for ax, key in ((ax1, "settling_depth"), (ax2, "mean_bi")):
            points = run.get(key) or []
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], markersize=3.5, label=run["label"],
                        **model_style(idx))  # fmt: skip
    ax1.set_ylim(0, 1.05)
    _finish(ax1, xlabel="training step", ylabel="settling layer / L (1 = only the last layer settles it)",
            title="In training: logit-lens settling depth", values=[], log_y=False)  # fmt: skip
    _finish(ax2, xlabel="training step", ylabel="mean over layers of BI = 1 - cos(h_{l-1}, h_l)",
            title="In training: mean Block Influence", values=[], log_y=False)  # fmt: skip
    _legend(fig, [ax1, ax2])
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
    fig, axes = _figure(len(usable), 4, (4.4, 3.8))
    for row, entry in zip(axes, usable, strict=True):
        scalars = entry["learned_scalars"]
        tokens = any(k.endswith(".tokens") for k in scalars)
        for ax, (kind, ylabel) in zip(row[:3], (("read", "read weight pre_j"), ("write", "write weight post_j"),
                                               ("res_dist", "||res - I||_F")), strict=True):  # fmt: skip
            for idx, (label, ys) in enumerate(_sublayer_series(scalars, kind).items()):
                ax.plot(range(1, len(ys) + 1), ys, markersize=3.5, label=label, **model_style(idx))
            _finish(ax, xlabel="sub-layer (2l-1: attention of layer l, 2l: its MLP)", ylabel=ylabel,
                    title=f"{entry['label']}: {kind}" + (" (token means)" if tokens else ""), values=[],
                    log_y=False)  # fmt: skip
        # each row over its largest |entry|: unconstrained HC mixes can grow the weights by orders of magnitude
        grid = [[v / (max(abs(x) for x in r) or 1.0) for v in r] for r in entry["hc_connection_map"]]
        image = row[3].imshow(grid, cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto", origin="upper")
        _integer_ticks(row[3])
        row[3].set_xlabel("source s (0: embedding, s: sub-layer s's output)")
        row[3].set_ylabel("reader k (sub-layer k+1's input; last: collapse)", fontsize=8)
        peak = max(abs(v) for r in entry["hc_connection_map"] for v in r)
        _title(row[3], f"{entry['label']}: unfolded map (row-scaled; max {peak:.3g})")
        fig.colorbar(image, ax=row[3])
    _legend(fig, [ax for row in axes for ax in row[:2]], title="read / write weight of")
    return _save(fig, path)


def plot_depth_attention(entries: Sequence[Entry], path: Path) -> Path | None:
    """Per Attention Residuals model (side by side): the token mean of the weight with which each reader (the
    input of sub-layer k, last: the final norm's) takes each source slot (0: the embedding; full AttnRes: sub-layer
    s's output; Block AttnRes: block s's sum), white where a reader does not see that slot, and under it the token
    spread (standard deviation) of the same weights."""
    usable = [e for e in entries if e.get("attnres_weight_map")]
    if not usable:
        return None
    fig, axes = _figure(2, len(usable), (4.6, 4.0))
    for col, entry in enumerate(usable):
        blocks = entry.get("attnres_sources") == "block_attnres"
        for row, (key, what) in enumerate((("attnres_weight_map", "token mean"),
                                           ("attnres_weight_spread", "token spread (std)"))):
            grid = [[float("nan") if v is None else v for v in r] for r in entry.get(key) or []]
            ax = axes[row][col]
            image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0 if row == 0 else None, aspect="auto",
                              origin="upper")
            _integer_ticks(ax)
            ax.set_xlabel("source (0: embedding, s: " + ("block s's sum)" if blocks else "sub-layer s's output)"))
            ax.set_ylabel("reader k (sub-layer k+1's input; last: final norm)", fontsize=8)
            _title(ax, f"{entry['label']}: depth-attention weight, {what}")
            fig.colorbar(image, ax=ax)
    return _save(fig, path)


PLOTTERS: dict[str, Callable[[Sequence[Entry], Path], Path | None]] = {
    d.file: globals()[d.plot] for d in DIAGNOSTICS if d.plot is not None
}  # analysis file stem -> figure (each diagnostic's `plot` in cod_train.eval.depth_registry)
