"""A Hydra sweep's run directories as cod-pretrain, cod-eval and cod-analyze write them, without training.

``config.yaml`` is the real composed pretrain config (Hydra compose + ``write_config``), each job directory is named
the way ``cod-pretrain -m`` names it (job number + the overrides, cut at 100 characters), ``metrics.jsonl`` holds
the training loop's rows (train every step, eval every 20, diagnostics every 10), ``checkpoints/step_N/meta.json``
and ``hf/config.json`` are written in the loop's order (checkpoint, then the export), ``eval.json`` is cod-eval's
layout, and one joint ``analysis/`` folder holds cod-analyze's entries for every run (with ``run_dir`` and ``step``).
Curves are smooth functions of the run index with a little noise, so lines differ.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

LAYERS = 6
MAX_STEPS = 60
SCHEMES = (  # eight schemes of the depth zoo, as sweep overrides
    ["norm=pre_ln"], ["norm=post_ln"], ["norm=mix_ln"], ["norm=lns"],
    ["norm=pre_ln", "residual=hc_dynamic", "model.hc_streams=8"], ["norm=pre_ln", "residual=mhc"],
    ["norm=lns", "residual=gpas", "qk_norm=head"], ["norm=pre_ln", "norm_fn=dyt"],
)  # fmt: skip
CONSTANT = ["model=llama_tiny", f"model.num_hidden_layers={LAYERS}", "data.seq_len=128",
            f"train.max_steps={MAX_STEPS}", "train.ckpt_every=60", "train.eval_every=20", "train.diag_every=10",
            "train.log_every=1"]  # fmt: skip


def job_overrides(n_runs: int) -> list[list[str]]:
    """n_runs jobs: the schemes in turn, then the same schemes with another seed (16 = 8 schemes x 2 seeds)."""
    seeds = [] if n_runs <= len(SCHEMES) else ["seed=1", "seed=2"]
    if not seeds:
        return [SCHEMES[i] for i in range(n_runs)]
    return [[*SCHEMES[i % len(SCHEMES)], seeds[i // len(SCHEMES)]] for i in range(n_runs)]


def composed_configs(jobs: list[list[str]], run_dirs: list[Path]) -> list[Any]:
    from hydra import compose, initialize_config_dir

    from cod_train.runs.app import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return [compose("pretrain", overrides=[*o, f"run_dir={d}"]) for o, d in zip(jobs, run_dirs, strict=True)]


def job_dirname(num: int, overrides: list[str]) -> str:
    """``<num>_<overrides>`` as Hydra's override_dirname (sorted ``key=value`` joined by commas) made path-safe."""
    from cod_train.runs.app import _short_dirname

    return f"{num}_{_short_dirname(','.join(sorted(overrides)))}"


def _loss(i: int, step: int, rng: random.Random) -> float:
    return 2.0 + 7.0 * math.exp(-step / (12 + 2 * (i % 8))) + 0.03 * i + rng.gauss(0, 0.04)


