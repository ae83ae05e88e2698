"""Benchmark: prefix-cached layer pruning vs the plain way (remove the layer, rerun the whole model).

    .venv/bin/python scripts/bench_analyze.py                       # SmolLM2-135M shape, 30 layers, CPU
    .venv/bin/python scripts/bench_analyze.py --rows 8 --seq 512 --repeats 5 --device cuda

The model is a randomly initialised ``transformers.LlamaForCausalLM`` with SmolLM2-135M's shape (30 layers,
hidden 576, 9 heads, 3 KV heads, intermediate 1536, vocabulary 49152, tied embeddings): no hub access is
needed, and the cost of a forward does not depend on the weights. Prints the machine, the median wall time of
each method over ``--repeats`` runs (alternating, in one process), the ratio, and the largest relative
difference between the two methods' per-layer perplexities. Also times the pruning + skip-effect sweep.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cod_train.eval.depth_analyses import removal_analyses
from cod_train.eval.diagnostics import layer_pruning

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
)  # fmt: skip


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batches", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": args.layers}))
    model = model.to(args.device).eval()
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (args.rows, args.seq + 1), generator=gen)
        batches.append({"input_ids": ids[:, :-1].to(args.device), "labels": ids[:, 1:].to(args.device)})
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(fn):  # noqa: ANN001, ANN202 - a local helper
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - start, out

    deep = list(range(args.layers // 2, args.layers))  # the deep half, as a layers= subset
    runs = {
        "plain": lambda: layer_pruning(model, batches, method="plain", progress=False),
        "cached": lambda: layer_pruning(model, batches, method="cached", progress=False),
        "cached+skip": lambda: removal_analyses(model, batches, skip_effect=True, progress=False),
        "plain deep half": lambda: layer_pruning(model, batches, layers=deep, method="plain", progress=False),
        "cached deep half": lambda: layer_pruning(
            model, batches, layers=deep, method="cached", progress=False
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            secs, results[key] = timed(fn)
            times[key].append(secs)
        print("repeat:", ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    plain, cached = results["plain"]["ppl"], results["cached"]["ppl"]
    rel = max(abs(a / b - 1) for a, b in zip(cached, plain, strict=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {cpu_name()}, nproc {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
          f"device {args.device}, torch {torch.__version__}")  # fmt: skip
    print(f"model: LlamaForCausalLM, SmolLM2-135M shape, {args.layers} layers, random init, fp32; "
          f"{args.batches} batch(es) x {args.rows} rows x {args.seq} tokens; {args.repeats} repeats")  # fmt: skip
    for key, value in med.items():
        print(f"{key:17s} median {value:8.2f} s   all: {', '.join(f'{t:.2f}' for t in times[key])}")
    print(
        f"speed-up plain / cached (full curve): {med['plain'] / med['cached']:.2f}x "
        f"(ceiling from layer caching alone: 2L/(L+1) = {2 * args.layers / (args.layers + 1):.2f}x)"
    )
    print(
        f"speed-up 2 x plain / cached+skip (pruning + skip effect): {2 * med['plain'] / med['cached+skip']:.2f}x"
    )
    print(
        f"speed-up deep half (layers {deep[0] + 1}..{args.layers}): "
        f"{med['plain deep half'] / med['cached deep half']:.2f}x"
    )
    print(f"largest relative difference in per-layer perplexity: {rel:.2e}")
    deep_rel = max(
        abs(a / b - 1)
        for a, b in zip(results["cached deep half"]["ppl"], results["plain deep half"]["ppl"], strict=True)
    )
    print(f"largest relative difference, deep half: {deep_rel:.2e}")


if __name__ == "__main__":
    main()
