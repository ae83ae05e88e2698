"""cod-report over seeds: runs that differ only in `seed` are one scheme, with means, t-intervals, the Welch verdict,
training FLOPs, the order at equal FLOPs and failed runs listed as failed. Hand-made run directories, no training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cod_train.report import collect, write_report

D, F, LAYERS, HEADS, VOCAB, SEQ = 64, 128, 2, 4, 100, 32
STEPS, TOKENS_PER_STEP = 10, 128


def model_config(norm: str, residual: str = "plain") -> dict:
    return {"model_type": "cod_llama", "hidden_size": D, "intermediate_size": F, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": VOCAB, "norm_type": norm,
            "residual": residual, "tie_word_embeddings": False}  # fmt: skip


def make_run(root: Path, name: str, norm: str, seed: int, ppl: float, *, residual: str = "plain",
             depth_pct: tuple[float, float] = (5.0, 0.5)) -> Path:  # fmt: skip
    run = root / name
    (run / "hf").mkdir(parents=True)
    model = {"name": "tiny", "norm_type": norm, "residual": residual, "num_hidden_layers": LAYERS}
    (run / "config.yaml").write_text(json.dumps({"model": model, "seed": seed, "data": {"seq_len": SEQ},
                                                 "train": {"max_steps": STEPS}}))  # fmt: skip
    rows = [{"step": s, "loss": 5.0 - 0.1 * s + 0.01 * seed, "tokens": s * TOKENS_PER_STEP} for s in range(1, STEPS + 1)]
    rows.append({"step": STEPS, "eval_loss": math.log(ppl), "eval_ppl": ppl})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "hf" / "config.json").write_text(json.dumps(model_config(norm, residual)))
    (run / "eval.json").write_text(json.dumps({"step": STEPS, "perplexity": {"eval_loss": math.log(ppl), "eval_ppl": ppl}}))
    (run / "analysis").mkdir()
    entry = {"label": name, "run_dir": str(run.resolve()), "step": STEPS, "num_layers": LAYERS}
    pruning = {**entry, "base_ppl": ppl, "layers": [1, 2], "ppl": [ppl * (1 + p / 100) for p in depth_pct],
               "delta_ppl_pct": list(depth_pct)}  # fmt: skip
    (run / "analysis" / "layer_pruning.json").write_text(json.dumps({"models": [pruning]}))
    return run


def failed_run(root: Path, name: str, code: int, config: dict | None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "failed.json").write_text(json.dumps({"command": "pretrain", "exit_code": code, "config": config,
                                                 "error": "stopped after 5 non-finite losses in a row"}))  # fmt: skip
    return run


PPL = {"pre_ln": (30.0, 31.0, 32.0), "lns": (20.0, 20.5, 21.0), "mix_ln": (30.5, 31.5, 33.0)}


@pytest.fixture
def study(tmp_path) -> Path:
    root = tmp_path / "runs"
    for norm, ppls in PPL.items():
        for seed, ppl in enumerate(ppls, start=1):
            make_run(root, f"{norm}-s{seed}", norm, seed, ppl)
    for seed, ppl in enumerate((29.0, 30.0, 31.0), start=1):
        make_run(root, f"mhc-s{seed}", "pre_ln", seed, ppl, residual="mhc")
    return root


def _report(root: Path, out: Path, **kwargs) -> tuple[str, dict]:
    found = collect([str(root)])
    write_report(found.runs, out, **kwargs)
    return (out / "report.md").read_text(), json.loads((out / "report.json").read_text())


def _row(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_runs_that_differ_only_in_seed_are_one_scheme(study, tmp_path):
    runs = collect([str(study)]).runs
    assert {r.label for r in runs if r.group == "pre_ln"} == {"pre_ln seed=1", "pre_ln seed=2", "pre_ln seed=3"}
    assert sorted({r.group for r in runs}) == ["lns", "mix_ln", "pre_ln", "pre_ln+mhc4"]
    text, data = _report(study, tmp_path / "out")
    # pre_ln: 30, 31, 32 -> mean 31, s = 1, half = t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    assert "| pre_ln | 3 |" in text and "| 31.00 [28.52, 33.48] |" in _row(text, "| pre_ln | 3 |")
    group = next(g for g in data["groups"] if g["group"] == "pre_ln")
    assert group["eval_ppl"] == pytest.approx({"mean": 31.0, "lo": 31.0 - 2.484138, "hi": 31.0 + 2.484138, "n": 3})
    assert group["seeds"] == [1, 2, 3]
    # depth utilization: removing layer 1 costs 5% (> 1%), layer 2 0.5%: 1 of 2; deep half (layer 2): 0 of 1
    assert group["depth_utilization"]["mean"] == 0.5 and group["deep_utilization"]["mean"] == 0.0
    assert group["deep_prune_pct"]["mean"] == pytest.approx(0.5)  # the deep half is layer 2 alone: 0.5%


def test_the_verdict_uses_the_spread_over_seeds(study, tmp_path):
    text, data = _report(study, tmp_path / "out")
    tests = {frozenset((t["a"], t["b"])): t for t in data["pair_tests"]["eval_ppl"]}
    # lns vs pre_ln: diff -10.5, se^2 = 1/3 + 0.25/3, t = -16.27 on ~2.9 df: p ~ 6e-4, x3 against Pre-LN (Holm) < 0.05
    far = tests[frozenset(("pre_ln", "lns"))]
    assert abs(far["t"]) == pytest.approx(10.5 / math.sqrt(1 / 3 + 0.25 / 3), rel=1e-6)
    assert far["verdict"] == "beyond noise" and far["p_holm"] < 0.05
    near = tests[frozenset(("pre_ln", "mix_ln"))]  # 31 vs 31.67 with s 1 and 1.26: within the seeds' spread
    assert near["verdict"] == "within noise" and near["p"] > 0.4
    assert "| lns | -10.50 [" in text and "beyond noise |" in _row(text, "| lns | -10.50 [")
    assert "Welch's t-test" in text and "Holm" in text  # the method is stated


def test_training_flops_by_hand_and_order_at_equal_flops(study, tmp_path):
    # plain: 6 x (L (4 d^2 + 3 d f) + V d) + 12 L d T per token, x the 10 x 128 tokens trained on
    per_token = 6 * (LAYERS * (4 * D * D + 3 * D * F) + VOCAB * D) + 12 * LAYERS * D * SEQ
    text, data = _report(study, tmp_path / "out", order="flops")
    row = next(r for r in data["runs"] if r["run"] == "pre_ln seed=1")
    assert row["flops_per_token"] == per_token and row["train_flops"] == per_token * STEPS * TOKENS_PER_STEP
    mhc = next(r for r in data["runs"] if r["run"].startswith("pre_ln+mhc4"))
    assert mhc["train_flops"] > row["train_flops"] and mhc["params"] > row["params"]  # the streams' mixing
    # order=flops: the three plain schemes share compute tier 1, by perplexity; mHC costs more: tier 2
    assert [g["group"] for g in data["groups"]] == ["lns", "pre_ln", "mix_ln", "pre_ln+mhc4"]
    assert _row(text, "| 1 | lns |") and _row(text, "| 2 | pre_ln+mhc4 |")
    human = f"{per_token * STEPS * TOKENS_PER_STEP / 1e6:.2f}M"
    assert f"| {human} (×1.00) |" in _row(text, "| 1 | pre_ln |")
    assert f"| {human} |" in _row(text, "| pre_ln seed=1 |")  # the per-run table has the column too


def test_a_failed_run_is_listed_as_failed_not_missing(study, tmp_path):
    config = {"model": {"name": "tiny", "norm_type": "pre_ln", "num_hidden_layers": LAYERS}, "seed": 4,
              "data": {"seq_len": SEQ}, "train": {"max_steps": STEPS}}  # fmt: skip
    failed_run(study, "pre_ln-s4", 3, config)  # diverged before writing anything but failed.json
    failed_run(study, "zzz-broken", 1, None)  # not even a config
    text, data = _report(study, tmp_path / "out")
    row = _row(text, "| pre_ln | 3 |")  # 3 complete seeds averaged; the fourth listed
    assert "pre_ln seed=4: failed (pretrain, exit 3)" in row
    missing = text.split("## Missing or partial files")[1].split("\n## ")[0]
    assert "- **pre_ln seed=4**: **failed (pretrain, exit 3)**: stopped after 5 non-finite losses in a row" in missing
    assert "- **zzz-broken**: **failed (pretrain, exit 1)**" in missing
    assert "seed=4**: no " not in missing  # its absent files are not listed as missing
    assert "2 failed" in text.splitlines()[2]
    group = next(g for g in data["groups"] if g["group"] == "pre_ln")
    assert group["n_complete"] == 3 and group["not_complete"] == [["pre_ln seed=4", "failed (pretrain, exit 3)"]]


def test_many_schemes_are_drawn_in_readable_parts_each_with_pre_ln(tmp_path, monkeypatch):
    """Ten schemes: the curves over seeds come in two figures of at most 8 schemes (Pre-LN and 4 + 5 others,
    split evenly in report order), each scheme in exactly one part, Pre-LN in both as the reference, one legend
    entry and one colour per scheme in each."""
    from cod_train.report import plots

    norms = ["pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "peri_ln", "sandwich_ln", "hybrid_ln", "reordered_ln"]
    root = tmp_path / "runs"
    for idx, norm in enumerate(norms):
        for seed in (1, 2):
            make_run(root, f"{norm}-s{seed}", norm, seed, 30.0 + idx + seed)
    for seed in (1, 2):
        make_run(root, f"mhc-s{seed}", "pre_ln", seed, 25.0 + seed, residual="mhc")
    drawn: dict = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.__setitem__(path.stem, fig), save(fig, path))[1])
    text, _ = _report(root, tmp_path / "out")
    legends = {name: [t.get_text().split(" (n=")[0] for legend in fig.legends for t in legend.get_texts()]
               for name, fig in drawn.items() if name.startswith("seed_curves")}  # fmt: skip
    assert sorted(legends) == ["seed_curves_L2_1", "seed_curves_L2_2"]
    parts = [legends["seed_curves_L2_1"], legends["seed_curves_L2_2"]]
    assert [p[0] for p in parts] == ["pre_ln", "pre_ln"] and sorted(len(p) for p in parts) == [5, 6]
    others = [name for p in parts for name in p[1:]]
    assert sorted(others) == sorted([*norms[1:], "pre_ln+mhc4"])  # every scheme once (mhc: 4 streams)
    for name in ("seed_curves_L2_1", "seed_curves_L2_2", "seed_loss_L2_1", "seed_loss_L2_2"):
        assert f"![{name}](figures/{name}.png)" in text and (tmp_path / "out" / "figures" / f"{name}.png").is_file()
    fig = drawn["seed_curves_L2_1"]
    colours = [handle.get_color() for legend in fig.legends for handle in legend.legend_handles]
    assert len(set(colours)) == len(colours)


def test_a_seed_without_cod_eval_does_not_mix_its_in_training_perplexity_in(study, tmp_path):
    """lns seed 3 trained but not yet evaluated by cod-eval: its in-training perplexity (other tokens) is not
    averaged with the other seeds' cod-eval perplexities; the mean is over seeds 1 and 2 (hand: 20.25)."""
    run = study / "lns-s3"
    (run / "eval.json").unlink()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows[-1] = {"step": STEPS, "eval_loss": math.log(99.0), "eval_ppl": 99.0}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, data = _report(study, tmp_path / "out")
    lns = next(g for g in data["groups"] if g["group"] == "lns")
    assert lns["values"]["eval_ppl"] == [20.0, 20.5] and lns["eval_ppl"]["mean"] == pytest.approx(20.25)


