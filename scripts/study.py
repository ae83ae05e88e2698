"""The depth-zoo study: every registered normalization / residual scheme, 3 seeds each, then one report.

    python scripts/study.py                      # or: make study          (the full plan, ~2.5 h of 2 cores)
    python scripts/study.py --plan long          # Pre-LN, LNS, Mix-LN, Peri-LN at 6x the tokens (~1 h)
    python scripts/study.py --plan reduced       # the pipeline check of docs/study/reduced/ (~30 min)
    python scripts/study.py --dry-run            # print the runs it would make, run nothing
    python scripts/study.py --report-only        # regenerate the report from the runs' files

Resumable: re-running it continues where it stopped. A finished run (hf/, eval.json and analysis/ present) is
skipped, a partial one is continued with ``resume=auto`` from its last checkpoint, a failed one is tried again. A
run that fails gets ``failed.json`` (stage, exit code, last error line) in its directory and the study goes on;
cod-report lists it as failed.

Phases (the full plan): (1) ``tune``: Pre-LN at each learning rate of ``lr_grid`` (seed 0, never a study seed);
the lowest held-out loss picks the one learning rate of the AdamW family, written to ``<out>/plan.json``; Muon runs
use it too (``train.muon_adjust_lr=match_rms_adamw`` matches Muon's update RMS to AdamW's, so AdamW's learning
rate carries over). (2) ``d12``: every scheme of :func:`schemes` on the 12-layer model, seeds 1-3. (3) ``d24``: the
24-layer model for Pre-LN, LNS, Mix-LN and the two other AdamW schemes of lowest mean 12-layer perplexity (chosen
once every ``d12`` scheme has a result, kept in plan.json), and CompleteP (``DEPTH_TRANSFER``: at the tuned depth it
is Pre-LN exactly, only another depth tests it). (4) the report: the runs' small files (config,
metrics.jsonl, eval.json, analysis/*.json, hf/config.json; no weights) are copied under ``<report>/runs/`` and
cod-report regenerates ``<report>/report.md`` from that copy alone (``make study-report``).

The schemes come from the registry (cod_train.model.zoo): a placement or residual scheme that lands later is
included on the next run of this script, as is Muon once ``train.optimizer=muon`` exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / ".venv" / "bin"
MODEL = "llama_tiny_deep"
ALWAYS_DEEP = ("pre_ln", "lns", "mix_ln")  # the 24-layer runs always include these; plus the best two others
# Depth-transfer schemes are the identity at the depth their hyperparameters were tuned at (CompleteP at 12 layers
# is Pre-LN exactly): only the second depth tests them, so they always run there too.
DEPTH_TRANSFER = ("completep",)
BASE_SCHEMES: dict[str, list[str]] = {  # the list, in its order
    "pre_ln": ["norm=pre_ln"],
    "post_ln": ["norm=post_ln"],
    "mix_ln": ["norm=mix_ln"],
    "lns": ["norm=lns"],
    "deepnorm": ["norm=deepnorm"],
    "peri_ln": ["norm=peri_ln"],
    "reordered_ln+qk_head": ["norm=reordered_ln", "qk_norm=head"],
    "hybrid_ln": ["norm=hybrid_ln"],
    "dyt": ["norm=dyt"],
    "gpas": ["norm=pre_ln", "residual=gpas"],
    "completep": ["residual=completep", "model.depth_base_layers=12"],  # the learning rate was tuned at 12 layers
    "mhc": ["residual=mhc"],
}
# Registered schemes the study leaves out on purpose: variants of a scheme above (sandwich_ln ~ peri_ln without
# the embedding norm, hybrid_ln_star, static / dynamic HC beside mHC) or older gates (rezero, layerscale).
LEFT_OUT = {"plain", "sandwich_ln", "hybrid_ln_star", "rezero", "layerscale", "hc", "depth_scaled"}
SCHEME_EXTRA = {"ngpt": ["train.warmup_steps=0", "train.weight_decay=0"]}  # what nGPT's run_problems require


@dataclass
class Plan:
    steps: int
    batch: int  # sequences per step
    seq_len: int
    seeds: tuple[int, ...]
    eval_tokens: int
    analyze_tokens: int
    downstream: tuple[str, ...]
    downstream_limit: int
    lr_grid: tuple[float, ...]  # one value: no tuning phase
    deep_layers: int | None  # the second depth (None: no d24 phase)
    saves: int = 4  # checkpoints (and in-training evals, diagnostics) per run
    lr_check: int = 0  # the learning-rate check: this many best and worst 12-layer schemes at lr / 2 and 2 lr
    diagnostics: tuple[str, ...] = ()  # cod-analyze's (empty: all of them)
    only: tuple[str, ...] = ()  # a subset of the schemes (empty: all)
    about: str = ""
    extra: list[str] = field(default_factory=list)


PLANS = {
    # ~187 min of 2 idle cores at the old study's 4.3K tokens/s: 57 runs x ~135 s (12 layers), 15 x ~210 s
    # (24 layers), 3 tuning runs x ~110 s. Cut to fit: 100 steps of 8 x 256 tokens (205K tokens, a sixth of the
    # old study's 600 steps), 2 downstream tasks at 100 examples, 16K analysis tokens, the 24-layer runs limited
    # to five schemes, the learning rate tuned once on Pre-LN (three values) for every scheme.
    "full": Plan(steps=100, batch=8, seq_len=256, seeds=(1, 2, 3), eval_tokens=65536, analyze_tokens=16384,
                 downstream=("arc_easy", "piqa"), downstream_limit=100, lr_grid=(1e-3, 2e-3, 4e-3, 8e-3), deep_layers=24,
                 lr_check=3, about="full plan"),  # fmt: skip
    # The length check: the full plan's finding is that 205K tokens leave half the schemes at the unigram level.
    # Pre-LN, LNS, Mix-LN and Peri-LN, 3 seeds, 6x the tokens (1.2M, the earlier single-seed study's), the full
    # plan's tuned learning rate so that only the length differs; ~1 h of 2 idle cores.
    "long": Plan(steps=600, batch=8, seq_len=256, seeds=(1, 2, 3), eval_tokens=65536, analyze_tokens=16384,
                 downstream=("arc_easy", "piqa"), downstream_limit=100, lr_grid=(4e-3,), deep_layers=None,
                 only=("pre_ln", "lns", "mix_ln", "peri_ln"), about="long pass: 6x the tokens"),  # fmt: skip
    # The pipeline check: 4 schemes x 3 seeds, 8 steps of 4 x 64 tokens, no tuning (the old study's 2e-3), the
    # four diagnostics drawn over seeds.
    "reduced": Plan(steps=8, batch=4, seq_len=64, seeds=(1, 2, 3), eval_tokens=4096, analyze_tokens=2048,
                    downstream=("arc_easy",), downstream_limit=10, lr_grid=(2e-3,), deep_layers=None, saves=2,
                    diagnostics=("variance", "pruning", "block_influence", "logit_lens"),  # the curves over seeds
                    only=("pre_ln", "post_ln", "mix_ln", "lns"), about="reduced pass, a pipeline check"),  # fmt: skip
}


def schemes() -> dict[str, list[str]]:
    """The study's schemes: the fixed list, every other registered placement / residual scheme (the frontier
    schemes as they land), ResFormer's value residuals and Muon where they exist."""
    from cod_train.config import OPTIMIZERS
    from cod_train.model import zoo

    out = dict(BASE_SCHEMES)
    used = {"pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "peri_ln", "reordered_ln", "hybrid_ln", "gpas", "mhc"}
    for name in zoo.placement_names():
        if name not in used | LEFT_OUT:
            out[name] = [f"model.norm_type={name}", *SCHEME_EXTRA.get(name, [])]
    for name in zoo.residual_names():
        if name not in used | LEFT_OUT:
            out[name] = [f"model.residual={name}", *SCHEME_EXTRA.get(name, [])]
    if "value_residual" in zoo.AXIS_NAMES:
        out["vres"] = ["model.value_residual=true"]
    if "muon" in OPTIMIZERS:
        out["pre_ln+muon"] = ["norm=pre_ln", "train.optimizer=muon"]
        out["lns+muon"] = ["norm=lns", "train.optimizer=muon"]
    return out


# ---------------------------------------------------------------------- one run
def pretrain_args(plan: Plan, run: Path, overrides: list[str], seed: int, lr: float, layers: int) -> list[str]:
    steps = plan.steps
    return last_wins([str(BIN / "cod-pretrain"), f"model={MODEL}", f"model.num_hidden_layers={layers}",
            f"run_dir={run}", "resume=auto", f"seed={seed}", f"train.max_steps={steps}", f"train.lr={lr}",
            f"train.warmup_steps={max(1, steps // 10)}", f"train.global_batch_size={plan.batch}",
            f"train.micro_batch_size={plan.batch}", f"data.seq_len={plan.seq_len}",
            f"train.eval_every={max(1, steps // plan.saves)}", f"train.ckpt_every={max(1, steps // plan.saves)}",
            f"train.diag_every={max(1, steps // plan.saves)}", f"train.eval_tokens={plan.eval_tokens // 4}", "logger=none",
            *plan.extra, *overrides])  # fmt: skip


def last_wins(args: list[str]) -> list[str]:
    """Each ``key=`` once, its last value (Hydra refuses a key given twice): a scheme's own settings, which come
    last (nGPT's ``train.warmup_steps=0``), win over the plan's."""
    keys = [a.split("=", 1)[0] if "=" in a else None for a in args]
    return [a for i, (a, k) in enumerate(zip(args, keys, strict=True)) if k is None or k not in keys[i + 1 :]]


def eval_args(plan: Plan, run: Path) -> list[str]:
    tasks = ",".join(plan.downstream)
    return [str(BIN / "cod-eval"), f"checkpoint={run}", f"data.seq_len={plan.seq_len}",  # the trained length
            f"perplexity.eval_tokens={plan.eval_tokens}",
            f"downstream.tasks=[{tasks}]", f"downstream.limit={plan.downstream_limit}"]  # fmt: skip


def analyze_args(plan: Plan, run: Path) -> list[str]:
    chosen = [f"analyze.diagnostics=[{','.join(plan.diagnostics)}]"] if plan.diagnostics else []
    return [str(BIN / "cod-analyze"), f"checkpoint={run}", f"analyze.eval_tokens={plan.analyze_tokens}",
            "analyze.progress=false", *chosen]  # fmt: skip


def _call(args: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        return subprocess.call(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
    return (errors or lines or ["(no output)"])[-1][:300]


def mark_failed(run: Path, stage: str, code: int, log: Path) -> None:
    """``failed.json`` unless the command wrote its own (cod-pretrain's local sweep does)."""
    marker = run / "failed.json"
    if marker.is_file() and json.loads(marker.read_text()).get("stage") == stage:
        return
    run.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"stage": stage, "exit_code": code, "error": _last_error(log),
                                  "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1) + "\n")  # fmt: skip


def run_one(plan: Plan, run: Path, pretrain: list[str], *, evaluate: bool = True) -> bool:
    """Pre-train (or continue), evaluate and analyse one run, skipping what is done; False when a stage failed."""
    (run / "failed.json").unlink(missing_ok=True)  # a failed run is tried again
    log = run.parent / "logs" / f"{run.name}.log"
    stages = [("pretrain", pretrain, run / "hf" / "config.json")]
    if evaluate:
        stages += [("eval", eval_args(plan, run), run / "eval.json"),
                   ("analyze", analyze_args(plan, run), run / "analysis" / "layer_pruning.json")]  # fmt: skip
    for stage, args, done in stages:
        if done.exists():
            continue
        print(f"  {stage}: {run}", flush=True)
        code = _call(args, log)
        if code != 0:
            mark_failed(run, stage, code, log)
            print(f"  FAILED ({stage}, exit {code}): {run}; see {log}", flush=True)
            return False
    return True


# ---------------------------------------------------------------------- phases
def final_eval_loss(run: Path) -> float | None:
    """The run's held-out loss: eval.json, else its last in-training eval."""
    if (run / "eval.json").is_file():
        return float(json.loads((run / "eval.json").read_text())["perplexity"]["eval_loss"])
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"eval_loss"' in ln] \
        if (run / "metrics.jsonl").is_file() else []  # fmt: skip
    return float(rows[-1]["eval_loss"]) if rows else None


def tuned_lr(plan: Plan, out: Path, state: dict, dry: bool) -> float:
    if len(plan.lr_grid) == 1:
        return plan.lr_grid[0]
    if "lr" in state:
        return float(state["lr"])
    losses = {}
    for lr in plan.lr_grid:
        run = out / "tune" / f"pre_ln-lr{lr:g}"
        if dry:
            print(f"tune  {run}")
            continue
        if run_one(plan, run, pretrain_args(plan, run, BASE_SCHEMES["pre_ln"], 0, lr, 12), evaluate=False):
            losses[lr] = final_eval_loss(run)
    if dry:
        return plan.lr_grid[len(plan.lr_grid) // 2]
    scored = {lr: loss for lr, loss in losses.items() if loss is not None}
    if not scored:
        sys.exit("error: every tuning run failed; see the logs under " + str(out / "tune" / "logs"))
    state["lr"], state["tune_losses"] = min(scored, key=lambda k: scored[k]), {str(k): v for k, v in scored.items()}
    if state["lr"] in (min(plan.lr_grid), max(plan.lr_grid)):
        state["lr_at_grid_edge"] = True  # the optimum may lie outside the grid: the report says so
        print(f"warning: the tuned learning rate {state['lr']:g} is at the edge of the grid {plan.lr_grid}", flush=True)
    return float(state["lr"])


def run_phase(plan: Plan, out: Path, phase: str, chosen: dict[str, list[str]], lr: float, layers: int,
              dry: bool) -> list[Path]:  # fmt: skip
    runs = []
    for name, overrides in chosen.items():
        for seed in plan.seeds:
            run = out / phase / f"{name}-s{seed}"
            runs.append(run)
            args = pretrain_args(plan, run, overrides, seed, lr, layers)
            if dry:
                print(f"{phase}  {run}  {' '.join(overrides)}")
                continue
            print(f"[{phase}] {name} seed {seed}", flush=True)
            run_one(plan, run, args)
    return runs


def best_others(out: Path, names: list[str], seeds: tuple[int, ...], k: int = 2) -> list[str]:
    """The k AdamW schemes besides ALWAYS_DEEP with the lowest mean 12-layer held-out loss over their seeds."""
    means = {n: v for n, v in mean_losses(out, names, seeds).items() if n not in ALWAYS_DEEP}
    return sorted(means, key=lambda n: means[n])[:k]


LR_FACTORS = (0.5, 2.0)


def mean_losses(out: Path, names: list[str], seeds: tuple[int, ...]) -> dict[str, float]:
    """Each AdamW scheme's mean 12-layer held-out loss over its evaluated seeds (Muon runs left out)."""
    means = {}
    for name in names:
        if name.endswith("+muon"):
            continue
        losses = [final_eval_loss(out / "d12" / f"{name}-s{seed}") for seed in seeds
                  if (out / "d12" / f"{name}-s{seed}" / "eval.json").is_file()]  # fmt: skip
        if losses and None not in losses:
            means[name] = sum(losses) / len(losses)  # type: ignore[arg-type]
    return means


def check_lr(plan: Plan, out: Path, state: dict, every: dict[str, list[str]], lr: float, dry: bool) -> None:
    """Is the family's learning rate (tuned on Pre-LN) near each scheme's own? The ``lr_check`` best and worst
    12-layer schemes (mean held-out loss) train again, seed 1, at lr / 2 and 2 lr (pre-training only); their
    in-training held-out loss is compared with the seed-1 run at lr in :func:`lr_table`."""
    if "lr_check" not in state:
        ranked = sorted((m := mean_losses(out, list(every), plan.seeds)), key=lambda n: m[n])
        ranked = [n for n in ranked if n != "pre_ln"]  # tuned already
        k = plan.lr_check
        state["lr_check"] = ranked[:k] + [n for n in ranked[-k:] if n not in ranked[:k]]
        if not dry:
            save_state(out, state)
    for name in state["lr_check"]:
        for factor in LR_FACTORS:
            run = out / "lr" / f"{name}-lr{lr * factor:g}"
            if dry:
                print(f"lr  {run}  {' '.join(every[name])}")
                continue
            print(f"[lr] {name} at {lr * factor:g}", flush=True)
            run_one(plan, run, pretrain_args(plan, run, every[name], plan.seeds[0], lr * factor, 12), evaluate=False)


def lr_table(runs: Path, state: dict, seeds: tuple[int, ...]) -> str:
    """The tuning sweep and the learning-rate check as Markdown, from the runs' (copied) metrics: final
    in-training held-out loss per learning rate, the seed spread at the tuned one for scale."""
    lr = float(state["lr"])
    factors = (LR_FACTORS[0], 1.0, LR_FACTORS[1])
    lines = ["| scheme | " + " | ".join(f"lr {f * lr:g}" for f in factors) + " | best | seed spread at "
             f"lr {lr:g} (sd over {len(seeds)} seeds) |", "|---|---|---|---|---|---|"]
    for name in state.get("lr_check", []):
        losses = {f: final_eval_loss(runs / ("d12" if f == 1.0 else "lr") / (f"{name}-s{seeds[0]}" if f == 1.0
                                                                          else f"{name}-lr{f * lr:g}"))
                  for f in factors}  # fmt: skip
        spread = [final_eval_loss(runs / "d12" / f"{name}-s{seed}") for seed in seeds]
        known = {f: v for f, v in losses.items() if v is not None}
        best = f"lr {min(known, key=lambda f: known[f]) * lr:g}" if known else "-"
        cells = [f"{losses[f]:.4f}" if losses[f] is not None else _missing(runs, name, f, lr) for f in factors]
        sd = _sd([v for v in spread if v is not None])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {best} | {sd:.4f} |")
    tune = state.get("tune_losses", {})
    head = ["Pre-LN tuning sweep (seed 0): " + ", ".join(f"lr {float(k):g}: {v:.4f}" for k, v in tune.items()) +
            f"; chosen {lr:g}" + (" (at the edge of the grid)" if state.get("lr_at_grid_edge") else "") + ".", ""]
    return "\n".join(["# Learning-rate check", "",
                      "Final held-out loss (nats, the in-training evaluation, the same held-out tokens for every "
                      "run) of seed 1 of each scheme at half, once and twice the family's learning rate.", "",
                      *head, *lines, ""])  # fmt: skip


def _missing(runs: Path, name: str, factor: float, lr: float) -> str:
    run = runs / "lr" / f"{name}-lr{factor * lr:g}"
    return "failed" if (run / "failed.json").is_file() else "not run"


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return float("nan")
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


# ---------------------------------------------------------------------- the unigram reference
def unigram_log_probs(batches: list[dict], vocab: int) -> list[float]:
    """Log token frequencies of the batches' labels, add-one smoothed: the best model that ignores context."""
    import torch

    counts = torch.ones(vocab, dtype=torch.float64)
    for batch in batches:
        labels = batch["labels"][batch["labels"] >= 0]
        counts += torch.bincount(labels.flatten(), minlength=vocab).double()
    return (counts / counts.sum()).log().tolist()


def unigram_model(log_probs: list[float]):  # noqa: ANN201 (a torch module; the script imports torch on demand)
    """Context-free logits (``log_probs`` at every position), called as cod-eval calls a model."""
    from types import SimpleNamespace

    import torch
    from torch import nn

    class Unigram(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("log_probs", torch.tensor(log_probs, dtype=torch.float32))

        def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
            return SimpleNamespace(loss=None, logits=self.log_probs.expand(*input_ids.shape, -1))

    return Unigram()


def unigram_reference(plan: Plan, run: Path) -> dict:
    """The unigram model fitted to the training tokens seed ``run`` saw (``steps x batch`` rows), evaluated by
    cod-eval's own code on cod-eval's held-out tokens: the perplexity of knowing token frequencies and nothing
    else."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from cod_train.config import DataConfig, to_typed
    from cod_train.data import build_eval_data, build_train_data
    from cod_train.eval.perplexity import evaluate_perplexity

    cfg = OmegaConf.load(run / "config.yaml")
    data = to_typed(cfg.data, DataConfig)
    tokenizer = AutoTokenizer.from_pretrained(run / "hf")
    train = build_train_data(data, tokenizer, global_batch_size=plan.batch, dp_rank=0, dp_world=1, seed=int(cfg.seed))
    model = unigram_model(unigram_log_probs([next(train) for _ in range(plan.steps)], len(tokenizer)))
    held_out = build_eval_data(data, tokenizer, micro_batch_size=8, max_tokens=plan.eval_tokens, dp_rank=0, dp_world=1)
    found = evaluate_perplexity(model, held_out or [], max_tokens=plan.eval_tokens)
    return {"fitted_on": str(_repo_relative(run)), "train_tokens": plan.steps * plan.batch * plan.seq_len, **found}


def write_report(plan: Plan, out: Path, report: Path, state: dict) -> None:
    """Copy every run's small files under ``report/runs`` and run cod-report on that copy (without the runs
    themselves, e.g. on another machine: on the copy already there)."""
    if out.is_dir():
        copy_light(out, report / "runs")
        copy_light(out, report / "lr_runs", phases=("tune", "lr"))  # apart: cod-report reads every run under runs/
        (report / "plan.json").write_text(json.dumps({"plan": vars(plan), **state}, indent=1, default=list) + "\n")
        first = out / "d12" / f"pre_ln-s{plan.seeds[0]}"
        if (first / "hf" / "config.json").is_file():
            reference = unigram_reference(plan, first)
            (report / "unigram.json").write_text(json.dumps(reference, indent=1) + "\n")
            print(f"unigram reference: held-out perplexity {reference['eval_ppl']:.1f}", flush=True)
    elif not (report / "runs").is_dir():
        sys.exit(f"error: neither the runs ({out}) nor their copy ({report / 'runs'}) exist: run the study first")
    saved = json.loads((report / "plan.json").read_text()) if (report / "plan.json").is_file() else state
    if saved.get("lr_check"):
        both = report / "lr_runs"
        (both / "d12").mkdir(parents=True, exist_ok=True)
        for name in saved["lr_check"]:  # the seed runs at the tuned learning rate, from the report's copy
            for seed in plan.seeds:
                src = report / "runs" / "d12" / f"{name}-s{seed}" / "metrics.jsonl"
                if src.is_file():
                    (both / "d12" / src.parent.name).mkdir(exist_ok=True)
                    shutil.copy2(src, both / "d12" / src.parent.name / "metrics.jsonl")
        (report / "lr_check.md").write_text(lr_table(both, saved, plan.seeds))
    title = f"cod-train depth-zoo study ({plan.about}): {MODEL}, {plan.steps} steps x {plan.batch} x {plan.seq_len} tokens"
    runs, out_dir = _repo_relative(report / "runs"), _repo_relative(report)  # relative paths in the committed report
    code = subprocess.call([str(BIN / "cod-report"), f"runs=[{runs}]", f"out={out_dir}", f"title='{title}'",
                            "order=flops", "figures_per=scheme"], cwd=REPO)  # fmt: skip
    if code:
        sys.exit(f"error: cod-report failed (exit {code})")


LIGHT = ("config.yaml", "metrics.jsonl", "eval.json", "failed.json", "hf/config.json", "checkpoints/*/meta.json")


def copy_light(out: Path, dest: Path, phases: tuple[str, ...] = ("d*",)) -> None:
    """Each run's files that the report reads, without weights; analysis entries re-pointed at the copy."""
    runs = {p.parent for phase in phases for name in ("config.yaml", "failed.json")
            for p in out.glob(f"{phase}/*/{name}")}  # fmt: skip
    for run in sorted(runs):
        target = dest / run.relative_to(out)
        for src in (f for pattern in LIGHT for f in run.glob(pattern)):  # copy2: the mtimes date hf/ to its step
            (target / src.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / src.relative_to(run))
        for src in (run / "analysis").glob("*.json"):
            data = json.loads(src.read_text())
            for entry in data.get("models", []):
                entry["run_dir"] = entry["checkpoint"] = str(_repo_relative(target))
            (target / "analysis").mkdir(parents=True, exist_ok=True)
            (target / "analysis" / src.name).write_text(json.dumps(data))


def _repo_relative(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="full")
    parser.add_argument("--out", type=Path, help="where the runs go (default runs/study/<plan>)")
    parser.add_argument("--report", type=Path, help="where the report goes (default docs/study/<plan>)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    plan = PLANS[args.plan]
    out = (args.out or REPO / "runs" / "study" / args.plan).resolve()
    report = (args.report or REPO / "docs" / "study" / args.plan).resolve()
    state_file = out / "plan.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if not args.report_only:
        run_study(plan, out, state, args.dry_run)
        if args.dry_run:
            return
    write_report(plan, out, report, state)


def save_state(out: Path, state: dict) -> None:
    """plan.json as soon as a choice is made (the learning rate, the 24-layer schemes), so a study stopped
    mid-phase resumes with the same choices."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(state, indent=1) + "\n")


def run_study(plan: Plan, out: Path, state: dict, dry: bool) -> None:
    every = schemes()
    names = [n for n in every if not plan.only or n in plan.only]
    state["schemes"] = {n: every[n] for n in names}
    lr = tuned_lr(plan, out, state, dry)
    if not dry:
        save_state(out, state)
    print(f"learning rate {lr:g}; schemes: {', '.join(names)}", flush=True)
    run_phase(plan, out, "d12", {n: every[n] for n in names}, lr, 12, dry)
    if plan.deep_layers is None:
        return
    deep = state.get("deep") or [*ALWAYS_DEEP, *best_others(out, names, plan.seeds)]
    if not dry and len(deep) == len(ALWAYS_DEEP) + 2:
        state["deep"] = deep  # fixed once chosen, so a resumed study keeps the same 24-layer schemes
        save_state(out, state)
    deep = [*deep, *(n for n in DEPTH_TRANSFER if n in names and n not in deep)]
    run_phase(plan, out, f"d{plan.deep_layers}", {n: every[n] for n in deep if n in every}, lr, plan.deep_layers, dry)
    if plan.lr_check:
        check_lr(plan, out, state, every, lr, dry)


if __name__ == "__main__":
    main()
