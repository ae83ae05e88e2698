"""report.md's "Schemes over seeds" section: per scheme the mean and 95% interval over seeds of every metric,
parameters and training FLOPs, which differences are beyond the seed-to-seed noise, and the figures with one line
per scheme and its band (seed_plots.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cod_train.report import seed_plots, stats
from cod_train.report.groups import (
    CURVES,
    METRICS,
    Group,
    Metric,
    all_pairs,
    compute_tiers,
    curve_band,
    group_summary,
    human,
    loss_band,
    pair_tests,
)
from cod_train.report.runs import SEED_KEYS

DASH = "—"
VERDICT_METRICS = tuple(m for m in METRICS if m.key != "train_loss")
METHOD = (
    "Each scheme is the group of runs that differ only in `seed`; only its complete runs count (failed or stopped "
    "runs are listed, not averaged). Each cell: the mean over seeds and, in brackets, its 95% Student-t interval "
    "(mean ± t(0.975, n−1)·s/√n, s the sample standard deviation over the n seeds), cut to the metric's range "
    "(a share lies in [0, 1]). Signal or noise: for each pair of schemes with at least 2 complete seeds, Welch's "
    "t-test on the seeds' values (unequal variances, Welch–Satterthwaite degrees of freedom); **beyond noise** = "
    "Holm–Bonferroni-adjusted p < 0.05 within its family for that metric. Three families per metric: at each "
    "depth, every scheme against that depth's Pre-LN (the question the study asks; the table), and apart every "
    "other pair of that depth; and the same scheme at two depths. A 12- and a 24-layer model of different schemes "
    "are not compared. This uses the spread over seeds (initialization and data order), not only over "
    "held-out batches. With 3 seeds the test only detects large differences: *within noise* is no evidence of "
    "equality."
)


def cell(found: dict[str, Any] | None, fmt: str) -> str:
    if not found:
        return DASH
    mean = format(found["mean"], fmt)
    if found["lo"] is None:
        return f"{mean} (1 seed)"
    return f"{mean} [{format(found['lo'], fmt)}, {format(found['hi'], fmt)}]"


def _human(n: float | None, digits: int = 2) -> str:
    return human(n, digits)


def group_table(groups: Sequence[Group], summaries: Sequence[dict[str, Any]], order: str) -> list[str]:
    tiers = compute_tiers(groups) if order == "flops" else {}
    cheapest = min((s["train_flops"] for s in summaries if s["train_flops"]), default=None)
    names = " | ".join(m.name for m in METRICS)
    head = f"| scheme | seeds | params | train FLOPs (× cheapest) | tokens | {names} | not complete |"
    if tiers:
        head = "| compute tier " + head
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for group, summary in zip(groups, summaries, strict=True):
        flops = summary["train_flops"]
        ratio = f" (×{flops / cheapest:.2f})" if flops and cheapest else ""
        cells = [cell(summary[m.key], m.fmt) for m in METRICS]
        missing = "; ".join(f"{label}: {status}" for label, status in group.not_complete) or DASH
        row = (f"| {group.name} | {summary['n_complete']} | {_human(summary['params'], 1)} | {_human(flops)}{ratio} "
               f"| {_human(summary['tokens'])} | " + " | ".join(cells) + f" | {missing} |")  # fmt: skip
        lines.append((f"| {tiers.get(group.name) or '?'} " if tiers else "") + row)
    notes = ["", "Seeds: the number of complete runs averaged. Deep-layer share: the share of layers l > L/2 whose "
             "removal raises perplexity by more than 1%; deep-layer removal cost: the median over those layers of "
             "the perplexity increase (%) when one is removed (the same question without the 1% threshold)."]  # fmt: skip
    if tiers:
        notes.append("Compute tier: schemes whose training FLOPs are within 5% of each other (sorted by FLOPs; inside "
                     "a tier by perplexity): compare perplexities at equal compute inside a tier.")  # fmt: skip
    return lines + notes + [""]


def _reference(groups: Sequence[Group]) -> Group:
    """Pre-LN: the group named ``pre_ln``, else of the Pre-LN groups the one whose other settings are the report's
    most common values (``optimizer=adamw`` over ``optimizer=muon``); else the first group."""
    exact = next((g for g in groups if g.name == "pre_ln"), None)
    candidates = [g for g in groups if g.runs[0].variant == "pre_ln"]
    if exact or not candidates:
        return exact or groups[0]
    counts: dict[tuple[str, str], int] = {}
    for g in groups:
        for key, value in g.runs[0].settings.items():
            counts[(key, repr(value))] = counts.get((key, repr(value)), 0) + len(g.runs)
    return max(candidates, key=lambda g: sum(counts[(k, repr(v))] for k, v in g.runs[0].settings.items()
                                             if k not in SEED_KEYS))  # fmt: skip


def _families(groups: Sequence[Group]) -> list[tuple[str, list[Group]]]:
    """The schemes compared with each other: those of one depth (a 12- and a 24-layer model are not two schemes)."""
    depths = by_depth(groups)
    if len(depths) == 1:
        return [("", list(groups))]
    return [(f", {depth}-layer models" if depth else ", depth unknown", members) for depth, members in depths.items()]


def verdict_lines(groups: Sequence[Group]) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Per metric and depth: each scheme against that depth's Pre-LN (one Holm family), then the other pairs of that
    depth beyond noise (another); then each scheme that ran at two depths, deeper against shallower (a third)."""
    lines = ["### Signal or noise over seeds", "", METHOD, ""]
    every: dict[str, list[dict[str, Any]]] = {}
    for metric in VERDICT_METRICS:
        every[metric.key] = []
        for where, members in _families(groups):
            ref = _reference(members)
            others = [g for g in members if g is not ref]
            against = pair_tests([(other, ref) for other in others], metric.key)
            among = pair_tests(all_pairs(others), metric.key)
            depth = where.lstrip(", ") or "all schemes"
            for family, tests in ((f"{depth}: against {ref.name}", against), (f"{depth}: other pairs", among)):
                for test in tests:
                    test["family"] = family
            every[metric.key] += against + among
            if against or among:
                lines += _reference_table(metric, f"#### {metric.name}{where}", ref, against + among)
    deeper = _depth_effects(groups, every)
    if deeper:
        lines += ["#### The same scheme deeper", "", "Each scheme that ran at two depths: the deeper model's mean minus "
                  "the shallower's (Welch over seeds; Holm over this table's pairs of one metric).", "",
                  "| scheme | metric | deeper − shallower [95% CI] | p (Welch) | p (Holm) | verdict |",
                  "|---|---|---|---|---|---|", *deeper, ""]  # fmt: skip
    if not any(every.values()):
        lines += ["_No two schemes have 2 or more complete seeds each: no test over seeds._", ""]
    return lines, every