def metrics_rows(i: int, last_step: int) -> list[dict[str, Any]]:
    rng = random.Random(i)
    rows: list[dict[str, Any]] = []
    for step in range(1, last_step + 1):
        row: dict[str, Any] = {"lr": 3e-3 * min(1, step / 10), "step": step, "tokens": step * 4 * 128,
                               "valid_tokens": 512, "loss": _loss(i, step, rng), "grad_norm": 1.0 / step ** 0.3,
                               "nonfinite_skipped": 0, "tokens_per_s": 4000.0 + 50 * i, "step_time_s": 0.13, "mfu": 0.1,
                               "peak_mem_gb": 0.5}  # fmt: skip
        if step % 10 == 0:
            depth = step / MAX_STEPS
            row.update({
                "diag/layer_grad_norm": [0.2 / (layer + 1) for layer in range(LAYERS)],
                "diag/layer_var": [0.03 * (layer + 1) ** (1 + 0.07 * i) for layer in range(LAYERS)],
                "diag/bi": [0.3 * math.exp(-layer * (0.2 + 0.03 * i)) + 0.02 * depth for layer in range(LAYERS)],
                "diag/lens_kl": [3.0 * (1 - layer / LAYERS) for layer in range(LAYERS + 1)],
                "diag/lens_top1": [layer / LAYERS for layer in range(LAYERS + 1)],
                "diag/settling_depth": min(1.0, 0.3 + 0.04 * i + 0.2 * depth),
            })  # fmt: skip
        rows.append(row)
        if step % 20 == 0:
            eval_loss = _loss(i, step, random.Random(-i)) + 0.1
            rows.append({"step": step, "eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss), "eval_tokens": 8192})
    return rows


def _curve(values: list[float], spread: float) -> dict[str, list[float]]:
    return {"lo": [v - spread * abs(v) for v in values], "hi": [v + spread * abs(v) for v in values]}


def analysis_entry(i: int, run_dir: Path, label: str, step: int, scheme: str) -> dict[str, dict[str, Any]]:
    """cod-analyze's entry per diagnostic for one model (the fields of cod_train/eval/diagnostics.py)."""
    rng = random.Random(100 + i)
    info = {"label": label, "checkpoint": str(run_dir), "run_dir": str(run_dir.resolve()), "step": step,
            "model_type": "cod_llama", "norm_type": scheme.split("+")[0], "num_layers": LAYERS, "params": 3_400_000,
            "eval_tokens": 16384, "learned_scalars": {}}  # fmt: skip
    layers = list(range(1, LAYERS + 1))
    pct = [40.0 * math.exp(-(layer - 1) * (0.3 + 0.1 * (i % 8))) + rng.random() for layer in layers]
    bi = [0.3 * math.exp(-(layer - 1) * (0.2 + 0.05 * (i % 8))) for layer in layers]
    kl = [3.0 * (1 - layer / LAYERS) ** (1 + 0.1 * (i % 8)) for layer in range(LAYERS + 1)]
    top1 = [min(1.0, (layer / LAYERS) ** (0.5 + 0.1 * (i % 8))) for layer in range(LAYERS + 1)]
    ratio = [0.5 + 0.1 * layer + 0.02 * i for layer in layers]
    cos = [0.3 - 0.08 * layer + 0.01 * (i % 8) for layer in layers]
    with_band = {
        "layer_pruning": {"base_ppl": 30.0 + i, "layers": layers, "ppl": [(30.0 + i) * (1 + p / 100) for p in pct],
                          "delta_ppl_pct": pct, "method": "prefix-cached", "num_batches": 8},
        "block_influence": {"bi": bi, "num_batches": 8, "num_tokens": 16384},
        "logit_lens": {"kl": kl, "top1": top1, "settling_layer": next(k for k, t in enumerate(top1) if t >= 0.5),
                       "settling_depth": next(k for k, t in enumerate(top1) if t >= 0.5) / LAYERS},
        "sublayer_contribution": {"attn_ratio": ratio, "mlp_ratio": [r * 1.5 for r in ratio], "attn_cos": cos,
                                  "mlp_cos": [c + 0.2 for c in cos]},
        "skip_effect": {"layers": layers, "change": [[0.0 if j < layer else 0.5 * math.exp(-(j - layer) * 0.3)
                                                      for j in layers] for layer in layers],
                        "final_kl": [0.5 * math.exp(-(layer - 1) * 0.4) for layer in layers]},
    }  # fmt: skip
    keys = {"layer_pruning": ["delta_ppl_pct"], "block_influence": ["bi"], "logit_lens": ["kl", "top1"],
            "sublayer_contribution": ["attn_ratio", "mlp_ratio", "attn_cos", "mlp_cos"], "skip_effect": ["final_kl"]}
    for stem, fields in keys.items():
        for key in fields:
            band = _curve(with_band[stem][key], 0.1)
            with_band[stem].update({f"{key}_lo": band["lo"], f"{key}_hi": band["hi"]})
    plain = {
        "layer_variance": {"layer_var": [0.03 * layer ** (1 + i % 3 * 0.3) for layer in layers], "embed_var": 0.001},
        "angular_distance": {"distance": [[min(1.0, 0.1 * n * (1 + 0.05 * i)) if s + n <= LAYERS else None
                                           for n in range(1, LAYERS + 1)] for s in range(LAYERS)]},
        "grad_norms": {"layer_grad_norm": [0.5 / layer + 0.01 * i for layer in layers], "loss": 3.0},
    }  # fmt: skip
    return {stem: {**info, **fields} for stem, fields in {**with_band, **plain}.items()}


def write_run(run_dir: Path, i: int, config: Any, *, stopped_at: int | None = None) -> Path:
    """One job directory; ``stopped_at``: the run was stopped (SIGTERM) at that step: no final eval, no hf/."""
    from cod_train.runs.app import write_config

    write_config(config, run_dir)
    last = stopped_at or MAX_STEPS
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_rows(i, last)))
    ckpt = run_dir / "checkpoints" / f"step_{last:07d}"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"format_version": 1, "step": last, "tokens": last * 512}))
    os.utime(ckpt / "meta.json", (1.7e9, 1.7e9))
    if stopped_at is None:
        hf_config = run_dir / "hf" / "config.json"
        hf_config.parent.mkdir()
        hf_config.write_text(json.dumps({"model_type": "cod_llama", "num_hidden_layers": LAYERS}))
        os.utime(hf_config, (1.7e9 + 5, 1.7e9 + 5))  # the export follows the last checkpoint
        eval_loss = 3.4 + 0.02 * i
        eval_json = {"checkpoint": str(run_dir), "model": {"kind": "hf", "path": str(run_dir / "hf"),
                                                           "model_type": "cod_llama", "num_layers": LAYERS},
                     "perplexity": {"eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss), "eval_tokens": 65536},
                     "downstream": {"arc_easy": {"acc": 0.3 + 0.01 * i, "n": 100},
                                    "piqa": {"acc": 0.5 + 0.01 * i, "n": 100}, "average": 0.4 + 0.01 * i}}  # fmt: skip
        (run_dir / "eval.json").write_text(json.dumps(eval_json))
    return run_dir


def write_sweep(root: Path, n_runs: int, *, stopped: dict[int, int] | None = None) -> list[Path]:
    """``root/<job dirs>`` and ``root/compare/analysis`` (one cod-analyze over every run, labels = job dir names)."""
    from cod_train.report.runs import read_run

    stopped = stopped or {}
    jobs = [[*CONSTANT, *o] for o in job_overrides(n_runs)]
    run_dirs = [root / job_dirname(i, job) for i, job in enumerate(jobs)]
    configs = composed_configs(jobs, run_dirs)
    runs = [write_run(d, i, c, stopped_at=stopped.get(i)) for i, (d, c) in enumerate(zip(run_dirs, configs, strict=True))]
    per_model = [analysis_entry(i, d, d.name, stopped.get(i) or MAX_STEPS, read_run(d).variant) for i, d in enumerate(runs)]
    folder = root / "compare" / "analysis"
    folder.mkdir(parents=True)
    for stem in per_model[0]:
        models = [m[stem] for m in per_model]
        (folder / f"{stem}.json").write_text(json.dumps({"diagnostic": stem, "models": models}))
    return runs
