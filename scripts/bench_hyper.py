#!/usr/bin/env python
"""Hyper-connections benchmark: the training step of residual=hc / hc_dynamic / mhc at n = 2 and 4 against
`pre_ln` (same shapes, fp32, CPU, one process), and where the extra time goes.

Per scheme, one process holds the `pre_ln` model and the scheme's model (same seed, same batch, `torch.optim.AdamW`,
the loop's call `labels=shift_labels=y, num_items_in_batch=n`, backward, optimizer step). After one warm-up step
each, `--pairs` repetitions alternate the order (AB, BA, ...), each timing `--steps` steps per model; reported:
the median and min-max of the pair-by-pair ratios scheme / pre_ln of the step's CPU time (process_time: what a
shared machine does not distort) and wall time.

Memory (deterministic): the bytes the forward saves for the backward (counted once per storage with
`torch.autograd.graph.saved_tensors_hooks`) plus weights, gradients and AdamW's two moments (4 x parameter bytes),
as a ratio to pre_ln's.

Breakdown (`--breakdown`): forward + backward CPU time of each hyper-connection component alone, on the step's
shapes, times the 2L sub-layers: the weights (HC: static / tanh terms; mHC: RMS + projection + sigmoid), Sinkhorn,
the read (pre^T H) and the write (res^T H + post^T F). Their sum against the measured step difference says
where the overhead is.

Saved bytes per layer (`--saved`, nothing timed): for every residual scheme on pre_ln blocks (plain = `pre_ln`,
layerscale, rezero, depth_scaled, gpas, hc, hc_dynamic, mhc; n = 4) at d = 256 (4 heads, MLP 688, 3 layers,
vocabulary 512, batch 2 x 256), in fp32, bf16-mixed (autocast over fp32 parameters, as single / DDP run it) and
bf16-pure (parameters in bf16): the bytes of the storages the training forward saves for the backward while
inside the middle layer (each storage once, the first layer to save it; weights and autocast's weight copies
included), per token per hidden unit, and as a ratio to pre_ln's in the same precision.

    python scripts/bench_hyper.py --out hyper.json
    python scripts/bench_hyper.py --size tiny --pairs 2 --schemes mhc4
    python scripts/bench_hyper.py --saved --out saved.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMES: dict[str, dict] = {
    "hc2": {"residual": "hc", "hc_streams": 2}, "hc4": {"residual": "hc", "hc_streams": 4},
    "dhc2": {"residual": "hc", "hc_dynamic": True, "hc_streams": 2},
    "dhc4": {"residual": "hc", "hc_dynamic": True, "hc_streams": 4},
    "mhc2": {"residual": "mhc", "hc_streams": 2}, "mhc4": {"residual": "mhc", "hc_streams": 4},
}


def build(size: str, vocab: int, **overrides):
    from omegaconf import OmegaConf

    from cod_train.config import ModelConfig, to_typed
    from cod_train.model import build_model

    raw = OmegaConf.load(ROOT / "configs" / "model" / f"llama_{size}.yaml")
    cfg = to_typed({**OmegaConf.to_container(raw), "vocab_size": vocab, **overrides}, ModelConfig)
    torch.manual_seed(0)
    return build_model(cfg)


class Trainer:
    def __init__(self, model, batch):
        self.model, self.batch = model, batch
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.n = int((batch[1] != -100).sum())

    def step(self) -> None:
        x, y = self.batch
        loss = self.model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=self.n).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def timed(trainer: Trainer, steps: int) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return (time.process_time() - c0) / steps, (time.perf_counter() - w0) / steps


def training_bytes(trainer: Trainer) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    x, y = trainer.batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = trainer.model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=trainer.n).loss
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return sum(seen.values()) + 4 * sum(p.numel() * p.element_size() for p in trainer.model.parameters())


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_scheme(name: str, args, batch) -> dict:
    base = Trainer(build(args.size, args.vocab), batch)
    other = Trainer(build(args.size, args.vocab, **SCHEMES[name]), batch)
    base.step(), other.step()  # warm-up
    cpu, wall = [], []
    for i in range(args.pairs):
        order = (base, other) if i % 2 == 0 else (other, base)
        res = {id(t): timed(t, args.steps) for t in order}
        cpu.append(res[id(other)][0] / res[id(base)][0])
        wall.append(res[id(other)][1] / res[id(base)][1])
        if i == 0:
            step_cpu = {"pre_ln": res[id(base)][0], name: res[id(other)][0]}
    mem = training_bytes(other) / training_bytes(base)
    return {"cpu_ratio": spread(cpu), "wall_ratio": spread(wall), "memory_ratio": mem, "first_pair_cpu_s": step_cpu}


def _fwd_bwd_cpu(fn, inputs: list[torch.Tensor], reps: int) -> float:
    fn(*inputs).sum().backward()
    c0 = time.process_time()
    for _ in range(reps):
        fn(*inputs).sum().backward()
    return (time.process_time() - c0) / reps


def breakdown(name: str, args) -> dict:
    """CPU seconds per training step of each component (forward + backward, x 2L sub-layers)."""
    from cod_train.model.hyper_connections import _read, sinkhorn

    model = build("tiny" if args.size == "tiny" else args.size, args.vocab, **SCHEMES[name])
    cfg, hc = model.config, model.model.layers[0].attn_hc
    n, d, tokens = cfg.hc_streams, cfg.hidden_size, args.batch * args.seq
    streams = torch.randn(args.batch, args.seq, n, d, requires_grad=True)
    f = torch.randn(args.batch, args.seq, d, requires_grad=True)
    pre, post, res = (w.detach().requires_grad_() for w in hc(streams))  # static HC: [n], [n], [n, n]
    reps, sub = args.breakdown_reps, 2 * cfg.num_hidden_layers
    out = {"weights": _fwd_bwd_cpu(lambda s: sum(w.sum() for w in hc(s)), [streams], reps),
           "read": _fwd_bwd_cpu(_read, [pre, streams], reps),
           "write": _fwd_bwd_cpu(lambda r, s, p, o: torch.einsum("...ji,...jd->...id", r, s)
                                 + p.unsqueeze(-1) * o.unsqueeze(-2), [res, streams, post, f], reps)}
    if cfg.residual == "mhc":
        logits = torch.randn(tokens, n, n, requires_grad=True)
        out["sinkhorn (inside weights)"] = _fwd_bwd_cpu(lambda z: sinkhorn(z, cfg.hc_sinkhorn_iters), [logits], reps)
    return {k: v * sub for k, v in out.items()}


SAVED_SHAPE = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_hidden_layers=3,
                   max_position_embeddings=256)
SAVED_SCHEMES: dict[str, dict] = {
    "pre_ln": {}, "layerscale": {"residual": "layerscale"}, "rezero": {"residual": "rezero"},
    "depth_scaled": {"residual": "depth_scaled"}, "gpas": {"residual": "gpas"}, "hc": {"residual": "hc"},
    "hc_dynamic": {"residual": "hc", "hc_dynamic": True}, "mhc": {"residual": "mhc"},
}
PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")


def layer_saved_bytes(model, ids: torch.Tensor, precision: str, layer: int = 1) -> int:
    """Bytes of the storages the training forward saves for the backward while inside `model.model.layers[layer]`
    (each storage counted once, for the layer that saves it first), under `precision`'s autocast / dtype."""
    layers, inside, first = model.model.layers, [-1], {}
    handles = [m.register_forward_pre_hook(lambda _m, _a, i=i: inside.__setitem__(0, i)) for i, m in enumerate(layers)]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        first.setdefault(storage.data_ptr(), (inside[0], storage.nbytes()))
        return t

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    n = int(ids.numel())
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids, shift_labels=ids, num_items_in_batch=n).loss
    loss.backward()
    for handle in handles:
        handle.remove()
    return sum(nbytes for owner, nbytes in first.values() if owner == layer)


