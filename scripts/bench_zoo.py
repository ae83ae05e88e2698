#!/usr/bin/env python
"""Depth-zoo benchmark: each scheme's training step against `pre_ln` at one size (default llama_60m), CPU.

One process holds the `pre_ln` model and one scheme's model (same shapes, same batch, fp32, `torch.optim.AdamW`,
the training loop's call `labels=shift_labels=y, num_items_in_batch=n`, backward, optimizer step). After warm-up,
`--pairs` repetitions alternate the order (AB, BA, ...), each timing `--steps` steps per model. Reported per scheme:
the median of the pair-by-pair ratios scheme / pre_ln of the step's CPU time (the figure that does not depend on
what else runs on a shared machine) and of its wall time, with min-max. A placement's training-loop callbacks run
after each optimizer step (nGPT's renormalization), as in cod-pretrain.

Memory, deterministic rather than sampled: the bytes the forward saves for the backward (activations; counted
once per storage through `torch.autograd.graph.saved_tensors_hooks`) plus weights, gradients and the two AdamW
moments (4 x parameter bytes); its ratio to pre_ln's is the "training memory" column; the saved bytes alone under
bf16 autocast, as a ratio to pre_ln's, are the "bf16 saved" column. (Peak RSS of one shared
process cannot separate two models; these two terms are what differs between schemes.)

    python scripts/bench_zoo.py --threads 1 --before c3d89f4 --out zoo.json   # c3d89f4: before the depth zoo
    python scripts/bench_zoo.py --size tiny --pairs 3 --schemes lns+gpas,dyt
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> ModelConfig overrides: every placement, every value of every axis, and the papers' combinations
SCHEMES: dict[str, dict] = {
    "post_ln": {"norm_type": "post_ln"}, "mix_ln": {"norm_type": "mix_ln"}, "lns": {"norm_type": "lns"},
    "deepnorm": {"norm_type": "deepnorm"}, "sandwich_ln": {"norm_type": "sandwich_ln"},
    "peri_ln": {"norm_type": "peri_ln"}, "reordered_ln": {"norm_type": "reordered_ln"},
    "olmo2": {"norm_type": "reordered_ln", "qk_norm": "full"}, "hybrid_ln": {"norm_type": "hybrid_ln"},
    "hybrid_ln_star": {"norm_type": "hybrid_ln_star"}, "qk_head": {"qk_norm": "head"}, "qk_full": {"qk_norm": "full"},
    "layernorm": {"norm_fn": "layernorm"}, "dyt": {"norm_fn": "dyt"}, "derf": {"norm_fn": "derf"},
    "layerscale": {"residual": "layerscale"}, "rezero": {"residual": "rezero"},
    "depth_scaled": {"residual": "depth_scaled"}, "gpas": {"residual": "gpas"},
    "lns+gpas+qk_head": {"norm_type": "lns", "residual": "gpas", "qk_norm": "head"},
    "mix_ln+dyt": {"norm_type": "mix_ln", "norm_fn": "dyt"},
    "attnres": {"residual": "attnres"}, "block_attnres4": {"residual": "block_attnres", "attnres_blocks": 4},
    "ngpt": {"norm_type": "ngpt"},
    "denseformer": {"residual": "denseformer"},
    "denseformer4x5": {"residual": "denseformer", "denseformer_dilation": 4, "denseformer_period": 5},
    "vres": {"value_residual": True},
}
SHAPES = {"tiny": (8, 256), "60m": (2, 256), "130m": (1, 256)}
VOCAB = 32000


def build(size: str, **overrides):
    from omegaconf import OmegaConf

    from cod_train.config import ModelConfig
    from cod_train.model import build_model

    raw = OmegaConf.load(ROOT / "configs" / "model" / f"llama_{size}.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw, overrides))
    torch.manual_seed(0)
    return build_model(cfg, VOCAB).train()


class Trainer:
    def __init__(self, model, batch):
        self.model, self.x = model, batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.callbacks = model.config.placement_scheme.callbacks(model.config)  # nGPT: the renormalization

    def step(self) -> None:
        out = self.model(input_ids=self.x, labels=self.x, shift_labels=self.x, num_items_in_batch=self.x.numel(),
                         use_cache=False)
        out.loss.backward()
        self.opt.step()
        with torch.no_grad():
            for callback in self.callbacks:
                callback.after_optimizer_step(self.model, 0)
        self.opt.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    def memory_mib(self) -> float:
        """Activations saved for the backward (one count per storage) + weights, grads and AdamW moments."""
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return (self.saved_bytes() + 4 * params) / 2**20

    def saved_bytes(self, bf16: bool = False) -> int:
        """Bytes the forward saves for the backward, each storage once (`bf16`: under bf16 autocast)."""
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self.model(input_ids=self.x, labels=self.x, shift_labels=self.x,
                             num_items_in_batch=self.x.numel(), use_cache=False)
        out.loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return sum(seen.values())


def before_model(rev: str, like):
    """`pre_ln` built by `cod_train/model/modeling.py` as it was at git revision `rev`, with `like`'s weights."""
    import importlib.util
    import subprocess
    import tempfile

    code = subprocess.run(["git", "show", f"{rev}:cod_train/model/modeling.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "modeling_before.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("modeling_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["modeling_before"] = module
    spec.loader.exec_module(module)
    model = module.CodLlamaForCausalLM(like.config)
    model.load_state_dict(like.state_dict())
    return model.train()


def ratios(base: Trainer, other: Trainer, pairs: int, steps: int) -> dict:
    wall, cpu = [], []
    for rep in range(pairs):
        order = (base, other) if rep % 2 == 0 else (other, base)
        got = {id(t): t.timed(steps) for t in order}
        wall.append(got[id(other)][0] / got[id(base)][0])
        cpu.append(got[id(other)][1] / got[id(base)][1])
    return {"cpu_ratio": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
            "wall_ratio": statistics.median(wall), "wall_min": min(wall), "wall_max": max(wall)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="60m", choices=sorted(SHAPES))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--before", default="", help="also time pre_ln as modeling.py was at this git revision")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    b, t = SHAPES[args.size]
    x = torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(0))
    base = Trainer(build(args.size), x)
    for _ in range(args.warmup):
        base.step()
    base_mem, base_bf16 = base.memory_mib(), base.saved_bytes(bf16=True)
    rows = []
    names = ([f"pre_ln@{args.before}"] if args.before else []) + args.schemes.split(",")
    for name in names:
        model = before_model(args.before, base.model) if "@" in name else build(args.size, **SCHEMES[name])
        other = Trainer(model, x)
        for _ in range(args.warmup):
            other.step()
        row = {"scheme": name, **ratios(base, other, args.pairs, args.steps),
               "memory_mib": other.memory_mib(), "pre_ln_memory_mib": base_mem}
        row["memory_ratio"] = row["memory_mib"] / base_mem
        row["saved_bf16_ratio"] = other.saved_bytes(bf16=True) / base_bf16
        rows.append(row)
        print(f"{name:18s} cpu {row['cpu_ratio']:.3f} ({row['cpu_min']:.2f}-{row['cpu_max']:.2f})  "
              f"wall {row['wall_ratio']:.3f} ({row['wall_min']:.2f}-{row['wall_max']:.2f})  "
              f"memory {row['memory_mib']:.0f} MiB ({row['memory_ratio']:.3f}x)  "
              f"bf16 saved {row['saved_bf16_ratio']:.3f}x", flush=True)
        del other, model
    meta = {"size": args.size, "batch": [b, t], "pairs": args.pairs, "steps": args.steps,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), platform.processor())}
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
