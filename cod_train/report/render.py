"""Runs -> ``report.md`` (comparison table + figures) and ``report.json`` (the table as data).

Missing pieces are shown, never fatal: a cell without data reads "—", and a "Missing or partial files"
section lists, per run, what was absent or unreadable (a crashed run's truncated ``metrics.jsonl``, no
``eval.json``, no ``analysis/``); a run with ``failed.json`` is listed as failed, with its exit code and error.

Runs that differ only in ``seed`` form one group (a scheme over seeds): when any group has several runs, a
"Schemes over seeds" section gives each group's mean and 95% t-interval per metric, the pairs of schemes whose
difference is beyond the seed-to-seed noise (Welch's t-test, Holm-corrected), and figures with one line per
scheme and its band (render_groups.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cod_train.eval.depth_registry import DIAGNOSTICS
from cod_train.eval.depth_summary import PRUNE_THRESHOLD_PCT, depth_summary
from cod_train.report import plots
from cod_train.report.groups import Group, group_runs, has_seeds, human
from cod_train.report.render_groups import MAX_SCHEMES_PER_FIGURE, by_depth, figure_parts, groups_section
from cod_train.report.runs import RunData

DASH = "—"
ANALYSIS_SECTIONS = tuple((d.file, d.title, d.about) for d in DIAGNOSTICS)  # (file stem, heading, caption)
NOISE_CURVES = (("layer_pruning", "delta_ppl_pct", "pruning cost (%)"), ("block_influence", "bi", "Block Influence"),
                ("logit_lens", "kl", "logit-lens KL"))  # fmt: skip


def _num(value: float | None, fmt: str = ".2f") -> str:
    return DASH if value is None else format(value, fmt)


def summary_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        ppl, ppl_src, ppl_step = run.eval_ppl
        loss, loss_step = run.train_loss
        avg = run.downstream.get("average")
        rows.append(
            {
                "run": run.label,
                "group": run.group or run.label,
                "seed": run.seed,
                "path": str(run.path),
                "variant": run.variant,
                "settings": run.settings,
                "layers": run.num_layers,
                "params": run.params,
                "tokens": run.tokens,
                "flops_per_token": run.flops_per_token,
                "train_flops": run.train_flops,
                "train_loss": loss,
                "train_loss_step": loss_step,
                "eval_ppl": ppl,
                "eval_ppl_source": ppl_src,
                "eval_ppl_step": ppl_step,
                "downstream": run.downstream,
                "downstream_avg": avg * 100 if avg is not None else None,
                "downstream_step": run.eval_json_step if run.downstream else None,
                "tokens_per_s": run.tokens_per_s,
                **run_depth_summary(run),
                "analysis_from": str(run.analysis_from) if run.analysis_from else None,
                "status": run.status,
                "failure": run.failure,
                "missing": run.missing,
                "notes": run.notes,
            }
        )
    return rows


STEP_COLUMNS = (("train_loss", "last train loss"), ("eval_ppl", "eval perplexity"), ("depth_utilization", "depth util."),
                ("downstream", "downstream accuracy"))  # fmt: skip


def _at(value: str, step: int | None, known: bool) -> str:
    """A table cell with the step of its number (``3.21 @60``; ``@?`` when the step is unknown)."""
    if not known:
        return value
    return f"{value} @{step if step is not None else '?'}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| run | variant | layers | params | tokens | train FLOPs | last train loss @step | eval ppl @step "
            "| depth util. @step | settling depth | downstream avg acc (%) @step | tokens/s | status |")  # fmt: skip
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        loss = _at(_num(r["train_loss"], ".3f"), r["train_loss_step"], r["train_loss"] is not None)
        ppl = _at(_num(r["eval_ppl"]), r["eval_ppl_step"], r["eval_ppl"] is not None)
        ppl += " ‡" if r["eval_ppl_source"] == "metrics.jsonl" else ""
        util = _at(_util(r), r["depth_step"], r["depth_utilization"] is not None)
        avg = r["downstream"].get("average")
        down = _at(_num(avg * 100 if avg is not None else None), r["downstream_step"], avg is not None)
        lines.append(
            f"| {r['run']} | {r['variant']} | {r['layers'] or DASH} | {human(r['params'])} | {human(r['tokens'], 2)} "
            f"| {human(r['train_flops'], 2)} | {loss} | {ppl} | {util} | {_num(r['settling_depth'])} | {down} | {_num(r['tokens_per_s'], ',.0f')} "
            f"| {r['status']} |"
        )
    lines += [""] + _step_warnings(rows)
    if any(r["eval_ppl_source"] == "metrics.jsonl" for r in rows):
        lines += ["‡ no eval.json: last in-training eval from metrics.jsonl.", ""]
    lines += [f"@N: the training step of the weights each number was measured on. Depth util.: fraction of layers whose "
              f"removal raises perplexity by more than {PRUNE_THRESHOLD_PCT:g}% [range counted with each layer's 95% "
              "interval]; settling depth: logit-lens settling layer / L (docs/depth.md). Both from cod-analyze. Train FLOPs: "
              "training FLOPs per token (cod_train.model.flops: projections, attention and the residual scheme's own "
              "multiply-adds, x3 for the backward pass) x tokens trained on."]  # fmt: skip
    return lines


def _step_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A warning per column whose numbers come from different training steps: they are not comparable as they are."""
    lines = []
    for key, name in STEP_COLUMNS:
        step_key = "depth_step" if key == "depth_utilization" else f"{key}_step"
        steps = {r[step_key] for r in rows if r[key] not in (None, {})}
        if len(steps) > 1:
            shown = ", ".join(str(s) for s in sorted(steps, key=lambda s: (s is None, s or 0)))
            lines.append(f"**Note:** the {name} figures come from different training steps ({shown}); compare them "
                         "with that in mind.")  # fmt: skip
    return lines + ([""] if lines else [])


