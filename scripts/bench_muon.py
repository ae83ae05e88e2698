#!/usr/bin/env python
"""Muon's optimizer step (`train.optimizer=muon`) against AdamW's (`train.optimizer=adamw`, fused) at the 60m and
130m presets, fp32, CPU, one process; and where Muon's time goes.

Per size, one process holds one model and both optimizers, built by `cod_train.train.optim.build_optimizer` as
training builds them, and fixed random gradients (the step is timed alone: no forward or backward). After one
warm-up step each, `--pairs` repetitions alternate the order (AB, BA, ...), each timing `--steps` steps per
optimizer; reported: per optimizer the median (and min-max) CPU seconds per step (process_time: what a shared
machine does not distort) and the median of the pair-by-pair ratios muon / adamw, CPU and wall.

Breakdown (same process, medians over `--pairs` repetitions of `--steps` calls each): Muon's two halves
(`MuonWithAdamW.muon.step()`: the hidden matrices; `.adamw.step()`: embeddings, lm_head, norms) and, inside the
Muon half, torch's Newton-Schulz (`_zeropower_via_newtonschulz`, bf16, on every hidden matrix's gradient) alone;
the rest of the Muon half (momentum, decay, update) is the difference. For scale, the same iteration in fp32
(`newton_schulz_fp32`, not what torch runs): how much of the cost is this CPU's bf16 matmuls.

    python scripts/bench_muon.py --out muon.json
    python scripts/bench_muon.py --sizes 60m --pairs 3 --steps 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(size: str):
    from omegaconf import OmegaConf

    from cod_train.config import ModelConfig, to_typed
    from cod_train.model import build_model

    raw = OmegaConf.load(ROOT / "configs" / "model" / f"llama_{size}.yaml")
    torch.manual_seed(0)
    return build_model(to_typed(OmegaConf.to_container(raw), ModelConfig))


def cpu_wall(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.process_time() - c0) / steps, (time.perf_counter() - w0) / steps


def newton_schulz_fp32(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int) -> torch.Tensor:
    """torch's quintic iteration without its cast to bf16 (timing comparison only)."""
    a, b, c = coefficients
    x = grad.T if grad.shape[0] > grad.shape[1] else grad
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_size(size: str, args) -> dict:
    from torch.optim._muon import _zeropower_via_newtonschulz

    from cod_train.config import TrainConfig
    from cod_train.train.optim import build_optimizer

    model = build(size)
    torch.manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    adamw = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-4, weight_decay=0.1))
    muon = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-4, weight_decay=0.1))
    adamw.step(), muon.step()  # warm-up (state allocated)
    times: dict[str, list[float]] = {"adamw": [], "muon": []}
    ratio_cpu, ratio_wall = [], []
    for i in range(args.pairs):
        order = [("adamw", adamw), ("muon", muon)][:: 1 if i % 2 == 0 else -1]
        res = {name: cpu_wall(opt.step, args.steps) for name, opt in order}
        for name in times:
            times[name].append(res[name][0])
        ratio_cpu.append(res["muon"][0] / res["adamw"][0])
        ratio_wall.append(res["muon"][1] / res["adamw"][1])
    matrices = [p for g in muon.param_groups if g.get("muon") for p in g["params"]]
    group = next(g for g in muon.param_groups if g.get("muon"))

    def newton_schulz() -> None:
        for p in matrices:
            _zeropower_via_newtonschulz(p.grad, group["ns_coefficients"], group["ns_steps"], group["eps"])

    def newton_schulz_in_fp32() -> None:
        for p in matrices:
            newton_schulz_fp32(p.grad, group["ns_coefficients"], group["ns_steps"])

    parts: dict[str, list[float]] = {"muon_half": [], "newton_schulz": [], "newton_schulz_fp32": [],
                                     "adamw_half": []}
    for _ in range(args.pairs):
        parts["muon_half"].append(cpu_wall(muon.muon.step, args.steps)[0])
        parts["newton_schulz"].append(cpu_wall(newton_schulz, args.steps)[0])
        parts["newton_schulz_fp32"].append(cpu_wall(newton_schulz_in_fp32, args.steps)[0])
        parts["adamw_half"].append(cpu_wall(muon.adamw.step, args.steps)[0])
    medians = {k: statistics.median(v) for k, v in parts.items()}
    medians["muon_half_rest"] = medians["muon_half"] - medians["newton_schulz"]
    n_muon = sum(p.numel() for p in matrices)
    return {"params": sum(p.numel() for p in model.parameters()), "muon_params": n_muon,
            "muon_matrices": len(matrices), "step_cpu_s": {k: spread(v) for k, v in times.items()},
            "ratio_cpu": spread(ratio_cpu), "ratio_wall": spread(ratio_wall), "breakdown_cpu_s": medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="60m,130m")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "pairs": args.pairs, "steps": args.steps,
              "sizes": {size: bench_size(size, args) for size in args.sizes.split(",")}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