def test_variance_band_is_geometric_and_figure_labels_leave_the_depth_to_the_title(tmp_path, monkeypatch):
    """Layer output variance differs by factors between seeds (1, 10, 100 at layer 1): the curve is the geometric
    mean (10) with the t-interval of the logs (hand: 10 exp(-/+ 4.302653 ln 10 / sqrt 3)), positive where the plain
    t-interval reaches below zero. Runs of two depths: the per-depth figures' legends name the scheme without the
    depth their title gives."""
    from cod_train.report import groups as groups_mod
    from cod_train.report import plots
    from cod_train.report.render import summary_rows

    root = tmp_path / "runs"
    for depth in (LAYERS, 4):
        for seed, var in zip((1, 2, 3), (1.0, 10.0, 100.0), strict=True):
            run = make_run(root, f"pre_ln-L{depth}-s{seed}", "pre_ln", seed, 30.0 + seed)
            cfg = json.loads((run / "config.yaml").read_text())
            cfg["model"]["num_hidden_layers"] = depth
            (run / "config.yaml").write_text(json.dumps(cfg))
            (run / "hf" / "config.json").write_text(json.dumps({**model_config("pre_ln"), "num_hidden_layers": depth}))
            entry = {"label": run.name, "run_dir": str(run.resolve()), "step": STEPS, "num_layers": depth,
                     "layer_var": [var * (layer + 1) for layer in range(depth)]}  # fmt: skip
            (run / "analysis" / "layer_variance.json").write_text(json.dumps({"models": [entry]}))
    found = collect([str(root)])
    shallow = [g for g in groups_mod.group_runs(found.runs, summary_rows(found.runs)) if g.runs[0].num_layers == LAYERS]
    assert len(shallow) == 1 and len(shallow[0].complete) == 3
    band = groups_mod.curve_band(shallow[0], "layer_variance", "layer_var")
    half = 4.302653 * math.log(10) / math.sqrt(3)
    assert band["mean"][0] == pytest.approx(10.0)
    assert band["lo"][0] == pytest.approx(10.0 * math.exp(-half), rel=1e-6)
    assert band["hi"][0] == pytest.approx(10.0 * math.exp(half), rel=1e-6)
    drawn: dict = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.__setitem__(path.stem, fig), save(fig, path))[1])
    write_report(found.runs, tmp_path / "out")
    for depth in (LAYERS, 4):
        legend = [t.get_text() for legend in drawn[f"seed_curves_L{depth}"].legends for t in legend.get_texts()]
        assert legend == ["pre_ln (n=3)"]
    assert "pre_ln num_hidden_layers=4" in (tmp_path / "out" / "report.md").read_text()  # the table keeps it