def saved_table(batch: int, seq: int) -> dict:
    """{precision: {scheme: {"bytes_per_token_per_unit", "ratio_to_pre_ln"}}} (see the module docstring)."""
    from cod_train.config import ModelConfig
    from cod_train.model import build_model

    ids = torch.randint(0, 512, (batch, seq), generator=torch.Generator().manual_seed(0))
    table: dict[str, dict] = {}
    for precision in PRECISIONS:
        rows = table.setdefault(precision, {})
        for name, axes in SAVED_SCHEMES.items():
            torch.manual_seed(0)
            model = build_model(ModelConfig(**SAVED_SHAPE, **axes), 512)
            if precision == "bf16-pure":
                model.to(torch.bfloat16)
            per_unit = layer_saved_bytes(model, ids, precision) / (ids.numel() * SAVED_SHAPE["hidden_size"])
            base = rows["pre_ln"]["bytes_per_token_per_unit"] if rows else per_unit  # pre_ln comes first
            rows[name] = {"bytes_per_token_per_unit": per_unit, "ratio_to_pre_ln": per_unit / base}
            print(precision, name, json.dumps(rows[name]), flush=True)
    return table


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="60m")
    ap.add_argument("--schemes", default="hc2,hc4,mhc2,mhc4")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--breakdown-reps", type=int, default=3)
    ap.add_argument("--saved", action="store_true", help="only the saved-bytes table (fixed d = 256 model)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.saved:
        saved = {"machine": machine(), "shape": SAVED_SHAPE, "batch": [args.batch, args.seq],
                 "saved": saved_table(args.batch, args.seq)}
        if args.out:
            Path(args.out).write_text(json.dumps(saved, indent=1))
        return
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    batch = (ids[:, :-1].contiguous(), ids[:, 1:].contiguous())
    result = {"machine": machine(), "size": args.size, "batch": [args.batch, args.seq], "schemes": {}}
    for name in args.schemes.split(","):
        result["schemes"][name] = bench_scheme(name, args, batch)
        if args.breakdown:
            result["schemes"][name]["breakdown_cpu_s"] = breakdown(name, args)
        print(name, json.dumps(result["schemes"][name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