def _util(row: dict[str, Any]) -> str:
    util, span = row.get("depth_utilization"), row.get("depth_utilization_range")
    if util is None:
        return DASH
    return f"{util:.2f}" + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span and None not in span else "")


def final_model(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of a run's analysed models (one per checkpoint), the one of the latest step."""
    return max(entries, key=lambda e: e.get("step") or -1, default=None)


def run_depth_summary(run: RunData) -> dict[str, Any]:
    """The depth-utilization summary (eval/depth_summary.py) of the run's analysed model of the latest step, with
    that step: pruning curve and logit lens of the same checkpoint."""
    pruning = final_model(run.analysis.get("layer_pruning") or [])
    chosen = pruning or final_model(run.analysis.get("logit_lens") or [])
    lens = next((e for e in run.analysis.get("logit_lens") or [] if chosen and _same_model(e, chosen)), None)
    return {**depth_summary(pruning, lens), "deep_utilization": deep_utilization(pruning),
            "deep_prune_pct": deep_prune_pct(pruning), "depth_step": chosen.get("step") if chosen else None}


def _deep_half(pruning: dict[str, Any] | None) -> list[float]:
    """The pruning costs (%) of the deep half of the layers (l > L/2)."""
    pct = (pruning or {}).get("delta_ppl_pct")
    if not pruning or not pct:
        return []
    given = pruning.get("layers")
    layers: list[int] = given if isinstance(given, list) else list(range(1, len(pct) + 1))
    total = pruning.get("num_layers") or max(layers)
    return [v for layer, v in zip(layers, pct, strict=True) if layer > total / 2 and v is not None]


def deep_utilization(pruning: dict[str, Any] | None) -> float | None:
    """The share of the deep half of the layers (l > L/2) whose removal raises perplexity by more than
    PRUNE_THRESHOLD_PCT percent: depth utilization restricted to the layers a "curse of depth" makes idle."""
    deep = _deep_half(pruning)
    return sum(v > PRUNE_THRESHOLD_PCT for v in deep) / len(deep) if deep else None


def deep_prune_pct(pruning: dict[str, Any] | None) -> float | None:
    """The median cost (%) of removing one deep-half layer: the same question without the threshold, so that two
    schemes whose deep layers all cost less than 1% can still differ (the median: one critical last layer, as in
    Post-LN, does not stand for the half)."""
    deep = sorted(_deep_half(pruning))
    if not deep:
        return None
    mid = len(deep) // 2
    return deep[mid] if len(deep) % 2 else (deep[mid - 1] + deep[mid]) / 2


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a.get("checkpoint"), a.get("step")) == (b.get("checkpoint"), b.get("step"))


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
        if r["failure"] is not None:
            error = r["failure"].get("error") or "no error recorded"
            lines.append(f"- **{r['run']}**: **{r['status']}**: {error} (`{r['path']}/failed.json`)")
            continue
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
    """Each run's own analysed models of ``analysis/<stem>.json``, labelled by run, and by step where a run has
    several checkpoints analysed or the steps differ between runs."""
    pairs = [(run, entry) for run in runs for entry in run.analysis.get(stem, [])]
    steps = {entry.get("step") for _, entry in pairs}
    counts = {id(run): len(run.analysis.get(stem, [])) for run in runs}
    return [{**entry, "label": run.label + (f" @{entry.get('step', '?')}" if counts[id(run)] > 1 or len(steps) > 1
                                               else "")} for run, entry in pairs]  # fmt: skip