def _set_config(run: Path, depth: int, optimizer: str = "adamw") -> None:
    cfg = json.loads((run / "config.yaml").read_text())
    cfg["model"]["num_hidden_layers"] = depth
    cfg["train"]["optimizer"] = optimizer
    (run / "config.yaml").write_text(json.dumps(cfg))
    hf = json.loads((run / "hf" / "config.json").read_text())
    (run / "hf" / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": depth}))


def test_schemes_are_tested_within_their_depth_and_against_that_depths_adamw_pre_ln(tmp_path):
    """Two depths, three schemes each (Pre-LN with AdamW, Pre-LN with Muon, LNS): at each depth the two schemes
    against Pre-LN are one family (Holm: the smaller p times 2) and their own pair another; the reference is Pre-LN
    with the common optimizer even where Muon comes first; no 2-layer scheme is tested against a 4-layer one except
    as the same scheme deeper (hand: Pre-LN 4 layers minus 2 layers = (39 + 40 + 41.5) / 3 - 31 = 9.17)."""
    from cod_train.report import stats

    root = tmp_path / "runs"
    ppl = {(2, "pre_ln", "muon"): (20.0, 21.0, 22.5), (2, "pre_ln", "adamw"): (30.0, 31.0, 32.0),
           (2, "lns", "adamw"): (25.0, 26.0, 28.0), (4, "pre_ln", "muon"): (18.0, 19.0, 21.0),
           (4, "pre_ln", "adamw"): (39.0, 40.0, 41.5), (4, "lns", "adamw"): (24.0, 24.5, 26.0)}  # fmt: skip
    for (depth, norm, opt), values in ppl.items():
        for seed, value in enumerate(values, start=1):
            _set_config(make_run(root, f"{norm}-{opt}-L{depth}-s{seed}", norm, seed, value), depth, opt)
    text, data = _report(root, tmp_path / "out")
    tests = data["pair_tests"]["eval_ppl"]
    for depth in (2, 4):
        ref = f"pre_ln num_hidden_layers={depth} optimizer=adamw"
        family = [t for t in tests if t["family"] == f"{depth}-layer models: against {ref}"]
        assert len(family) == 2 and all(t["b"] == ref for t in family)
        assert all(f"num_hidden_layers={depth}" in t["a"] for t in family)
        assert [t["p_holm"] for t in family] == pytest.approx(stats.holm([t["p"] for t in family]))
        assert min(t["p_holm"] for t in family) == pytest.approx(min(1.0, 2 * min(t["p"] for t in family)))
        (other,) = [t for t in tests if t["family"] == f"{depth}-layer models: other pairs"]
        assert {other["a"], other["b"]} == {f"pre_ln num_hidden_layers={depth} optimizer=muon",
                                            f"lns num_hidden_layers={depth} optimizer=adamw"}  # fmt: skip
        assert other["p_holm"] == other["p"]  # a family of one
        assert f"#### held-out perplexity, {depth}-layer models" in text
        heading = text.split(f"#### held-out perplexity, {depth}-layer models")[1].split("\n\n")[1]
        assert f"difference to pre_ln num_hidden_layers={depth} optimizer=adamw [95% CI]" in heading
    deeper = {t["b"]: t for t in tests if t["family"] == "deeper"}
    assert len(deeper) == 3
    pre = deeper["pre_ln num_hidden_layers=2 optimizer=adamw"]
    assert pre["a"] == "pre_ln num_hidden_layers=4 optimizer=adamw"
    assert pre["diff"] == pytest.approx((39.0 + 40.0 + 41.5) / 3 - 31.0)
    assert "| pre_ln optimizer=adamw | held-out perplexity | 9.17 [" in text


def test_a_shares_interval_is_cut_to_zero_and_one(tmp_path):
    """Depth utilization 0, 0, 1 over 3 seeds (removing a layer costs 0.5%, 0.5%, then 5% at both layers): mean 1/3,
    t-interval 1/3 -/+ 4.302653 * 0.57735 / sqrt 3 = [-1.10, 1.77], shown as [0, 1]; the perplexity's stays as is."""
    root = tmp_path / "runs"
    for seed, pct in zip((1, 2, 3), ((0.5, 0.5), (0.5, 0.5), (5.0, 5.0)), strict=True):
        make_run(root, f"pre_ln-s{seed}", "pre_ln", seed, 30.0 + seed, depth_pct=pct)
    _, data = _report(root, tmp_path / "out")
    group = data["groups"][0]
    assert group["depth_utilization"] == {"mean": pytest.approx(1 / 3), "lo": 0.0, "hi": 1.0, "n": 3}
    half = 4.302653 * 1.0 / math.sqrt(3)  # s of 30+1, 30+2, 30+3 is 1
    assert group["eval_ppl"]["lo"] == pytest.approx(32.0 - half, rel=1e-6)


def test_figure_labels_omit_the_common_settings_unless_ambiguous(tmp_path):
    """Four runs with AdamW, two with Muon, at two depths: figure labels drop optimizer=adamw (the common value)
    but keep optimizer=muon; the 2-layer models are the common depth, so only the 4-layer label names its depth."""
    from cod_train.report import groups as groups_mod
    from cod_train.report.render import summary_rows
    from cod_train.report.render_groups import short_names

    root = tmp_path / "runs"
    for name, depth, opt in (("a", 2, "adamw"), ("b", 2, "adamw"), ("c", 2, "muon"), ("d", 4, "adamw")):
        norm = "lns" if name == "b" else "pre_ln"
        _set_config(make_run(root, f"{name}-s1", norm, 1, 30.0), depth, opt)
        _set_config(make_run(root, f"{name}-s2", norm, 2, 31.0), depth, opt)
    found = collect([str(root)])
    names = short_names(groups_mod.group_runs(found.runs, summary_rows(found.runs)))
    assert names == {"pre_ln num_hidden_layers=2 optimizer=adamw": "pre_ln",
                     "lns num_hidden_layers=2 optimizer=adamw": "lns",
                     "pre_ln num_hidden_layers=2 optimizer=muon": "pre_ln optimizer=muon",
                     "pre_ln num_hidden_layers=4 optimizer=adamw": "pre_ln num_hidden_layers=4"}  # fmt: skip


def test_one_seed_per_scheme_figures_come_in_parts_when_the_schemes_are_many(tmp_path, monkeypatch):
    """figures_per=scheme with ten schemes: the per-run figures (here layer pruning) come in two parts of at most 8
    lines, seed 1 of each scheme in exactly one part, Pre-LN's in both; report.md links both parts."""
    from cod_train.report import plots

    norms = ["pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "peri_ln", "sandwich_ln", "hybrid_ln", "reordered_ln",
             "dyt"]  # fmt: skip
    root = tmp_path / "runs"
    for idx, norm in enumerate(norms):
        for seed in (1, 2):
            make_run(root, f"{norm}-s{seed}", norm, seed, 30.0 + idx + seed)
    drawn: dict = {}
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (drawn.__setitem__(path.stem, fig), save(fig, path))[1])
    text, _ = _report(root, tmp_path / "out", figures_per="scheme")
    parts = [[t.get_text().split(" (ppl")[0] for legend in drawn[name].legends for t in legend.get_texts()]
             for name in ("layer_pruning_p1", "layer_pruning_p2")]  # fmt: skip
    assert "layer_pruning" not in drawn and "layer_pruning_p3" not in drawn
    assert all(len(p) <= 8 and p[0] == "pre_ln seed=1" for p in parts)
    assert sorted(name for p in parts for name in p[1:]) == sorted(f"{n} seed=1" for n in norms[1:])
    assert "![layer_pruning_p1](figures/layer_pruning_p1.png)" in text
    assert "## One seed per scheme: 2-layer models, part 2 of 2" in text