def _reference_table(metric: Metric, heading: str, ref: Group, tests: list[dict[str, Any]]) -> list[str]:
    lines = [heading, "", f"| scheme | difference to {ref.name} [95% CI] | p (Welch) | p (Holm) | verdict |",
             "|---|---|---|---|---|"]  # fmt: skip
    for test in tests:
        if ref.name not in (test["a"], test["b"]):
            continue
        sign, other = (1.0, test["a"]) if test["b"] == ref.name else (-1.0, test["b"])
        lines.append(_test_cells(other, metric, test, sign))
    others = [t for t in tests if ref.name not in (t["a"], t["b"])]
    beyond = [t for t in others if t["verdict"] == "beyond noise"]
    return lines + ["", f"Other pairs beyond noise ({len(beyond)} of {len(others)}): "
                    + (", ".join(f"{t['a']} vs {t['b']} ({format(t['diff'], metric.fmt)}, p_Holm {t['p_holm']:.2g})"
                                 for t in beyond) or "none") + ".", ""]  # fmt: skip


def _test_cells(first: str, metric: Metric, test: dict[str, Any], sign: float) -> str:
    lo, hi = sorted((sign * test["lo"] + 0.0, sign * test["hi"] + 0.0))  # + 0.0: no "-0.00"
    return (f"| {first} | {format(sign * test['diff'] + 0.0, metric.fmt)} [{format(lo, metric.fmt)}, "
            f"{format(hi, metric.fmt)}] | {test['p']:.3g} | {test['p_holm']:.3g} | {test['verdict']} |")


