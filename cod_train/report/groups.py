"""Runs grouped over seeds: a scheme's mean and 95% interval per metric, and which differences are beyond noise.

A group is the runs whose labels differ only in ``seed`` (``RunData.group``). Only its complete runs count
(not failed, not stopped early); the others are counted apart. Per metric: the mean over seeds with its Student-t
95% interval (stats.t_interval, cut to the metric's range), the number of seeds; per pair of groups: Welch's
t-test over the seeds' values, Holm-corrected over the pairs of one family (:func:`pair_tests`; the families are
render_groups.verdict_lines'). Per-layer curves: the mean and t-interval over seeds at each layer (GEOMETRIC
curves: over the logs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cod_train.report import stats
from cod_train.report.runs import RunData


def human(n: float | None, digits: int = 1) -> str:
    """A count with a unit: 4.5M, 44.44B, 1.2T (—: unknown)."""
    if n is None:
        return "—"
    for unit, scale in (("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return f"{n:.0f}"


@dataclass(frozen=True)
class Metric:
    key: str  # a key of render.summary_rows' rows
    name: str
    fmt: str
    lower_is_better: bool
    bounds: tuple[float, float] = (-math.inf, math.inf)  # the metric's range: the interval shown is cut to it


SHARE = (0.0, 1.0)
METRICS = (
    Metric("eval_ppl", "held-out perplexity", ".2f", True, (1.0, math.inf)),
    Metric("downstream_avg", "downstream avg accuracy (%)", ".1f", False, (0.0, 100.0)),
    Metric("depth_utilization", "depth utilization", ".2f", False, SHARE),
    Metric("deep_utilization", "deep-layer share", ".2f", False, SHARE),
    Metric("deep_prune_pct", "deep-layer removal cost (median %)", ".2f", False),
    Metric("settling_depth", "settling depth", ".2f", False, SHARE),
    Metric("train_loss", "last train loss", ".3f", True, (0.0, math.inf)),
)
CURVES = (  # (analysis file, field, axis label): the per-layer curves drawn with bands over seeds
    ("layer_pruning", "delta_ppl_pct", "perplexity increase without layer l (%)"),
    ("block_influence", "bi", "Block Influence 1 - cos(h_{l-1}, h_l)"),
    ("logit_lens", "top1", "logit-lens top-1 agreement with the output (fraction)"),
    ("layer_variance", "layer_var", "output variance after layer l"),
)
BOUNDS = {"logit_lens": (0.0, 1.0), "block_influence": (0.0, 2.0)}  # a band is drawn inside the metric's range
GEOMETRIC = frozenset({"layer_variance"})  # seeds differ by factors: geometric mean, interval over the logs
EQUAL_FLOPS = 0.05  # groups whose training FLOPs are within 5% of a tier's cheapest are compared at equal compute


@dataclass
class Group:
    name: str
    runs: list[RunData] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # render.summary_rows of the same runs

    @property
    def complete(self) -> list[tuple[RunData, dict[str, Any]]]:
        return [(r, row) for r, row in zip(self.runs, self.rows, strict=True) if row["status"] == "complete"]

    def values(self, key: str) -> list[float]:
        """The metric of each complete run that has it, from one measurement: where some seeds have cod-eval's
        (``eval.json``) and others only an in-training evaluation (other tokens), cod-eval's alone."""
        rows = [row for _, row in self.complete if row.get(key) is not None]
        sources = {row.get(f"{key}_source") for row in rows}
        if len(sources) > 1 and "eval.json" in sources:
            rows = [row for row in rows if row.get(f"{key}_source") == "eval.json"]
        return [float(row[key]) for row in rows]

    def interval(self, key: str) -> stats.Interval | None:
        values = self.values(key)
        return stats.t_interval(values) if values else None

    def common(self, key: str) -> float | None:
        """A value every complete run shares (params, FLOPs, tokens): the mean of those known."""
        values = self.values(key)
        return stats.mean(values) if values else None

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r, _ in self.complete]

    @property
    def not_complete(self) -> list[tuple[str, str]]:
        """(run label, status) of the runs left out of the means: failed or stopped early."""
        return [(r.label, row["status"]) for r, row in zip(self.runs, self.rows, strict=True)
                if row["status"] != "complete"]  # fmt: skip