def test_the_per_batch_test_is_shown_against_the_seeds(tmp_path):
    """Pruning curves with ±0.1 batch intervals: Pre-LN's two seeds cost 5% and 6% at layer 1 (apart), LNS's two
    seeds are equal. Same scheme: 1 of 2 seed pairs called different (a false alarm); different schemes: the two
    pairs with Pre-LN seed 2, 2 of 4. The per-pair list of a one-seed report gives way to this count."""
    root = tmp_path / "runs"
    for name, norm, seed, first in (("pre_ln-s1", "pre_ln", 1, 5.0), ("pre_ln-s2", "pre_ln", 2, 6.0),
                                    ("lns-s1", "lns", 1, 5.0), ("lns-s2", "lns", 2, 5.0)):  # fmt: skip
        run = make_run(root, name, norm, seed, 30.0 + seed, depth_pct=(first, 0.5))
        data = json.loads((run / "analysis" / "layer_pruning.json").read_text())
        pct = data["models"][0]["delta_ppl_pct"]
        data["models"][0].update(delta_ppl_pct_lo=[v - 0.1 for v in pct], delta_ppl_pct_hi=[v + 0.1 for v in pct])
        (run / "analysis" / "layer_pruning.json").write_text(json.dumps(data))
    text, _ = _report(root, tmp_path / "out")
    assert "| pruning cost (%) | 1 of 2 | 2 of 4 |" in text
    assert "vs **" not in text.split("## Differences between runs over held-out batches")[1]


def test_deep_layer_removal_cost_is_the_median_over_the_deep_half():
    """Layers 1-6 of 6 (deep half: 4, 5, 6) cost 50, 3, 0.2, 0.4, 0.1, 500%: median of 0.4, 0.1, 500 is 0.4 (the
    critical last layer does not stand for the half); of 4 deep layers 0.1, 0.3, 0.5, 9: (0.3 + 0.5) / 2."""
    from cod_train.report.render import deep_prune_pct

    six = {"delta_ppl_pct": [50.0, 3.0, 0.2, 0.4, 0.1, 500.0], "ppl": [1.0] * 6, "base_ppl": 1.0}
    assert deep_prune_pct(six) == pytest.approx(0.4)
    eight = {"delta_ppl_pct": [1.0] * 4 + [0.1, 9.0, 0.5, 0.3], "num_layers": 8}
    assert deep_prune_pct(eight) == pytest.approx(0.4)
    assert deep_prune_pct(None) is None