def _depth_effects(groups: Sequence[Group], every: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rows (and report.json entries, family "deeper") for the groups that differ only in their depth."""
    by_scheme: dict[str, list[Group]] = {}
    for group in groups:
        by_scheme.setdefault(_without_depth(group.name, group.runs[0].num_layers), []).append(group)
    pairs = [(name, sorted(gs, key=lambda g: g.runs[0].num_layers or 0)) for name, gs in by_scheme.items()
             if len(gs) == 2 and None not in (g.runs[0].num_layers for g in gs)]  # fmt: skip
    scheme_of = {pair[1].name: name for name, pair in pairs}
    rows = []
    for metric in VERDICT_METRICS:
        tests = pair_tests([(deep, shallow) for _, (shallow, deep) in pairs], metric.key)
        for test in tests:
            test["family"] = "deeper"
            rows.append(_test_cells(f"{scheme_of[test['a']]} | {metric.name}", metric, test, 1.0))
        every[metric.key] += tests
    return rows


def _figure(lines: list[str], path: Path | None, name: str, caption: str) -> None:
    lines += ([f"![{name}](figures/{name}.png)", "", caption, ""] if path else [])


def by_depth(groups: Sequence[Group]) -> dict[int | None, list[Group]]:
    out: dict[int | None, list[Group]] = {}
    for group in groups:
        out.setdefault(group.runs[0].num_layers, []).append(group)
    return out


MAX_SCHEMES_PER_FIGURE = 8  # more bands than this on one panel are not readable at a glance


def figure_parts(members: Sequence[Group]) -> list[list[Group]]:
    """The schemes of one depth split into figures of at most MAX_SCHEMES_PER_FIGURE: the reference (Pre-LN) in
    each, the others in report order, split evenly."""
    if len(members) <= MAX_SCHEMES_PER_FIGURE:
        return [list(members)]
    ref = _reference(members)
    others = [g for g in members if g is not ref]
    size = math.ceil(len(others) / math.ceil(len(others) / (MAX_SCHEMES_PER_FIGURE - 1)))
    return [[ref, *others[i : i + size]] for i in range(0, len(others), size)]


def short_names(groups: Sequence[Group]) -> dict[str, str]:
    """Figure labels: each scheme without the settings at the report's most common value (``optimizer=adamw``
    when most runs use AdamW); a label that would then be ambiguous keeps its full name. The tables keep it too."""
    counts: dict[str, dict[str, int]] = {}
    for group in groups:
        for word in group.name.split()[1:]:
            key, _, value = word.partition("=")
            counts.setdefault(key, {})[value] = counts.setdefault(key, {}).get(value, 0) + len(group.runs)
    common = {f"{k}={max(values, key=lambda v: values[v])}" for k, values in counts.items() if len(values) > 1}
    short = {g.name: " ".join(w for i, w in enumerate(g.name.split()) if i == 0 or w not in common) for g in groups}
    clash = {v for v in short.values() if list(short.values()).count(v) > 1}
    return {name: name if label in clash else label for name, label in short.items()}


def figures(groups: Sequence[Group], fig_dir: Path, summaries: Sequence[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    short = short_names(groups)
    entries = [{"label": short[g.name], "intervals": {m.key: s[m.key] for m in METRICS}, "values": s["values"]}
               for g, s in zip(groups, summaries, strict=True)]  # fmt: skip
    shown = [(m.key, m.name) for m in METRICS if m.key != "train_loss"]
    path = seed_plots.plot_metric_intervals(entries, shown, fig_dir / "seed_metrics.png", "Each scheme over seeds")
    omitted = sorted({w for name, label in short.items() for w in name.split()[1:] if w not in label.split()})
    _figure(lines, path, "seed_metrics", "Each scheme's metrics: mean, 95% t-interval over seeds, every seed"
            + (f" (labels omit the common settings: {', '.join(omitted)})." if omitted else "."))  # fmt: skip
    for depth, members in by_depth(groups).items():
        parts = figure_parts(members)
        for part, chunk in enumerate(parts, start=1):
            lines += depth_figures(chunk, fig_dir, depth, (part, len(parts)), short)
    return lines


def depth_figures(members: Sequence[Group], fig_dir: Path, depth: int | None, part: tuple[int, int],
                  short: dict[str, str]) -> list[str]:  # fmt: skip
    """The loss and per-layer curves over seeds of ``members`` (one depth; ``part`` k of n of its schemes;
    ``short``: the figure label of each scheme)."""
    lines: list[str] = []
    suffix = (f"_L{depth}" if depth else "") + (f"_{part[0]}" if part[1] > 1 else "")
    where = (f"{depth}-layer models" if depth else "models") + (f", part {part[0]} of {part[1]}" if part[1] > 1 else "")
    label = {g.name: _without_depth(short[g.name], depth) for g in members}
    which = f" ({', '.join(label.values())})" if part[1] > 1 else ""
    loss = [{"label": label[g.name], "train": loss_band(g, "train"), "eval": loss_band(g, "eval")} for g in members]
    path = seed_plots.plot_seed_loss(loss, fig_dir / f"seed_loss{suffix}.png", f"Loss over seeds, {where}")
    _figure(lines, path, f"seed_loss{suffix}", f"Training and held-out loss, {where}{which}: seeds' mean and band.")
    curves = [{"label": label[g.name], "curves": {stem: curve_band(g, stem, key) for stem, key, *_ in CURVES}}
              for g in members]  # fmt: skip
    path = seed_plots.plot_seed_curves(curves, CURVES, fig_dir / f"seed_curves{suffix}.png",
                                       f"Per-layer depth diagnostics over seeds, {where} (cod-analyze)")  # fmt: skip
    _figure(lines, path, f"seed_curves{suffix}", f"Per-layer curves, {where}{which}: the seeds' mean per scheme with "
            "its 95% t-interval band (cut to the metric's range; output variance: the geometric mean and the "
            "interval of the log, as seeds differ by factors); dashed line in the pruning panel: the 1% "
            "depth-utilization threshold.")  # fmt: skip
    return lines


def _without_depth(name: str, depth: int | None) -> str:
    """A scheme's label inside one depth's figures: the depth is in the title, not repeated per line."""
    return " ".join(w for w in name.split() if w != f"num_hidden_layers={depth}") or name


def groups_section(groups: Sequence[Group], fig_dir: Path, order: str,
                   on_data: Callable[[dict[str, Any]], None]) -> list[str]:  # fmt: skip
    """The section's lines; ``on_data`` receives report.json's ``groups`` and ``pair_tests``."""
    summaries = [group_summary(g) for g in groups]
    lines = ["## Schemes over seeds", "", f"Interval: Student-t, {stats.CONFIDENCE:.0%}, over each scheme's complete "
             "seeds (method below).", ""]  # fmt: skip
    lines += group_table(groups, summaries, order)
    verdicts, tests = verdict_lines(groups)
    lines += figures(groups, fig_dir, summaries) + verdicts
    on_data({"groups": summaries, "pair_tests": tests})
    return lines
