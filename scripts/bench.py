#!/usr/bin/env python
"""Training-step benchmark: cod-train's model vs `transformers.LlamaForCausalLM`, and the engines.

Model step (default). For each size and mode (eager, compile), both models are built in one process with
the same shapes and the same weights (ours' state dict is loaded into LlamaForCausalLM, SDPA attention),
the same batch, precision and `torch.optim.AdamW`, and trained with the training loop's call

    model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=n, use_cache=False).loss.backward()

After warm-up (which includes compilation), `--pairs` repetitions alternate the order (AB, BA, AB, ...);
each repetition times `--steps` steps per model. Reported: median tokens/s of each side, the median of the
per-pair ratios ours/HF (with min and max), and MFU from `cod_train.model.flops_per_token`: on GPU over the
datasheet peak (`cod_train.train.metrics`); on CPU FLOPs per CPU-second over a 1024x1024 matmul's FLOPs per
CPU-second ("fraction of achievable matmul speed"). `compile` compiles every decoder block, as the engines do
(`cod_train.engine.parallelize.apply_compile`), on both models.

Peak memory is measured in a fresh subprocess per (size, mode, model) so that the models do not see each
other's allocations: on GPU `torch.cuda.max_memory_allocated` over the measured steps (absolute: weights,
gradients, AdamW state and activations); on CPU, where torch keeps no allocator statistics, the process's
peak resident set size (VmHWM, reset after warm-up through /proc/self/clear_refs) over the measured steps,
and its rise above the resident size just before them (gradients + activations + temporaries). glibc is
told to return large blocks to the OS at once (`MALLOC_MMAP_THRESHOLD_`) so that RSS follows live tensors.

Engines (`--engines`): `cod-pretrain` runs with `distributed=single|ddp|fsdp|deepspeed` (2 processes under
torchrun on CPU, all cores shared out through OMP_NUM_THREADS, the same global batch), `tokens_per_s` read from
`run_dir/metrics.jsonl` (median of the rows after warm-up); `--engine-reps` rounds in alternating order, ratios to
`single` computed round by round.

On a machine shared with other work, pass `--threads 1`: with several threads a descheduled OpenMP thread stalls
the others and the timings scatter; the tokens-per-CPU-second ratio (printed and in the JSON) is the figure that
does not depend on what else runs.

    python scripts/bench.py                          # CPU defaults: tiny, 60m, 130m; eager + compile
    python scripts/bench.py --sizes 60m --pairs 9 --out bench.json
    python scripts/bench.py --device cuda --precision bf16-mixed     # every preset on a GPU
    python scripts/bench.py --engines --out engines.json           # needs cod-pretrain
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ALL_SIZES = ("tiny", "60m", "71m", "130m", "250m", "350m", "1b", "7b")
# CPU: short sequences and small batches so the default run takes minutes on two cores.
CPU_SHAPES = {"tiny": (8, 256), "60m": (2, 256), "130m": (1, 256)}
GPU_SHAPES = {"tiny": (32, 256), "60m": (32, 256), "71m": (32, 256), "130m": (32, 256), "250m": (16, 256),
              "350m": (16, 256), "1b": (8, 256), "7b": (1, 256)}


# --------------------------------------------------------------------------------------------- models

def preset(size: str, vocab: int, **overrides):
    """Typed `ModelConfig` of `configs/model/llama_<size>.yaml` (pre_ln)."""
    from omegaconf import OmegaConf

    from cod_train.config import ModelConfig

    raw = OmegaConf.load(ROOT / "configs" / "model" / f"llama_{size}.yaml")
    raw.merge_with({"norm_type": "pre_ln", "mix_ln_ratio": 0.25})
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
    if cfg.vocab_size is None:
        cfg.vocab_size = vocab
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def build_pair(size: str, args, which=("ours", "hf")) -> dict[str, torch.nn.Module]:
    """Our model and LlamaForCausalLM with the same shapes and (when both are built) the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from cod_train.model import build_model

    torch.manual_seed(0)
    ours = build_model(preset(size, args.vocab), loss_chunk_size=args.loss_chunk_size)
    models = {}
    if "ours" in which:
        models["ours"] = ours
    if "hf" in which:
        c = ours.config
        keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings", "initializer_range"]
        hf_cfg = LlamaConfig(**{k: getattr(c, k) for k in keys}, rope_parameters=c.rope_parameters,
                             attn_implementation="sdpa", use_cache=False)
        hf = LlamaForCausalLM(hf_cfg)
        hf.load_state_dict(ours.state_dict(), strict=True)
        models["hf"] = hf
    if "ours" not in which:
        del ours
    dtype = torch.bfloat16 if args.precision == "bf16-pure" else torch.float32
    for m in models.values():
        m.to(device=args.device, dtype=dtype).train()
    return models