def group_runs(runs: Sequence[RunData], rows: Sequence[dict[str, Any]]) -> list[Group]:
    """Groups in the order of their first run."""
    groups: dict[str, Group] = {}
    for run, row in zip(runs, rows, strict=True):
        group = groups.setdefault(run.group or run.label, Group(run.group or run.label))
        group.runs.append(run)
        group.rows.append(row)
    return list(groups.values())


def has_seeds(groups: Sequence[Group]) -> bool:
    return any(len(g.runs) > 1 for g in groups)


# ---------------------------------------------------------------------- order
ORDERS = ("run", "flops", "ppl")


def _ppl_key(group: Group) -> float:
    found = group.interval("eval_ppl")
    return found.mean if found else float("inf")


def compute_tiers(groups: Sequence[Group]) -> dict[str, int]:
    """Equal-compute tiers: sorted by training FLOPs, a group joins the current tier while its FLOPs are within
    EQUAL_FLOPS of the tier's cheapest; groups without a count get tier 0 (unknown)."""
    known = sorted((g for g in groups if g.common("train_flops")), key=lambda g: g.common("train_flops") or 0.0)
    tiers: dict[str, int] = {g.name: 0 for g in groups}
    tier, floor = 0, None
    for group in known:
        flops = group.common("train_flops") or 0.0
        if floor is None or flops > floor * (1.0 + EQUAL_FLOPS):
            tier, floor = tier + 1, flops
        tiers[group.name] = tier
    return tiers


def order_groups(groups: Sequence[Group], order: str) -> list[Group]:
    """``run``: as given; ``flops``: by equal-compute tier, then perplexity inside a tier; ``ppl``: perplexity."""
    if order == "flops":
        tiers = compute_tiers(groups)
        return sorted(groups, key=lambda g: (tiers[g.name] or len(groups) + 1, _ppl_key(g)))
    if order == "ppl":
        return sorted(groups, key=_ppl_key)
    return list(groups)


def ordered_runs(runs: Sequence[RunData], rows: Sequence[dict[str, Any]], order: str) -> list[RunData]:
    """The runs, group by group in ``order`` (each group's runs in their own order)."""
    return [r for g in order_groups(group_runs(runs, rows), order) for r in g.runs]


# ---------------------------------------------------------------------- signal or noise
def all_pairs(groups: Sequence[Group]) -> list[tuple[Group, Group]]:
    return [(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :]]


def pair_tests(pairs: Sequence[tuple[Group, Group]], key: str) -> list[dict[str, Any]]:
    """Of ``pairs`` (one Holm family), those with at least 2 complete seeds on each side: Welch's test of a - b on
    ``key`` over the seeds, with the Holm-adjusted p-value over these pairs and the verdict."""
    tests: list[dict[str, Any]] = []
    for a, b in pairs:
        found = stats.welch(a.values(key), b.values(key))
        if found is not None:
            tests.append({"a": a.name, "b": b.name, "diff": found.diff, "lo": found.lo, "hi": found.hi,
                          "t": found.t, "df": found.df, "p": found.p})  # fmt: skip
    testable = [t for t in tests if not math.isnan(t["p"])]  # the family Holm corrects over
    for test, adjusted in zip(testable, stats.holm([t["p"] for t in testable]), strict=True):
        test["p_holm"] = adjusted
    for test in tests:
        test.setdefault("p_holm", math.nan)
        test["verdict"] = verdict(test["p"], test["p_holm"])
    return tests


def verdict(p: float, p_holm: float) -> str:
    if math.isnan(p):
        return "untestable: no spread over seeds in either"
    if p_holm < stats.ALPHA:
        return "beyond noise"
    if p < stats.ALPHA:
        return "p < 0.05 before correction only"
    return "within noise"


# ---------------------------------------------------------------------- per-layer curves over seeds
def _final_entry(run: RunData, stem: str) -> dict[str, Any] | None:
    entries = run.analysis.get(stem) or []
    return max(entries, key=lambda e: e.get("step") or -1, default=None)


