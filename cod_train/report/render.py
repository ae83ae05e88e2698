"""Runs -> ``report.md`` (comparison table + figures) and ``report.json`` (the table as data).

Missing pieces are shown, never fatal: a cell without data reads "—", and a "Missing or partial files"
section lists, per run, what was absent or unreadable (a crashed run's truncated ``metrics.jsonl``, no
``eval.json``, no ``analysis/``).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cod_train.report import plots
from cod_train.report.runs import RunData

DASH = "—"
ANALYSIS_SECTIONS = (
    ("layer_variance", "Per-layer output variance", plots.plot_layer_variance,
     "Variance of the residual stream after each layer; under Pre-LN it grows with depth, LNS bounds it."),
    ("angular_distance", "Angular distance between layers", plots.plot_angular_heatmaps,
     "arccos(cos(h_l, h_{l+n}))/pi on the last token; near 0 = the block of n layers barely changes it."),
    ("layer_pruning", "Layer pruning", plots.plot_pruning,
     "Perplexity increase when one layer is removed; near 0 = the layer can be dropped at little cost."),
    ("grad_norms", "Gradient norm per layer", plots.plot_grad_norms,
     "L2 norm of each layer's parameter gradients on held-out text."),
)  # fmt: skip


def human(n: float | None, digits: int = 1) -> str:
    if n is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return f"{n:.0f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return DASH if value is None else format(value, fmt)


def summary_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        ppl, ppl_src = run.eval_ppl
        rows.append(
            {
                "run": run.label,
                "path": str(run.path),
                "variant": run.variant,
                "layers": run.num_layers,
                "params": run.params,
                "tokens": run.tokens,
                "eval_ppl": ppl,
                "eval_ppl_source": ppl_src,
                "downstream": run.downstream,
                "tokens_per_s": run.tokens_per_s,
                "status": run.status,
                "missing": run.missing,
                "notes": run.notes,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = "| run | variant | layers | params | tokens | final eval ppl | downstream avg acc (%) | tokens/s | status |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ppl = _num(r["eval_ppl"]) + (" ‡" if r["eval_ppl_source"] == "metrics.jsonl" else "")
        avg = r["downstream"].get("average")
        lines.append(
            f"| {r['run']} | {r['variant']} | {r['layers'] or DASH} | {human(r['params'])} | {human(r['tokens'], 2)} "
            f"| {ppl} | {_num(avg * 100 if avg is not None else None)} | {_num(r['tokens_per_s'], ',.0f')} "
            f"| {r['status']} |"
        )
    if any(r["eval_ppl_source"] == "metrics.jsonl" for r in rows):
        lines += ["", "‡ no eval.json: last in-training eval from metrics.jsonl."]
    return lines


def _downstream_table(rows: list[dict[str, Any]]) -> list[str]:
    tasks = sorted({t for r in rows for t in r["downstream"] if t != "average"})
    if not tasks:
        return []
    lines = ["### Downstream accuracy (%)", "", "| run | " + " | ".join(tasks) + " | average |"]
    lines.append("|---|" + "---|" * (len(tasks) + 1))
    for r in rows:
        cells = [
            _num(r["downstream"][t] * 100) if t in r["downstream"] else DASH for t in [*tasks, "average"]
        ]
        lines.append(f"| {r['run']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _missing_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Missing or partial files", ""]
    flagged = [r for r in rows if r["missing"] or r["notes"] or r["status"] != "complete"]
    if not flagged:
        return lines + ["Every run has metrics, eval.json and analysis/.", ""]
    for r in flagged:
        status = [f"status: {r['status']}"] if r["status"] != "complete" else []
        items = status + [f"no {m}" for m in r["missing"]] + r["notes"]
        lines.append(f"- **{r['run']}**: " + "; ".join(items))
    return lines + [""]


def _loss_entries(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    def points(rows: list[dict[str, Any]], key: str) -> list[tuple]:
        return [(r.get("step"), r.get("tokens"), r[key]) for r in rows if key in r]

    return [
        {"label": r.label, "train": points(r.train, "loss"), "eval": points(r.evals, "eval_loss")}
        for r in runs
    ]


def analysis_entries(runs: Sequence[RunData], stem: str) -> list[dict[str, Any]]:
    """Model entries of ``analysis/<stem>.json`` across runs, labelled by run (and model when several)."""
    out = []
    for run in runs:
        models = run.analysis.get(stem, [])
        for entry in models:
            label = run.label if len(models) == 1 else f"{run.label}: {entry.get('label', '?')}"
            out.append({**entry, "label": label})
    return out


def training_diag_entries(runs: Sequence[RunData], key: str) -> list[dict[str, Any]]:
    """The last in-training diagnostic row of each run (``diag/layer_var`` or ``diag/layer_grad_norm``)."""
    out = []
    for run in runs:
        rows = [r for r in run.diags if isinstance(r.get(key), list)]
        if rows:
            out.append({"label": f"{run.label} (step {rows[-1].get('step', '?')})", "values": rows[-1][key]})
    return out


def _figure(
    lines: list[str], fig_dir: Path, name: str, draw: Callable[[Path], Path | None], empty: str
) -> None:
    path = draw(fig_dir / f"{name}.png")
    lines += [f"![{name}](figures/{name}.png)" if path else f"_{empty}_", ""]


def render_markdown(runs: Sequence[RunData], out_dir: Path, title: str) -> str:
    fig_dir = out_dir / "figures"
    rows = summary_rows(runs)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"Generated {now} from {len(runs)} run(s).", "", "## Summary", ""]
    lines += _table(rows) + [""] + _downstream_table(rows) + _missing_section(rows)
    lines += ["## Training and eval loss", ""]
    _figure(lines, fig_dir, "loss_curves", lambda p: plots.plot_loss_curves(_loss_entries(runs), p),
            "No run has loss rows in metrics.jsonl.")  # fmt: skip
    lines += ["## Depth diagnostics (cod-analyze)", ""]
    for stem, heading, draw, caption in ANALYSIS_SECTIONS:
        entries = analysis_entries(runs, stem)
        lines += [f"### {heading}", "", caption, ""]
        absent = [r.label for r in runs if stem not in r.analysis]
        if absent and entries:
            lines += [f"Not available for: {', '.join(absent)}.", ""]
        _figure(lines, fig_dir, stem, functools.partial(draw, entries),
                f"No run has analysis/{stem}.json (run cod-analyze).")  # fmt: skip
    lines += ["## In-training diagnostics (metrics.jsonl, last diagnostic step)", ""]
    for key, name, draw in (
        ("diag/layer_var", "train_layer_variance", plots.plot_layer_variance),
        ("diag/layer_grad_norm", "train_grad_norms", plots.plot_grad_norms),
    ):
        field = key.removeprefix("diag/")
        entries = [{"label": e["label"], field: e["values"]} for e in training_diag_entries(runs, key)]
        title = "In training: " + (
            "output variance per layer" if field == "layer_var" else "gradient norm per layer"
        )
        _figure(lines, fig_dir, name, functools.partial(draw, entries, title=title),
                f"No run logged {key} (train.diag_every=0?).")  # fmt: skip
    return "\n".join(lines)


def write_report(runs: Sequence[RunData], out_dir: Path, title: str = "cod-train report") -> Path:
    """Write ``out_dir/report.md``, ``out_dir/report.json`` and ``out_dir/figures/*.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render_markdown(runs, out_dir, title)
    (out_dir / "report.md").write_text(text + "\n", encoding="utf-8")
    from cod_train.core.io import atomic_write_json

    atomic_write_json(out_dir / "report.json", {"title": title, "runs": summary_rows(runs)})
    return out_dir / "report.md"