def apply_compile(model: torch.nn.Module) -> None:
    """Per-block compile, exactly as the engines do when the engine module is importable."""
    try:
        from cod_train.engine.parallelize import apply_compile as engine_compile
    except ImportError:  # engine not there: same thing by hand
        for layer in model.model.layers:
            layer.compile(fullgraph=False)
        return
    engine_compile(model)


class Trainer:
    """One model + AdamW + a fixed batch; `step()` is one optimizer step."""

    def __init__(self, model, args, batch):
        self.model, self.args = model, args
        fused = args.device.startswith("cuda")
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=fused or None)
        self.x, self.y = batch
        self.n = int((self.y != -100).sum())
        self.autocast = args.precision == "bf16-mixed"

    def step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(input_ids=self.x, labels=self.y, shift_labels=self.y, num_items_in_batch=self.n,
                             use_cache=False)
        out.loss.backward()
        self.opt.step()
        return out.loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_batch(args, vocab: int, batch: int, seq: int):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    return ids[:, :-1].to(args.device), ids[:, 1:].contiguous().to(args.device)


def time_steps(trainer: Trainer, steps: int, device: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for `steps` steps."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = trainer.step()
    float(loss.detach())  # wait for the last step
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_speed(size: str, mode: str, args, shape) -> dict:
    """Interleaved A/B timing of one (size, mode) in this process."""
    batch, seq = shape
    models = build_pair(size, args)
    vocab = models["ours"].config.vocab_size
    data = make_batch(args, vocab, batch, seq)
    trainers = {}
    for name, m in models.items():
        if mode == "compile":
            apply_compile(m)
        trainers[name] = Trainer(m, args, data)
    t_compile = {}
    for name, tr in trainers.items():  # warm-up (compilation happens here)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            tr.step()
        sync(args.device)
        t_compile[name] = time.perf_counter() - t0
    tokens = batch * seq * args.steps
    tps, tpc = {"ours": [], "hf": []}, {"ours": [], "hf": []}
    for rep in range(args.pairs):
        order = ("ours", "hf") if rep % 2 == 0 else ("hf", "ours")
        for name in order:
            wall, cpu = time_steps(trainers[name], args.steps, args.device)
            tps[name].append(tokens / wall)
            tpc[name].append(tokens / cpu)
    ratios = [a / b for a, b in zip(tps["ours"], tps["hf"], strict=True)]
    cpu_ratios = [a / b for a, b in zip(tpc["ours"], tpc["hf"], strict=True)]
    from cod_train.model import flops_per_token

    fpt = flops_per_token(models["ours"].config, seq)
    res = {
        "size": size, "mode": mode, "batch": batch, "seq_len": seq, "precision": args.precision,
        "params_m": sum(p.numel() for p in models["ours"].parameters()) / 1e6,
        "flops_per_token": fpt,
        "warmup_s": t_compile,
        "tokens_per_s": {k: statistics.median(v) for k, v in tps.items()},
        "tokens_per_s_all": tps,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "ratios": ratios,
        # Tokens per CPU-second of this process: robust to other processes taking the cores (shared machines),
        # meaningful on CPU only.
        "tokens_per_cpu_s": {k: statistics.median(v) for k, v in tpc.items()},
        "cpu_ratio_median": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
    }
    # GPU: achieved FLOP/s over the datasheet peak. CPU: FLOPs per CPU-second over the matmul rate per CPU-second.
    rate = res["tokens_per_s"] if args.device.startswith("cuda") else res["tokens_per_cpu_s"]
    res["mfu"] = {k: (min(1.0, fpt * v / args.peak_flops) if args.peak_flops else None) for k, v in rate.items()}
    del trainers, models
    gc.collect()
    return res


# --------------------------------------------------------------------------------------------- memory

def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_child(spec: dict) -> dict:
    """Runs in a fresh process: peak memory of one (size, mode, model)."""
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(args.threads) if args.threads else None
    batch, seq = spec["shape"]
    model = build_pair(spec["size"], args, which=(spec["model"],))[spec["model"]]
    if spec["mode"] == "compile":
        apply_compile(model)
    tr = Trainer(model, args, make_batch(args, model.config.vocab_size, batch, seq))
    for _ in range(args.warmup):
        tr.step()
    tr.opt.zero_grad(set_to_none=True)
    gc.collect()
    out = {}
    if args.device.startswith("cuda"):
        sync(args.device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(args.mem_steps):
            tr.step()
        sync(args.device)
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["rise_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        for _ in range(args.mem_steps):
            tr.step()
        out["peak_mib"] = _rss_kib("VmHWM") / 1024
        out["rise_mib"] = (_rss_kib("VmHWM") - base) / 1024
    return out


def bench_memory(size: str, mode: str, name: str, args, shape) -> dict:
    spec = {"size": size, "mode": mode, "model": name, "shape": list(shape), "args": vars(args)}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        proc = subprocess.run([sys.executable, __file__, "--_memory-child", f.name], env=env,
                              capture_output=True, text=True, timeout=args.child_timeout)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- engines

def engine_run(engine: str, args) -> dict:
    """One `cod-pretrain` run with `distributed=<engine>`; tokens/s = median of the metrics rows after warm-up."""
    nproc = 1 if engine == "single" else args.nproc
    # Default: every run gets all cores (one process with cores threads, or nproc processes with cores // nproc
    # each); --engine-threads N gives every process N threads instead.
    threads = args.engine_threads or max(1, (os.cpu_count() or 1) // nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [f"distributed={engine}", f"run_dir={run_dir}", f"train.max_steps={args.engine_steps}",
                     "train.log_every=1", "train.eval_every=0", "train.ckpt_every=0", "train.diag_every=0",
                     "train.export_hf=false", "resume=none", "logger=none", f"model={args.engine_model}",
                     # same global batch everywhere, one micro-batch per rank and step
                     f"train.global_batch_size={args.engine_batch}",
                     f"train.micro_batch_size={args.engine_batch // nproc}", *args.engine_overrides]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "cod_train.cli.pretrain", *overrides]
        else:
            cmd = [str(Path(sys.executable).with_name("cod-pretrain")), *overrides]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout, env=env)
        wall = time.perf_counter() - t0
        row = {"engine": engine, "nproc": nproc, "threads_per_proc": threads, "wall_s": wall, "rc": proc.returncode}
        metrics = Path(run_dir) / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    train = [r for r in rows if "tokens_per_s" in r]
    steady = train[args.engine_warmup:] or train
    if steady:
        row["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in steady)
        row["steps_measured"] = len(steady)
        mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
        if mfus:
            row["mfu"] = statistics.median(mfus)
        if any("peak_mem_gb" in r for r in steady):
            row["peak_mem_gb"] = max(r["peak_mem_gb"] for r in steady if "peak_mem_gb" in r)
    if proc.returncode != 0:
        lines = (proc.stderr + proc.stdout).splitlines()
        row["error"] = next((ln.strip() for ln in lines if "error" in ln.lower() and "=" not in ln[:3]),
                            lines[-1] if lines else "?")[:300]
    return row


def bench_engines(args) -> dict:
    """`--engine-reps` rounds over the engines (order reversed every other round); per engine the median
    tokens/s over rounds and the median of its per-round ratio to `single` in the same round."""
    if not Path(sys.executable).with_name("cod-pretrain").exists():
        print("cod-pretrain is not installed; skipping the engine benchmark", file=sys.stderr)
        return {}
    engines = args.engine_list.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(args.engine_reps):
        for engine in engines if rep % 2 == 0 else engines[::-1]:
            row = engine_run(engine, args)
            runs[engine].append(row)
            print(f"  round {rep + 1}: {engine:<10} nproc={row['nproc']} "
                  f"tokens/s={row.get('tokens_per_s', float('nan')):,.0f} wall={row['wall_s']:.0f}s rc={row['rc']}"
                  + (f" error: {row['error']}" if "error" in row else ""), flush=True)
    summary = []
    for engine, rows in runs.items():
        tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
        item = {"engine": engine, "nproc": rows[0]["nproc"], "runs": rows,
                "tokens_per_s": statistics.median(tps) if tps else None}
        if "single" in runs and tps:
            ratios = [r["tokens_per_s"] / s["tokens_per_s"] for r, s in zip(rows, runs["single"], strict=True)
                      if "tokens_per_s" in r and "tokens_per_s" in s]
            if ratios:
                item.update(vs_single=statistics.median(ratios), vs_single_min=min(ratios),
                            vs_single_max=max(ratios))
        mems = [r["peak_mem_gb"] for r in rows if "peak_mem_gb" in r]
        item["peak_mem_gb"] = statistics.median(mems) if mems else None
        summary.append(item)
    print("\n| engine | processes | tokens/s (median) | vs single (min-max) | peak RSS GiB per rank |")
    print("|---|---|---|---|---|")
    for it in summary:
        vs = (f"{it['vs_single']:.2f} ({it['vs_single_min']:.2f}-{it['vs_single_max']:.2f})"
              if "vs_single" in it else "-")
        tps = f"{it['tokens_per_s']:,.0f}" if it["tokens_per_s"] else "failed"
        mem = f"{it['peak_mem_gb']:.2f}" if it["peak_mem_gb"] else "-"
        print(f"| {it['engine']} | {it['nproc']} | {tps} | {vs} | {mem} |")
    return {"summary": summary}


# --------------------------------------------------------------------------------------------- main

def machine_info(args) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if args.device.startswith("cuda"):
        info["device"] = torch.cuda.get_device_name()
    else:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
            info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
        except (OSError, StopIteration):
            info["cpu"] = platform.processor()
        info["cores"] = os.cpu_count()
        try:
            info["loadavg_start"] = os.getloadavg()
        except OSError:
            pass
    return info


def resolve_peak(args) -> float | None:
    try:
        from cod_train.train.metrics import peak_flops
    except ImportError:
        peak_flops = None
    dev = torch.device(args.device)
    if dev.type == "cuda" and peak_flops is not None:
        return peak_flops(dev, args.precision)
    # CPU: the rate of a large matmul in the compute dtype, per CPU-second of this process (median of a few
    # tries): unlike a wall-clock rate it does not drop when other processes share the cores.
    dtype = torch.float32 if args.precision == "fp32" else torch.bfloat16
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b
    rates = []
    for _ in range(5):
        c0, n = time.process_time(), 0
        while time.process_time() - c0 < 0.3:
            a @ b
            n += 1
        rates.append(2 * 1024**3 * n / (time.process_time() - c0))
    return statistics.median(rates)


def fmt_table(rows: list[dict], mem: dict, cpu: bool) -> str:
    """Markdown table: medians, pair-by-pair ratio ours/HF (median, min-max), MFU, memory."""
    cols = ["size", "mode", "B x T", "ours tok/s", "HF tok/s", "ours/HF (min-max)"]
    if cpu:
        cols.append("ours/HF per CPU-s (min-max)")
    cols += ["MFU ours / HF", "peak MiB ours / HF", "step rise MiB ours / HF" if cpu else "above-start MiB ours / HF"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        m = mem.get((r["size"], r["mode"]), {})

        def pair(key, m=m):
            a, b = m.get("ours", {}).get(key), m.get("hf", {}).get(key)
            return f"{a:,.0f} / {b:,.0f}" if a is not None and b is not None else "-"

        mfu = r["mfu"]
        cells = [r["size"], r["mode"], f"{r['batch']} x {r['seq_len']}", f"{r['tokens_per_s']['ours']:,.0f}",
                 f"{r['tokens_per_s']['hf']:,.0f}",
                 f"**{r['ratio_median']:.3f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"]
        if cpu:
            cells.append(f"{r['cpu_ratio_median']:.3f} ({r['cpu_ratio_min']:.2f}-{r['cpu_ratio_max']:.2f})")
        cells += [f"{mfu['ours']:.1%} / {mfu['hf']:.1%}" if mfu["ours"] is not None else "-",
                  pair("peak_mib"), pair("rise_mib")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default=None, help="comma list of " + ",".join(ALL_SIZES)
                   + " (default: tiny,60m,130m on CPU, every preset on GPU)")
    p.add_argument("--modes", default="eager,compile")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16-mixed", "bf16-pure"],
                   help="default fp32 on CPU, bf16-mixed on GPU")
    p.add_argument("--batch", type=int, default=None, help="micro-batch (default per size and device)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default 256)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary for presets without one (tiny)")
    p.add_argument("--loss-chunk-size", type=int, default=0, help="our fused loss chunk rows (0 = the default)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pairs", type=int, default=5, help="A/B repetitions (order alternates)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per repetition")
    p.add_argument("--mem-steps", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the per-config memory subprocesses")
    p.add_argument("--no-speed", action="store_true", help="only the memory subprocesses")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--child-timeout", type=int, default=1800)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--engines", action="store_true", help="benchmark the engines with cod-pretrain instead")
    p.add_argument("--engine-list", default="single,ddp,fsdp,deepspeed")
    p.add_argument("--engine-model", default="llama_tiny")
    p.add_argument("--engine-steps", type=int, default=30)
    p.add_argument("--engine-warmup", type=int, default=5, help="metrics rows skipped as warm-up")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--engine-batch", type=int, default=16, help="global batch (sequences) of every engine run")
    p.add_argument("--engine-reps", type=int, default=3, help="rounds over the engines")
    p.add_argument("--engine-threads", type=int, default=0, help="OMP threads per process (0 = cores / processes)")
    p.add_argument("--engine-overrides", nargs="*", default=[], help="extra cod-pretrain key=value overrides")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16-mixed" if gpu else "fp32")
    args.sizes = args.sizes or (",".join(ALL_SIZES) if gpu else "tiny,60m,130m")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        spec = json.loads(Path(args.memory_child).read_text())
        print(json.dumps(memory_child(spec)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(args)
    result: dict = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "memory_child"}}
    if args.engines:
        print(f"engines on {info.get('cpu', info.get('device'))}, torch {info['torch']}", flush=True)
        result["engines"] = bench_engines(args)
    else:
        args.peak_flops = resolve_peak(args)
        info["peak_flops"] = args.peak_flops
        print(f"{info.get('cpu', info.get('device'))}, {info.get('cores', '')} cores, torch {info['torch']}, "
              f"transformers {info.get('transformers')}, {args.precision}, peak {args.peak_flops / 1e12:.3f} TFLOP/s"
              f" ({'datasheet' if args.device.startswith('cuda') else 'measured matmul, per CPU-second'})", flush=True)
        shapes = GPU_SHAPES if args.device.startswith("cuda") else CPU_SHAPES
        rows, mem, failed = [], {}, []
        for size in args.sizes.split(","):
            b, t = shapes.get(size, (1, 256))
            shape = (args.batch or b, args.seq or t)
            for mode in args.modes.split(","):
                if not args.no_speed:
                    t0 = time.perf_counter()
                    try:
                        r = bench_speed(size, mode, args, shape)
                    except (RuntimeError, torch.OutOfMemoryError) as e:  # e.g. 7b on one GPU: record, go on
                        failed.append({"size": size, "mode": mode, "error": f"{type(e).__name__}: {e}"[:300]})
                        print(f"  {size} {mode}: FAILED {failed[-1]['error']}", flush=True)
                        gc.collect()
                        if args.device.startswith("cuda"):
                            torch.cuda.empty_cache()
                        continue
                    rows.append(r)
                    print(f"  {size} {mode}: ours {r['tokens_per_s']['ours']:,.0f} tok/s, "
                          f"HF {r['tokens_per_s']['hf']:,.0f} tok/s, ratio {r['ratio_median']:.3f} "
                          f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]; per CPU-s ratio {r['cpu_ratio_median']:.3f} "
                          f"[{r['cpu_ratio_min']:.3f}, {r['cpu_ratio_max']:.3f}] ({time.perf_counter() - t0:.0f}s)",
                          flush=True)
                if not args.no_memory:
                    mem[(size, mode)] = {name: bench_memory(size, mode, name, args, shape) for name in ("ours", "hf")}
                    print(f"  {size} {mode} memory: {mem[(size, mode)]}", flush=True)
        if rows:
            print()
            print(fmt_table(rows, mem, cpu=not args.device.startswith("cuda")))
        result["model_step"] = rows
        result["failed"] = failed
        result["memory"] = [{"size": s, "mode": m, **v} for (s, m), v in mem.items()]
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