def curve_band(group: Group, stem: str, key: str) -> dict[str, Any] | None:
    """Mean and t-interval over the complete seeds at each layer of ``analysis/<stem>.json``'s ``key`` (the
    analysed model of the latest step; for GEOMETRIC stems the geometric mean and the interval over the logs);
    None unless every such seed has the curve at the same layers."""
    curves = [e for e in (_final_entry(r, stem) for r, _ in group.complete) if e and e.get(key)]
    if not curves or len({len(c[key]) for c in curves}) != 1:
        return None
    n = len(curves[0][key])
    first = 0 if stem == "logit_lens" else 1  # the lens starts at the embedding (layer 0)
    layers = curves[0].get("layers") if isinstance(curves[0].get("layers"), list) else list(range(first, first + n))
    out: dict[str, Any] = {"layers": layers, "mean": [], "lo": [], "hi": [], "n": len(curves)}
    for i in range(n):
        values = [float(c[key][i]) for c in curves if c[key][i] is not None]
        geometric = stem in GEOMETRIC and all(v > 0 for v in values)
        found = (stats.log_t_interval if geometric else stats.t_interval)(values) if values else None
        out["mean"].append(found.mean if found else None)
        out["lo"].append(found.lo if found else None)
        out["hi"].append(found.hi if found else None)
    return out


def loss_band(group: Group, kind: str) -> dict[str, Any] | None:
    """Mean and t-interval over the complete seeds of the training (``kind="train"``) or eval loss at each step
    every seed logged; x is the tokens seen (steps when a run lacks tokens)."""
    source, key = ("train", "loss") if kind == "train" else ("evals", "eval_loss")
    per_run = [{r["step"]: r for r in getattr(run, source) if r.get(key) is not None} for run, _ in group.complete]
    if not per_run:
        return None
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    if not steps:
        return None
    tokens = [per_run[0][s].get("tokens") or _tokens_at(group.complete[0][0], s) for s in steps]
    use_tokens = None not in tokens
    out: dict[str, Any] = {"x": tokens if use_tokens else steps, "tokens": use_tokens,
                           "mean": [], "lo": [], "hi": [], "n": len(per_run)}  # fmt: skip
    for step in steps:
        found = stats.t_interval([float(p[step][key]) for p in per_run])
        out["mean"].append(found.mean)
        out["lo"].append(found.lo)
        out["hi"].append(found.hi)
    return out


def _tokens_at(run: RunData, step: int) -> int | None:
    """Tokens seen by ``step`` (eval rows name the step only): the train row of that step, else the last train
    row's tokens per step x step (a constant batch)."""
    rows = [r for r in run.train if r.get("tokens") is not None and r.get("step")]
    exact = [r["tokens"] for r in rows if r["step"] == step]
    if exact:
        return int(exact[0])
    return round(rows[-1]["tokens"] / rows[-1]["step"] * step) if rows else None


def _within(found: stats.Interval, bounds: tuple[float, float]) -> stats.Interval:
    """The t-interval cut to the metric's range (3 seeds of a share 0, 0, 1 give [-0.43, 1.10]: shown [0, 1])."""
    if found.lo is None or found.hi is None:
        return found
    lo, hi = bounds
    return stats.Interval(found.mean, min(max(found.lo, lo), hi), min(max(found.hi, lo), hi), found.n)


def group_summary(group: Group) -> dict[str, Any]:
    """report.json's entry of one group."""
    return {
        "group": group.name, "runs": [r.label for r in group.runs], "seeds": group.seeds,
        "n_complete": len(group.complete), "not_complete": [list(x) for x in group.not_complete],
        "params": group.common("params"), "train_flops": group.common("train_flops"),
        "flops_per_token": group.common("flops_per_token"), "tokens": group.common("tokens"),
        **{m.key: (_within(found, m.bounds).as_dict() if (found := group.interval(m.key)) else None) for m in METRICS},
        "values": {m.key: group.values(m.key) for m in METRICS},
    }  # fmt: skip
