"""Data pipeline throughput (not a test): tokenization per core and with all cores, each loader's tokens/s,
and how long a training step waits for its batch.

    .venv/bin/python scripts/bench_data.py            # prints a Markdown section
    .venv/bin/python scripts/bench_data.py --write    # ... and replaces "## Data loaders" in BENCHMARKS.md

Corpus: the bundled sample (built on first use) with its ``train:8192`` tokenizer.
"""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # per-core figures: one thread per process
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cod_train.config import DataConfig  # noqa: E402
from cod_train.data import build_tokenizer, build_train_data, sample_path  # noqa: E402
from cod_train.data.loader import ShardLoader  # noqa: E402
from cod_train.data.shards import TokenShards, tokenize_corpus  # noqa: E402
from cod_train.data.stream import StreamLoader  # noqa: E402

SECTION = "## Data loaders"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores visible (load average {load:.1f} at start), Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the tokenizer pool)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_tokenize(tok, files: list[str], workers: int, tmp: Path) -> tuple[float, float, int]:
    """(tokens per wall second, tokens per CPU second, tokens)."""
    out = tmp / f"tok{workers}"
    t0, c0 = time.perf_counter(), cpu_seconds()
    tokenize_corpus(files, tok.backend_tokenizer.to_str(), tok.eos_token_id, len(tok), out, workers=workers)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    n = TokenShards(out / "train").num_tokens
    shutil.rmtree(out)
    return n / seconds, n / cpu, n


def timed_batches(loader, n: int, warmup: int = 1) -> float:
    for _ in range(warmup):  # worker start, first file open, shuffle buffer fill
        next(loader)
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(n):
        tokens += next(loader)["input_ids"].numel()
    return tokens / (time.perf_counter() - t0)


def step_wait(loader, steps: int, step_s: float) -> float:
    """Mean seconds per step spent in ``next(loader)`` while a step of ``step_s`` runs between calls."""
    for _ in range(4):
        next(loader)
    waited = 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        next(loader)
        waited += time.perf_counter() - t0
        time.sleep(step_s)  # the training step (the GIL is free, as in torch compute)
    return waited / steps


def write_gz_copies(src: Path, tmp: Path, parts: int) -> list[str]:
    lines = src.read_text().splitlines(keepends=True)
    paths = []
    for i in range(parts):
        path = tmp / f"c4-train.{i:05d}-of-{parts:05d}.json.gz"
        with gzip.open(path, "wt") as f:
            f.writelines(lines[i::parts])
        paths.append(str(path))
    return paths


def run(args: argparse.Namespace) -> str:
    cfg = DataConfig(source="sample", seq_len=256)
    tok = build_tokenizer(cfg)
    train_file = str(sample_path("train"))
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        per_core, per_cpu, n_tok = bench_tokenize(tok, [train_file] * args.copies, 1, tmp)
        all_cores, all_cpu, _ = bench_tokenize(tok, [train_file] * args.copies, cores, tmp)
        rows.append(("tokenize (`cod-data tokenize`), 1 process", f"{per_core:,.0f}",
                     f"{n_tok:,} tokens; {per_cpu:,.0f} per CPU-second"))
        rows.append((f"tokenize, {cores} processes (all cores)", f"{all_cores:,.0f}",
                     f"{all_cores / per_core:.2f}x of 1 process; {all_cpu:,.0f} per CPU-second (incl. the reader)"))

        shards = TokenShards(build_train_data(cfg, tok, global_batch_size=16, dp_rank=0, dp_world=1,
                                              seed=0).index.shards.path)
        for packing in (True, False):
            for batch, seq in ((16, 256), (64, 2048)):
                if not packing and seq != 256:
                    continue
                loader = ShardLoader(shards, seq_len=seq, packing=packing, global_batch_size=batch, dp_rank=0,
                                     dp_world=1, seed=0, pad_id=tok.pad_token_id)
                tps = timed_batches(loader, args.batches)
                rows.append((f"shard loader, packing={packing}, batch {batch}x{seq}, 1 process", f"{tps:,.0f}", ""))
        files = write_gz_copies(Path(train_file), tmp, 4)
        for workers in (0, 2):
            scfg = DataConfig(source="c4", paths=files, seq_len=256, num_workers=workers, shuffle_buffer=100)
            loader = StreamLoader(files, tok, scfg, global_batch_size=16, dp_rank=0, dp_world=1, seed=0)
            tps = timed_batches(loader, args.batches // 5, warmup=4)
            rows.append((f"streaming loader (json.gz, tokenize on the fly), num_workers={workers}", f"{tps:,.0f}",
                         "batch 16x256"))
            loader.close()

        waits = []
        shard_loader = ShardLoader(shards, seq_len=256, packing=True, global_batch_size=16, dp_rank=0, dp_world=1,
                                   seed=0, pad_id=tok.pad_token_id)
        waits.append(("shard loader", step_wait(shard_loader, args.wait_steps, args.step_ms / 1000)))
        scfg = DataConfig(source="c4", paths=files, seq_len=256, num_workers=2, shuffle_buffer=100)
        stream = StreamLoader(files, tok, scfg, global_batch_size=16, dp_rank=0, dp_world=1, seed=0)
        waits.append(("streaming loader, num_workers=2", step_wait(stream, args.wait_steps, args.step_ms / 1000)))
        stream.close()

    lines = [SECTION, "", f"Measured by `scripts/bench_data.py` on {time.strftime('%Y-%m-%d')}: {machine()}.",
             "Corpus: the bundled sample (`data=sample`, `train:8192` byte-level BPE).", "",
             "| what | tokens/s | note |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"Time a training step waits for its batch (step simulated as {args.step_ms:.0f} ms of "
              f"GIL-free work, batch 16x256, {args.wait_steps} steps):", ""]
    lines += [f"- {name}: {w * 1000:.2f} ms per step ({100 * w / (w + args.step_ms / 1000):.2f}% of the step)"
              for name, w in waits]
    shard_tps = float(rows[2][1].replace(",", ""))
    lines += ["", "Reading the figures:",
              f"- Requirement \"shard loader >= 2M tokens/s from one process\": {shard_tps / 1e6:.1f}M tokens/s at "
              "the embedded run's batch (16x256); the per-batch cost is a few numpy calls, so larger batches "
              "go faster. A node of 8 H100s on the 1B preset at 50% MFU needs about 0.5M tokens/s in all.",
              "- Wall-clock rates on a shared machine understate what a core does: the CPU-second column is the "
              "per-core rate. `cod-data tokenize` runs one tokenizer process per core fed by one reader, so with "
              "N free cores expect up to about N x that; the all-cores row only shows the scaling this machine "
              "allowed at the time (output is byte-identical for any worker count).",
              "- The streaming loader tokenizes on the fly: each DataLoader worker delivers about one core's "
              "tokenization rate. With dedicated cores (a GPU node) 1-2 workers per rank cover a 1B run (~62K "
              "tokens/s per GPU); on a CPU-starved machine (as here, where every engineer shares 2 cores) the "
              "step waits, so pre-tokenize with `cod-data tokenize` and train with `data=shards`.", ""]
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: body, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + body
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--copies", type=int, default=2, help="copies of the sample to tokenize")
    parser.add_argument("--wait-steps", type=int, default=60)
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--write", action="store_true", help="update the section in BENCHMARKS.md")
    args = parser.parse_args()
    text = run(args)
    print(text)
    if args.write:
        write_section(text, Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