def training_diag_entries(runs: Sequence[RunData], key: str) -> list[dict[str, Any]]:
    """The last in-training diagnostic row of each run (``diag/layer_var`` or ``diag/layer_grad_norm``)."""
    out = []
    for run in runs:
        rows = [r for r in run.diags if isinstance(r.get(key), list)]
        if rows:
            out.append({"label": f"{run.label} @{rows[-1].get('step', '?')}", "values": rows[-1][key]})
    return out


def training_depth_entries(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """Per run, over the diagnostic steps: the settling depth and the mean Block Influence over layers."""
    out = []
    for run in runs:
        rows = [r for r in run.diags if isinstance(r.get("step"), (int, float))]
        settle = [
            (r["step"], r["diag/settling_depth"])
            for r in rows
            if isinstance(r.get("diag/settling_depth"), float)
        ]
        bi = [(r["step"], sum(r["diag/bi"]) / len(r["diag/bi"])) for r in rows if r.get("diag/bi")]
        if settle or bi:
            out.append({"label": run.label, "settling_depth": settle, "mean_bi": bi})
    return out


def _overlap(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[int, int] | None:
    """(layers whose 95% intervals do not overlap, layers compared) for two entries of the same depth."""
    lo_a, hi_a, lo_b, hi_b = (e.get(f"{key}_{s}") for e in (a, b) for s in ("lo", "hi"))
    if not (lo_a and hi_a and lo_b and hi_b) or len(lo_a) != len(lo_b) or a.get("layers") != b.get("layers"):
        return None
    pairs = [
        (x, y, u, v) for x, y, u, v in zip(lo_a, hi_a, lo_b, hi_b, strict=True) if None not in (x, y, u, v)
    ]
    return sum(y < u or v < x for x, y, u, v in pairs), len(pairs)


def noise_section(runs: Sequence[RunData], seeds: bool = False) -> list[str]:
    """For each pair of runs and each banded curve: how many layers differ beyond the 95% intervals. With seeds
    (``seeds``), not the pairs but how often the test calls two seeds of one scheme different: its false alarms."""
    lines = ["## Differences between runs over held-out batches: signal or noise?", ""]
    found, calibration = [], []
    group_of = {r.label: r.group for r in runs}
    for stem, key, name in NOISE_CURVES:
        entries = [e for e in analysis_entries(runs, stem) if e.get(f"{key}_lo")]
        tally = {True: [0, 0], False: [0, 0]}  # same scheme? -> [pairs apart at >= 1 layer, pairs]
        for i, a in enumerate(entries):
            for b in entries[i + 1 :]:
                res = _overlap(a, b, key)
                if res is None:
                    continue
                apart, total = res
                same = group_of.get(a["label"]) == group_of.get(b["label"]) is not None
                tally[same][0] += apart > 0
                tally[same][1] += 1
                verdict = (
                    "within noise" if apart == 0 else f"differ beyond noise at {apart} of {total} layers"
                )
                found.append(f"- {name}: **{a['label']}** vs **{b['label']}**: {verdict}")
        if tally[True][1]:
            calibration.append(f"| {name} | {tally[True][0]} of {tally[True][1]} | {tally[False][0]} of "
                               f"{tally[False][1]} |")  # fmt: skip
    if seeds and calibration:
        return lines + [
            "The per-batch test (two curves differ at a layer when their bootstrap 95% intervals over held-out "
            "batches do not overlap) against the seeds: how many pairs of runs it calls different at one layer or "
            "more, among two seeds of the same scheme (where every difference is seed noise: its false alarms) "
            "and among different schemes.", "",
            "| curve | same scheme, other seed | different schemes |", "|---|---|---|", *calibration, "",
            "Batch intervals do not see the seed-to-seed spread: compare schemes with the verdicts over seeds above.",
            "",
        ]  # fmt: skip
    if not found:
        return lines + [
            "_No two runs of the same depth have curves with intervals (cod-analyze, several batches)._",
            "",
        ]
    note = ("Two curves differ beyond noise at a layer when their bootstrap 95% intervals over held-out batches "
            "do not overlap (a conservative test; one seed per variant says nothing about seed-to-seed noise).")  # fmt: skip
    return lines + [note, ""] + found + [""]


def _figure(
    lines: list[str], fig_dir: Path, name: str, draw: Callable[[Path], Path | None], empty: str
) -> None:
    path = draw(fig_dir / f"{name}.png")
    lines += [f"![{name}](figures/{name}.png)" if path else f"_{empty}_", ""]


def _runs_section(rows: list[dict[str, Any]]) -> list[str]:
    """Which directory each label stands for, and every setting that differs between the runs."""
    lines = ["### Runs", ""]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        lines.append(f"- **{r['run']}**: `{r['path']}`" + (f" ({settings})" if settings else ""))
    return lines + [""]


def _analysis_sources(runs: Sequence[RunData], notes: Sequence[str]) -> list[str]:
    """Where each run's analysed model comes from (its own folder or a joint cod-analyze), and models left out."""
    lines = []
    for run in runs:
        if run.analysis_from is not None and run.analysis_from.resolve() != run.path.resolve():
            lines.append(f"- **{run.label}**: from the joint analysis in `{run.analysis_from}`")
    lines += [f"- {note}" for note in notes]
    return (["Analysed models:", "", *lines, ""]) if lines else []


FIGURES_PER = ("run", "scheme")


def scheme_parts(groups: Sequence[Group]) -> list[tuple[str, list[RunData]]]:
    """One run per scheme (its first complete seed, else its first run) for the per-run figures, per depth in parts
    of at most MAX_SCHEMES_PER_FIGURE (render_groups.figure_parts: Pre-LN in each)."""
    depths = by_depth(groups)
    if sum(len(m) for m in depths.values()) <= MAX_SCHEMES_PER_FIGURE:
        return [("", [_representative(g) for g in groups])]
    out = []
    for depth, members in depths.items():
        parts = figure_parts(members)
        for idx, part in enumerate(parts, start=1):
            where = (f"{depth}-layer models" if depth else "models") + (f", part {idx} of {len(parts)}"
                                                                      if len(parts) > 1 else "")  # fmt: skip
            out.append((where, [_representative(g) for g in part]))
    return out


def _representative(group: Group) -> RunData:
    return group.complete[0][0] if group.complete else group.runs[0]


def run_figures(runs: Sequence[RunData], fig_dir: Path, notes: Sequence[str], suffix: str = "",
                level: str = "##") -> list[str]:  # fmt: skip
    """The per-run figures (loss, cod-analyze's diagnostics, the in-training diagnostics) of ``runs``, their files
    named ``<figure><suffix>.png``, their headings at ``level``."""
    lines = [f"{level} Training and eval loss", ""]
    _figure(lines, fig_dir, f"loss_curves{suffix}", lambda p: plots.plot_loss_curves(_loss_entries(runs), p),
            "No run has loss rows in metrics.jsonl.")  # fmt: skip
    lines += [f"{level} Depth diagnostics (cod-analyze)", ""] + _analysis_sources(runs, notes)
    for stem, heading, caption in ANALYSIS_SECTIONS:
        entries = analysis_entries(runs, stem)
        lines += [f"{level}# {heading}", "", caption, ""]
        absent = [r.label for r in runs if stem not in r.analysis]
        if absent and entries:
            lines += [f"Not available for: {', '.join(absent)}.", ""]
        _figure(lines, fig_dir, f"{stem}{suffix}", functools.partial(plots.PLOTTERS[stem], entries),
                f"No run has analysis/{stem}.json (run cod-analyze).")  # fmt: skip
    lines += [f"{level} In-training diagnostics (metrics.jsonl)", ""]
    _figure(lines, fig_dir, f"train_depth_utilization{suffix}",
            lambda p: plots.plot_training_depth(training_depth_entries(runs), p),
            "No run logged diag/settling_depth or diag/bi (train.diag_every=0, or a run older than these keys).")  # fmt: skip
    lines += ["Last diagnostic step of each run:", ""]
    for key, name, draw in (
        ("diag/layer_var", "train_layer_variance", plots.plot_layer_variance),
        ("diag/layer_grad_norm", "train_grad_norms", plots.plot_grad_norms),
        ("diag/bi", "train_block_influence", plots.plot_block_influence),
    ):
        field = {"diag/bi": "bi"}.get(key, key.removeprefix("diag/"))
        entries = [{"label": e["label"], field: e["values"]} for e in training_diag_entries(runs, key)]
        title = "In training: " + {"layer_var": "output variance per layer", "bi": "Block Influence per layer"}.get(
            field, "gradient norm per layer")  # fmt: skip
        _figure(lines, fig_dir, f"{name}{suffix}", functools.partial(draw, entries, title=title),
                f"No run logged {key} (train.diag_every=0?).")  # fmt: skip
    return lines


def render_markdown(runs: Sequence[RunData], out_dir: Path, title: str, notes: Sequence[str] = (),
                    figures_per: str = "run", order: str = "run", data: dict[str, Any] | None = None) -> str:  # fmt: skip
    """report.md's text; ``figures_per="scheme"``: the per-run figures show one seed of each scheme; ``order``:
    the groups' order (flops: with compute tiers); ``data`` receives what report.json adds (the groups over
    seeds)."""
    fig_dir = out_dir / "figures"
    rows = summary_rows(runs)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    groups = group_runs(runs, rows)
    failed = sum(r["failure"] is not None for r in rows)
    lines = [f"# {title}", "", f"Generated {now} from {len(runs)} run(s) of {len(groups)} scheme(s)"
             + (f", {failed} failed" if failed else "") + ".", ""]  # fmt: skip
    if has_seeds(groups):
        lines += groups_section(groups, fig_dir, order, (data if data is not None else {}).update)
    lines += ["## Summary (each run)", ""]
    lines += _table(rows) + [""] + _runs_section(rows) + _downstream_table(rows) + _missing_section(rows)
    if figures_per == "scheme" and has_seeds(groups):
        parts = scheme_parts(groups)
        shown = dict.fromkeys(r.label for _, part in parts for r in part)  # Pre-LN's run is in every part
        lines += [f"_The figures below show one seed per scheme (its first complete run: {', '.join(shown)}); the "
                  "figures over seeds are above._", ""]  # fmt: skip
        for idx, (where, part) in enumerate(parts, start=1):
            if len(parts) > 1:  # more schemes than one figure shows readably: per depth, in parts
                lines += [f"## One seed per scheme: {where}", ""]
            lines += run_figures(part, fig_dir, notes, suffix=f"_p{idx}" if len(parts) > 1 else "",
                                 level="###" if len(parts) > 1 else "##")  # fmt: skip
    else:
        lines += run_figures(runs, fig_dir, notes)
    lines += noise_section(runs, seeds=has_seeds(groups))
    return "\n".join(lines)


def write_report(runs: Sequence[RunData], out_dir: Path, title: str = "cod-train report",
                 notes: Sequence[str] = (), *, order: str = "run", figures_per: str = "run") -> Path:  # fmt: skip
    """Write ``out_dir/report.md``, ``out_dir/report.json`` and ``out_dir/figures/*.png``; ``notes``: what belongs
    to no single run (models of a joint analysis that are none of the runs). ``order``: run (as given) | flops
    (equal-compute tiers, then perplexity) | ppl; ``figures_per``: run | scheme (one seed per scheme)."""
    from cod_train.report.groups import ordered_runs

    out_dir.mkdir(parents=True, exist_ok=True)
    runs = ordered_runs(runs, summary_rows(runs), order)
    data: dict[str, Any] = {}
    text = render_markdown(runs, out_dir, title, notes, figures_per=figures_per, order=order, data=data)
    (out_dir / "report.md").write_text(text + "\n", encoding="utf-8")
    from cod_train.core.io import atomic_write_json

    atomic_write_json(out_dir / "report.json", {"title": title, "order": order, "runs": summary_rows(runs), **data})
    return out_dir / "report.md"
