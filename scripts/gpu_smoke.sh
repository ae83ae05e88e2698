#!/usr/bin/env bash
# GPU smoke test: what the CPU test suite cannot exercise, in about 10 minutes on one H100/H200.
#
#   bash scripts/gpu_smoke.sh                      # everything; results under $OUT (default smoke_out/)
#   DEVICE=cpu bash scripts/gpu_smoke.sh           # a dry run of the script itself on the CPU (llama_tiny;
#                                                  # CUDA-only checks SKIPPED): run it before spending GPU time
#   SKIP="bench train_deepspeed_*" bash scripts/gpu_smoke.sh     # leave steps out (glob patterns)
#   ONLY="train_fsdp_* generate" bash scripts/gpu_smoke.sh       # only these (gpu_check, deps, data always run)
#   COD_TRAIN_CACHE=.smoke_cache bash scripts/gpu_smoke.sh --prepare   # CPU, with network: build the data only
#
# Steps: gpu_check (torch, CUDA, GPU name; exit 2 with one `error:` line when no GPU is visible), deps, data
# (bundled sample + train:8192 BPE + token shards, offline once cached), then llama_130m pre-training runs of
# $STEPS steps on data=sample: distributed=single / fsdp (torchrun, 1 process) / deepspeed ZeRO-2 and ZeRO-3
# (deepspeed launcher, 1 GPU), in train.precision=bf16-mixed and (but DeepSpeed, which refuses it) bf16-pure,
# plus distributed.compile=true, distributed.activation_checkpointing=full, FSDP2 + compile + activation
# checkpointing, residual=mhc in bf16, and DDP / FSDP2 on 2 GPUs (SKIPPED when fewer are visible); every run is
# checked from run_dir/metrics.jsonl (finite loss that fell by at least $MIN_DROP, every step logged, finite
# eval loss, hf/ exported). Then: fused_loss (chunked loss == plain loss and gradients on CUDA, bf16-mixed and
# bf16-pure; the lm_head gradient's addmm(out_dtype=fp32) against a float64 reference), mhc_memory (peak memory
# and saved-for-backward bytes of one bf16-mixed forward+backward, residual=mhc / hc vs pre_ln), liger_kernels
# (SKIPPED when liger_kernel is not importable), plan_memory (cod-plan's planned peak of $MODEL on one GPU, bf16-mixed
# and bf16-pure, over torch.cuda.max_memory_allocated of two real steps: the ratio; FAILED when off by more than
# PLAN_MAX_ERR=0.25; CUDA-only), generate (greedy generate() with cache == without cache == a
# manual argmax loop, on the exported hf/, loaded as the class its config.json names), host_syncs_single (no
# synchronizing CUDA call inside an optimizer step between logging steps, torch.cuda.set_sync_debug_mode), bench
# (scripts/bench.py, ours vs LlamaForCausalLM at 130m and 1b -> $OUT/bench.json).
# Writes $OUT/smoke_summary.json (status and wall time per step) and prints a table. Exit 0 when nothing
# failed, 1 when a step FAILED (a `FAILED: step NAME` line each), 2 when no GPU is visible.
#
# Offline machines: the bundled sample is built from two packages on PyPI. Build it (and the tokenizer and
# token shards) where there is network with --prepare into a directory, bring that directory along and point
# COD_TRAIN_CACHE at it; or set COD_TRAIN_SAMPLE_FIND_LINKS=DIR holding llamafactory-0.9.5.tar.gz and the
# gensim 4.4.0 wheel. The GPU machine needs torch (CUDA), the project's dependencies and deepspeed;
# liger-kernel is optional.
#
# Environment (defaults): OUT=smoke_out PYTHON=.venv/bin/python if present, else python3; DEVICE=cuda (cpu: the
# dry run, with MODEL=llama_tiny STEPS=12 SEQ=32 GBS=4 MBS=2 LR=3e-3 MIN_DROP=0.2); MODEL=llama_130m STEPS=30 GBS=16
# MBS=8 SEQ=256 LR=1.0e-3 WARMUP=5 MIN_DROP=0.5; MHC_MAX_RATIO=1.6 (mhc_memory fails above it); STEP_TIMEOUT=180 BENCH_TIMEOUT=300 (seconds, per step);
# BENCH_SIZES=130m,1b BENCH_ARGS="--modes eager --warmup 2 --pairs 3 --steps 5 --mem-steps 2";
# KEEP_GOING=1 (0: stop at the first failure); KEEP_CKPT=0 (1: keep each run's checkpoints/);
# DS_LAUNCHER=auto (deepspeed launcher: scripts/train_deepspeed.sh when `deepspeed` is on PATH, else
# python -m deepspeed.launcher.runner) | torchrun; VERBOSE=0 (1: step output on the console too).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
PREPARE=0
case "${1:-}" in
  "") ;;
  --prepare) PREPARE=1 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "error: unknown argument '$1' (options: --prepare, --help)" >&2; exit 2 ;;
esac

OUT=${OUT:-smoke_out}
[[ $OUT == /* ]] || OUT=$PWD/$OUT
if [[ -n ${COD_TRAIN_CACHE:-} && $COD_TRAIN_CACHE != /* ]]; then export COD_TRAIN_CACHE=$PWD/$COD_TRAIN_CACHE; fi
cd "$(dirname "$0")/.."
REPO=$PWD
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=$(command -v python3 || command -v python || echo python3); fi

DEVICE=${DEVICE:-cuda}
case $DEVICE in
  cuda) MODEL=${MODEL:-llama_130m} GBS=${GBS:-16} MBS=${MBS:-8} SEQ=${SEQ:-256} LR=${LR:-1.0e-3} ;;
  cpu) MODEL=${MODEL:-llama_tiny} GBS=${GBS:-4} MBS=${MBS:-2} SEQ=${SEQ:-32} LR=${LR:-3.0e-3} STEPS=${STEPS:-12}
    MIN_DROP=${MIN_DROP:-0.2} DS_LAUNCHER=torchrun ;;  # bf16 on a CPU is slow: a few small steps
  *) echo "error: DEVICE=$DEVICE (cuda | cpu)" >&2; exit 2 ;;
esac
MHC_MAX_RATIO=${MHC_MAX_RATIO:-1.6}
STEPS=${STEPS:-30} WARMUP=${WARMUP:-5}
export DEVICE MODEL SEQ MHC_MAX_RATIO
MIN_DROP=${MIN_DROP:-0.5} STEP_TIMEOUT=${STEP_TIMEOUT:-180} BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
BENCH_SIZES=${BENCH_SIZES:-130m,1b}
BENCH_ARGS=${BENCH_ARGS:---modes eager --warmup 2 --pairs 3 --steps 5 --mem-steps 2}
KEEP_GOING=${KEEP_GOING:-1} KEEP_CKPT=${KEEP_CKPT:-0} DS_LAUNCHER=${DS_LAUNCHER:-auto} VERBOSE=${VERBOSE:-0}
SKIP=${SKIP:-} ONLY=${ONLY:-}

now() { date +%s.%N; }
T_START=$(now)

# --- 1. a CUDA GPU must be visible: else one `error:` line and exit 2, before anything else -------------------
gpu_check() {
  local err rc=0 info
  err=$(mktemp)
  info=$("$PY" -W ignore - 2>"$err" <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__}, " + (f"built with CUDA {torch.version.cuda} but no device visible"
          if torch.version.cuda else "a CPU-only build"))
    sys.exit(3)
p = torch.cuda.get_device_properties(0)
x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
float((x @ x).float().sum())  # the device computes
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {p.name} ({torch.cuda.device_count()} visible, "
      f"{p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, bf16 {torch.cuda.is_bf16_supported()})")
PY
  ) || rc=$?
  if (( rc == 3 )); then
    echo "error: no CUDA GPU visible to $PY ($info); this smoke test needs one NVIDIA GPU" >&2
  elif (( rc != 0 )); then
    echo "error: $PY cannot run torch on a GPU: $(grep -v '^\s*$' "$err" | tail -n 1)" >&2
  fi
  rm -f "$err"
  (( rc == 0 )) || exit 2
  GPU_INFO=$info
}
GPU_INFO=""
if (( PREPARE )); then :
elif [[ $DEVICE == cpu ]]; then
  GPU_INFO="CPU dry run ($("$PY" -c 'import os, torch; print(f"torch {torch.__version__}, {os.cpu_count()} cores")'
  2>/dev/null || echo "torch not importable")): CUDA-only checks are SKIPPED"
else gpu_check; fi
T_GPU=$(now)

mkdir -p "$OUT/logs" "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs RUNS=$OUT/runs TSV=$OUT/logs/steps.tsv
: >"$TSV"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export WANDB_MODE=disabled HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
export TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
# Offline, pip (which builds the bundled sample) should give up at once instead of retrying for minutes.
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-10} PIP_RETRIES=${PIP_RETRIES:-0}
TIMEOUT=(timeout -k 20 "$STEP_TIMEOUT")

# --- the step helper ----------------------------------------------------------------------------------------
declare -A STATUS=()
FINISHED=0

record() {  # record NAME STATUS SECONDS DETAIL
  STATUS[$1]=$2
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(tr '\t\n' '  ' <<<"$4" | sed 's/ *$//')" >>"$TSV"
}

selected() {  # ONLY / SKIP: space-separated glob patterns over step names
  local name=$1 pat pats
  read -ra pats <<<"$SKIP"
  for pat in ${pats[@]+"${pats[@]}"}; do [[ $name == $pat ]] && return 1; done
  [[ -z $ONLY ]] && return 0
  read -ra pats <<<"$ONLY"
  for pat in "${pats[@]}"; do [[ $name == $pat ]] && return 0; done
  return 1
}

detail() { echo "$*" >>"$DETAIL"; }            # one line for the summary table (inside a step)
skip_step() { detail "$*"; exit 77; }            # inside a step: end it as SKIPPED
needs_cuda() { [[ $DEVICE == cuda ]] || skip_step "needs CUDA (DEVICE=$DEVICE dry run)"; }
gpus() { "$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0; }

# step NAME [--needs STEP,...] CMD... : run CMD (a function or a program) in a subshell with `set -e`, its
# output in $OUT/logs/NAME.log, timed; PASS / SKIPPED (exit 77) / FAILED are recorded and printed.
step() {
  local name=$1 needs="" dep t0 rc secs info
  shift
  if [[ ${1:-} == --needs ]]; then needs=$2; shift 2; fi
  if [[ ${FORCE_STEP:-0} != 1 ]] && ! selected "$name"; then
    record "$name" SKIPPED 0 "not selected (ONLY/SKIP)"; printf 'SKIPPED %-30s not selected\n' "$name"; return 0
  fi
  for dep in ${needs//,/ }; do
    if [[ ${STATUS[$dep]:-} != PASS ]]; then
      record "$name" SKIPPED 0 "needs $dep (${STATUS[$dep]:-not run})"
      printf 'SKIPPED %-30s needs %s (%s)\n' "$name" "$dep" "${STATUS[$dep]:-not run}"; return 0
    fi
  done
  echo "==> $name"
  export DETAIL=$LOGS/$name.detail
  rm -f "$DETAIL"
  t0=$(now)
  set +e
  if [[ $VERBOSE == 1 ]]; then
    (set -e; "$@") 2>&1 | tee "$LOGS/$name.log"; rc=${PIPESTATUS[0]}
  else
    (set -e; "$@") >"$LOGS/$name.log" 2>&1; rc=$?
  fi
  set -e
  secs=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  info=$(awk 'NR > 1 { printf "; " } { printf "%s", $0 }' "$DETAIL" 2>/dev/null || true)
  if (( rc == 0 )); then
    record "$name" PASS "$secs" "$info"; printf 'PASS    %-30s %6ss  %s\n' "$name" "$secs" "$info"
  elif (( rc == 77 )); then
    record "$name" SKIPPED "$secs" "$info"; printf 'SKIPPED %-30s %6ss  %s\n' "$name" "$secs" "$info"
  else
    [[ $VERBOSE == 1 ]] || tail -n 40 "$LOGS/$name.log" | sed 's/^/    | /'
    # no explanation from the step itself: the last error-looking line of its output
    [[ -n $info ]] || info=$(grep -E 'Error|Exception|error:|Traceback' "$LOGS/$name.log" | tail -n 1 | cut -c1-200 || true)
    (( rc == 124 || rc == 137 )) && info="timed out; ${info}"
    record "$name" FAILED "$secs" "exit $rc; ${info:-see the log}"
    echo "FAILED: step $name (exit $rc after ${secs}s): ${info:-see $LOGS/$name.log}"
    if [[ $KEEP_GOING != 1 ]]; then finish; fi
  fi
}

finish() {  # write $OUT/smoke_summary.json, print the table, exit 0 / 1
  (( FINISHED )) && return 0
  FINISHED=1
  trap - EXIT
  local rc=0
  SMOKE_T0=$T_START GPU_INFO=$GPU_INFO DEVICE=$DEVICE MODEL=$MODEL STEPS=$STEPS GBS=$GBS MBS=$MBS SEQ=$SEQ LR=$LR WARMUP=$WARMUP \
    MIN_DROP=$MIN_DROP BENCH_SIZES=$BENCH_SIZES BENCH_ARGS=$BENCH_ARGS DS_LAUNCHER=$DS_LAUNCHER SKIP=$SKIP ONLY=$ONLY \
    "$PY" - "$TSV" "$OUT" <<'PY' || rc=$?
import json, os, sys, time
tsv, out = sys.argv[1], sys.argv[2]
steps = []
for line in open(tsv, encoding="utf-8"):
    name, status, secs, detail = (line.rstrip("\n").split("\t") + [""] * 4)[:4]
    log = os.path.join(out, "logs", f"{name}.log")
    steps.append({"name": name, "status": status, "seconds": float(secs or 0), "detail": detail,
                  "log": log if os.path.exists(log) else None})
failed = [s["name"] for s in steps if s["status"] == "FAILED"]
keys = ("DEVICE", "MODEL", "STEPS", "GBS", "MBS", "SEQ", "LR", "WARMUP", "MIN_DROP", "BENCH_SIZES", "BENCH_ARGS", "DS_LAUNCHER",
        "SKIP", "ONLY", "COD_TRAIN_CACHE")
summary = {"ok": not failed, "failed": failed, "gpu": os.environ.get("GPU_INFO", ""),
           "wall_s": round(time.time() - float(os.environ["SMOKE_T0"]), 1), "out": out,
           "settings": {k: os.environ.get(k, "") for k in keys}, "steps": steps}
path = os.path.join(out, "smoke_summary.json")
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
print(f"\n{'step':<30} {'status':<8} {'time':>7}  detail")
for s in steps:
    d = s["detail"] if len(s["detail"]) <= 150 else s["detail"][:147] + "..."
    print(f"{s['name']:<30} {s['status']:<8} {s['seconds']:>6.1f}s  {d}")
n = {k: sum(s["status"] == k for s in steps) for k in ("PASS", "SKIPPED", "FAILED")}
print(f"\ntotal {summary['wall_s']:.0f}s: {n['PASS']} passed, {n['SKIPPED']} skipped, {n['FAILED']} failed -> {path}")
if failed:
    print("FAILED: " + ", ".join(failed))
PY
  if (( rc != 0 )); then echo "FAILED: could not write $OUT/smoke_summary.json" >&2; exit 1; fi
  for s in "${!STATUS[@]}"; do [[ ${STATUS[$s]} == FAILED ]] && exit 1; done
  exit 0
}
trap 'echo "FAILED: the smoke script itself stopped (exit $?) before the end" >&2; finish' EXIT

# --- steps --------------------------------------------------------------------------------------------------
have() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

deps() {
  "$PY" - <<'PY'
import importlib, importlib.metadata as md, importlib.util, os, sys
need = ["torch", "transformers", "tokenizers", "safetensors", "omegaconf", "hydra", "filelock", "numpy", "tqdm",
        "huggingface_hub", "cod_train", "cod_train.cli.pretrain", "cod_train.data", "cod_train.engine.parallelize",
        "cod_train.train.loop", "cod_train.eval.depth_train"]
missing, versions = [], {}
for mod in need:
    try:
        m = importlib.import_module(mod)
        versions[mod] = getattr(m, "__version__", "")
    except Exception as e:  # noqa: BLE001
        missing.append(f"{mod} ({type(e).__name__}: {e})")
optional = {}
for dist, mod in (("deepspeed", "deepspeed"), ("liger-kernel", "liger_kernel"), ("triton", "triton")):
    try:
        optional[mod] = md.version(dist) if importlib.util.find_spec(mod) else "missing"
    except md.PackageNotFoundError:
        optional[mod] = "present (version unknown)"
for k, v in {**versions, **optional}.items():
    print(f"{k:<32} {v}")
line = (f"torch {versions.get('torch', '?')}, transformers {versions.get('transformers', '?')}, "
        f"hydra {versions.get('hydra', '?')}; " + ", ".join(f"{k} {v}" for k, v in optional.items()))
with open(os.environ["DETAIL"], "a") as f:
    f.write((f"missing: {'; '.join(missing)}" if missing else line) + "\n")
sys.exit(1 if missing else 0)
PY
}

data() {  # the bundled sample, the train:8192 tokenizer and the token shards, exactly as cod-pretrain builds them
  "$PY" - <<'PY'
import os, sys, time
from omegaconf import OmegaConf
from cod_train.config import DataConfig, to_typed
from cod_train.data import build_tokenizer
from cod_train.data.build import local_corpus
from cod_train.data.common import cache_root
from cod_train.data.sample import ensure_sample

def detail(msg):
    with open(os.environ["DETAIL"], "a") as f:
        f.write(msg + "\n")

cfg = to_typed(OmegaConf.load("configs/data/sample.yaml"), DataConfig)
t0 = time.time()
try:
    sample = ensure_sample(cfg.cache_dir)
except Exception as e:  # noqa: BLE001
    print(f"{type(e).__name__}: {e}")
    detail(f"no bundled sample in {cache_root(cfg.cache_dir)} and it cannot be built here ({type(e).__name__}); "
           "build it with network: COD_TRAIN_CACHE=DIR bash scripts/gpu_smoke.sh --prepare, then run with "
           "COD_TRAIN_CACHE=DIR (or set COD_TRAIN_SAMPLE_FIND_LINKS)")
    sys.exit(1)
tok = build_tokenizer(cfg)
corpus = local_corpus(cfg, tok)
print(f"sample {sample}\ntokenizer {tok.name_or_path} ({len(tok)} tokens)\ntoken shards {corpus}")
detail(f"cache {cache_root(cfg.cache_dir)}: sample, {cfg.tokenizer} tokenizer ({len(tok)} tokens), token shards "
       f"({time.time() - t0:.0f}s)")
PY
}

check_run() {  # check_run RUN_DIR: metrics.jsonl says the run trained, the loss is finite and fell; hf/ exported
  "$PY" - "$1" "$STEPS" "$MIN_DROP" <<'PY'
import json, math, os, statistics, sys
from pathlib import Path
run_dir, steps, min_drop = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

def detail(msg):
    with open(os.environ["DETAIL"], "a") as f:
        f.write(msg + "\n")

def fail(msg):
    print(f"check failed: {msg}")
    detail(msg)
    sys.exit(1)

def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

path = run_dir / "metrics.jsonl"
if not path.exists():
    fail(f"no {path}")
rows = []
for i, line in enumerate(path.read_text().splitlines(), 1):
    try:
        rows.append(json.loads(line))
    except ValueError:
        fail(f"{path}:{i} is not JSON")
train = [r for r in rows if "loss" in r]
if not train:
    fail(f"{path} has no training rows")
print("loss by step: " + " ".join(f"{r['step']}:{r['loss']:.3f}" if finite(r["loss"]) else f"{r['step']}:{r['loss']}"
                                  for r in train))
bad = [r["step"] for r in train if not finite(r["loss"]) or r.get("skipped")]
if bad:
    fail(f"non-finite or skipped loss at step(s) {bad[:8]}")
if train[-1].get("nonfinite_skipped"):
    fail(f"{train[-1]['nonfinite_skipped']} non-finite step(s) skipped")
bad_gn = [r["step"] for r in train if r.get("grad_norm") is not None and not finite(r["grad_norm"])]
if bad_gn:
    fail(f"non-finite grad_norm at step(s) {bad_gn[:8]}")
if train[-1]["step"] != steps or len(train) != steps:
    fail(f"{len(train)} training rows, last step {train[-1]['step']}; expected every step 1..{steps} (stopped early?)")
first, last = train[0]["loss"], statistics.fmean(r["loss"] for r in train[-3:])
if not last < first - min_drop:
    fail(f"loss did not fall by {min_drop}: step 1 {first:.3f} -> last 3 steps {last:.3f}")
evals = [r for r in rows if "eval_loss" in r]
if not evals or not finite(evals[-1]["eval_loss"]):
    fail("no finite eval_loss row")
hf = run_dir / "hf"
if not (hf / "config.json").exists() or not list(hf.glob("*.safetensors")):
    fail(f"no HF export in {hf}")
timed = [r for r in train if finite(r.get("tokens_per_s"))][2:] or [r for r in train if finite(r.get("tokens_per_s"))]
tps = statistics.median(r["tokens_per_s"] for r in timed) if timed else float("nan")
mfus = [r["mfu"] for r in timed if finite(r.get("mfu"))]
mem = max((r["peak_mem_gb"] for r in train if finite(r.get("peak_mem_gb"))), default=float("nan"))
msg = (f"loss {first:.2f} -> {last:.2f}, eval {evals[-1]['eval_loss']:.2f}, {tps:,.0f} tok/s"
       + (f", MFU {statistics.median(mfus):.1%}" if mfus else "") + f", peak {mem:.1f} GiB")
print(msg)
detail(msg)
PY
}

# train NAME LAUNCHER OVERRIDES... : one $MODEL run on the bundled sample into $RUNS/NAME, then check_run.
# LAUNCHER: python | torchrun (1 process) | torchrun2 (2 processes: 2 GPUs, SKIPPED with fewer) | deepspeed.
train() {
  local name=$1 launcher=$2 run_dir=$RUNS/$1
  shift 2
  rm -rf "$run_dir"
  local args=("model=$MODEL" data=sample "data.seq_len=$SEQ" "device=$DEVICE" "run_dir=$run_dir" resume=none logger=none
    "train.max_steps=$STEPS" "train.global_batch_size=$GBS" "train.micro_batch_size=$MBS" "train.lr=$LR"
    "train.warmup_steps=$WARMUP" train.log_every=1 train.eval_every=0 train.eval_tokens=8192 train.ckpt_every=0
    train.keep_last=1 train.diag_every=10 train.export_hf=true ++model.fused_loss=true "$@")
  case $launcher in
    python) set -x; "${TIMEOUT[@]}" "$PY" -m cod_train.cli.pretrain "${args[@]}" ;;
    torchrun)
      set -x
      "${TIMEOUT[@]}" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m cod_train.cli.pretrain "${args[@]}" ;;
    torchrun2)
      if [[ $DEVICE == cuda ]] && (( $(gpus) < 2 )); then skip_step "needs 2 GPUs ($(gpus) visible)"; fi
      set -x
      "${TIMEOUT[@]}" "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m cod_train.cli.pretrain "${args[@]}" ;;
    deepspeed)
      have deepspeed || { detail "deepspeed is not importable (pip install --no-build-isolation deepspeed)"; exit 1; }
      if [[ $DS_LAUNCHER == torchrun ]]; then
        set -x
        "${TIMEOUT[@]}" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m cod_train.cli.pretrain "${args[@]}"
      elif command -v deepspeed >/dev/null; then
        set -x
        NGPUS=1 "${TIMEOUT[@]}" bash scripts/train_deepspeed.sh "${args[@]}"
      else
        set -x
        "${TIMEOUT[@]}" "$PY" -m deepspeed.launcher.runner --num_gpus 1 --module cod_train.cli.pretrain "${args[@]}"
      fi ;;
    *) echo "unknown launcher $launcher"; exit 1 ;;
  esac
  { set +x; } 2>/dev/null
  check_run "$run_dir"
  [[ $KEEP_CKPT == 1 ]] || rm -rf "$run_dir/checkpoints"
}
train_step() { local name=$1; shift; step "train_$name" --needs data train "$name" "$@"; }

host_syncs() {  # no synchronizing CUDA call inside an optimizer step (torch.cuda.set_sync_debug_mode), per engine
  local engine=$1 run_dir=$RUNS/host_syncs_$1
  needs_cuda
  rm -rf "$run_dir"
  "${TIMEOUT[@]}" "$PY" - "$engine" "$run_dir" "$SEQ" <<'PY'
import sys, warnings
import torch
from cod_train.train import loop

engine, run_dir, seq = sys.argv[1:4]
syncs: list[str] = []
step = loop.Trainer.step

def watched_step(self, batch):  # only the step: logging steps read the device on purpose, after it
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return step(self, batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        syncs.extend(str(w.message)[:160] for w in caught if "synchroniz" in str(w.message))

loop.Trainer.step = watched_step
sys.argv = ["cod-pretrain", "model=llama_130m", "data=sample", f"data.seq_len={seq}", "device=cuda",
            f"run_dir={run_dir}", "resume=none", "logger=none", "train.max_steps=12", "train.global_batch_size=16",
            "train.micro_batch_size=8", "train.log_every=5", "train.eval_every=0", "train.ckpt_every=0",
            "train.diag_every=0", "train.export_hf=false", "train.precision=bf16-mixed", f"distributed={engine}"]
from cod_train.cli.pretrain import main
try:
    main()
except SystemExit as e:
    if e.code not in (0, None):
        raise
print(f"{len(syncs)} synchronizing calls inside 12 optimizer steps ({engine})")
for s in sorted(set(syncs))[:5]:
    print("  ", s)
sys.exit(1 if syncs else 0)
PY
  detail "no synchronizing CUDA call inside an optimizer step ($engine)"
}

fused_loss() {  # chunked fused loss == plain loss and gradients on CUDA (GPU chunk size, bf16 paths)
  needs_cuda
  "$PY" - <<'PY'
import os, sys
import torch
from omegaconf import OmegaConf
from cod_train.config import ModelConfig
from cod_train.model import build_model
from cod_train.model.loss import default_chunk_size

torch.backends.cuda.matmul.allow_tf32 = False
raw = OmegaConf.load("configs/model/llama_130m.yaml")
raw.merge_with({"norm_type": "pre_ln", "mix_ln_ratio": 0.25})
torch.manual_seed(0)
model = build_model(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))).cuda().train()
V, B, T = model.config.vocab_size, 16, 256  # 4096 rows: two chunks of the GPU default
x = torch.randint(0, V, (B, T), device="cuda")
y = torch.randint(0, V, (B, T), device="cuda")
y[0, :37] = -100
y[5, -11:] = -100
n = int((y != -100).sum())

def run(fused, chunk=0, autocast=True):
    model.config.fused_loss, model.config.loss_chunk_size = fused, chunk
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=n, use_cache=False)
    assert (out.logits is None) == fused, "fused_loss=true must not materialize logits in training"
    out.loss.backward()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    g = torch.cat([p.grad.float().flatten() for p in model.parameters()])
    assert torch.isfinite(g).all() and torch.isfinite(out.loss), "non-finite loss or gradient"
    return out.loss.item(), g, peak

def rel(a, b):
    return ((a - b).norm() / b.norm()).item()

problems = []
def check(ok, msg):
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        problems.append(msg)

print(f"default GPU chunk: {default_chunk_size(torch.device('cuda'))} rows; batch {B}x{T}, vocab {V}")
ref_loss, ref_g, ref_mem = run(False, autocast=False)  # fp32 plain reference
pl_loss, pl_g, pl_mem = run(False)
fu_loss, fu_g, fu_mem = run(True)
od_loss, od_g, _ = run(True, chunk=1000)  # uneven chunks
print(f"loss: fp32 {ref_loss:.5f}  bf16 plain {pl_loss:.5f}  bf16 fused {fu_loss:.5f}  fused chunk=1000 {od_loss:.5f}")
print(f"peak MiB above weights (fwd+bwd): plain {pl_mem:.0f}, fused {fu_mem:.0f}")
check(abs(fu_loss - pl_loss) <= 1e-3 * abs(pl_loss), f"bf16-mixed loss fused == plain ({fu_loss:.5f} vs {pl_loss:.5f})")
check(abs(od_loss - pl_loss) <= 1e-3 * abs(pl_loss), f"uneven chunks: loss {od_loss:.5f} vs {pl_loss:.5f}")
e_fp, e_fo, e_pl = rel(fu_g, pl_g), rel(od_g, pl_g), rel(pl_g, ref_g)
check(e_fp < 2e-2 and e_fo < 2e-2, f"grads fused vs plain: rel err {e_fp:.2e} (chunk 1000: {e_fo:.2e})")
check(rel(fu_g, ref_g) <= 1.5 * e_pl + 2e-3,
      f"vs fp32: fused grad err {rel(fu_g, ref_g):.2e} <= 1.5 x plain's {e_pl:.2e} + 2e-3")
check(abs(fu_loss - ref_loss) <= 1.5 * abs(pl_loss - ref_loss) + 1e-3,
      f"vs fp32: fused loss err {abs(fu_loss - ref_loss):.2e}, plain's {abs(pl_loss - ref_loss):.2e}")
model.to(torch.bfloat16)  # bf16-pure: bf16 weights, no autocast
bp_loss, bp_g, _ = run(False, autocast=False)
bf_loss, bf_g, _ = run(True, autocast=False)
check(abs(bf_loss - bp_loss) <= 5e-3 * abs(bp_loss) and rel(bf_g, bp_g) < 5e-2,
      f"bf16-pure fused vs plain: loss {bf_loss:.4f} vs {bp_loss:.4f}, grad rel err {rel(bf_g, bp_g):.2e}")
# The lm_head gradient's CUDA path: bf16 x bf16 summed into the fp32 accumulator (addmm with out_dtype=fp32).
from cod_train.model.loss import _accumulate_grad_w
d = model.config.hidden_size
gl = torch.randn(3000, V, device="cuda") * 1e-3
hc = torch.randn(3000, d, device="cuda").to(torch.bfloat16)
acc = torch.randn(V, d, device="cuda")
want = acc.double() + gl.to(torch.bfloat16).double().t() @ hc.double()
_accumulate_grad_w(acc, gl, hc)
e_mm = ((acc.double() - want).norm() / want.norm()).item()
check(acc.dtype == torch.float32 and e_mm < 1e-5, f"addmm(out_dtype=fp32) into the fp32 lm_head grad: rel err {e_mm:.1e}")
with open(os.environ["DETAIL"], "a") as f:
    f.write((f"{len(problems)} check(s) failed: {problems[0]}" if problems else
             f"loss fused {fu_loss:.4f} == plain {pl_loss:.4f}, grad rel err {e_fp:.1e}; "
             f"peak {fu_mem:.0f} vs {pl_mem:.0f} MiB") + "\n")
sys.exit(1 if problems else 0)
PY
}

liger_kernels() {  # model.use_kernels=true: Liger's kernels match the plain model, then a training run with them
  needs_cuda
  have liger_kernel || skip_step "liger_kernel is not importable (pip install liger-kernel); use_kernels=true would run the plain path"
  "$PY" - <<'PY'
import os, sys
import torch
from omegaconf import OmegaConf
from cod_train.config import ModelConfig
from cod_train.model import build_model, kernels

raw = OmegaConf.load("configs/model/llama_130m.yaml")
raw.merge_with({"norm_type": "pre_ln", "mix_ln_ratio": 0.25})
mcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))
torch.manual_seed(0)
plain = build_model(mcfg).cuda().train()
liger = build_model(mcfg, use_kernels=True).cuda().train()
liger.load_state_dict(plain.state_dict())
assert kernels.wanted(liger.config) and not kernels.wanted(plain.config), "use_kernels did not switch Liger on"
V = plain.config.vocab_size
x = torch.randint(0, V, (8, 256), device="cuda")
y = torch.randint(0, V, (8, 256), device="cuda")
y[0, :20] = -100
n = int((y != -100).sum())
res = {}
for name, m in (("plain", plain), ("liger", liger)):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(input_ids=x, labels=y, shift_labels=y, num_items_in_batch=n, use_cache=False)
    out.loss.backward()
    g = torch.cat([p.grad.float().flatten() for p in m.parameters()])
    m.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = m(input_ids=x).logits.float()
    res[name] = (out.loss.item(), g, logits)
(lp, gp, zp), (ll, gl, zl) = res["plain"], res["liger"]
g_err, z_err = ((gl - gp).norm() / gp.norm()).item(), ((zl - zp).norm() / zp.norm()).item()
msg = f"Liger vs plain: loss {ll:.4f} vs {lp:.4f}, grad rel err {g_err:.1e}, logits rel err {z_err:.1e}"
print(msg)
ok = abs(ll - lp) <= 5e-3 * abs(lp) and g_err < 5e-2 and z_err < 2e-2 and torch.isfinite(gl).all()
with open(os.environ["DETAIL"], "a") as f:
    f.write(msg + ("" if ok else " (out of tolerance)") + "\n")
sys.exit(0 if ok else 1)
PY
  train liger_kernels python train.precision=bf16-mixed distributed=single ++model.use_kernels=true
}

generate() {  # greedy generate() on GPU from an exported hf/: with cache == without cache == argmax loop
  "$PY" - "$1" <<'PY'
import copy, json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import cod_train  # noqa: F401  (registers cod_llama with the Auto classes)

hf, new, dev = sys.argv[1], 24, os.environ["DEVICE"]
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
tok = AutoTokenizer.from_pretrained(hf)
model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32, trust_remote_code=True).to(dev).eval()
named = json.load(open(os.path.join(hf, "config.json")))["architectures"][0]
assert type(model).__name__ == named, f"loaded {type(model).__name__}, config.json names {named}"
texts = ["The history of the city begins in", "In 1999, the company announced that"]
ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
k = min(len(i) for i in ids)
prompt = torch.tensor([i[:k] for i in ids], device=dev)
gc = copy.deepcopy(model.generation_config)
gc.eos_token_id, gc.do_sample, gc.max_new_tokens, gc.pad_token_id = None, False, new, tok.pad_token_id
gc.return_dict_in_generate, gc.output_logits = True, True
outs = {}
for use_cache in (True, False):
    gc.use_cache = use_cache
    outs[use_cache] = model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gc)
seq = prompt
with torch.no_grad():
    for _ in range(new):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
cached, uncached = outs[True].sequences, outs[False].sequences
for row in cached:
    print(repr(tok.decode(row)))
lc, lu = torch.stack(outs[True].logits), torch.stack(outs[False].logits)
diff = (lc - lu).abs().max().item()
problems = []
if cached.shape != (len(texts), k + new):
    problems.append(f"generated shape {tuple(cached.shape)}, expected {(len(texts), k + new)}")
if not torch.equal(cached, uncached):
    problems.append("greedy tokens with cache != without cache")
if not torch.equal(cached, seq):
    problems.append("greedy generate != manual argmax loop")
if not diff <= 2e-3 + 1e-4 * lu.abs().max().item():
    problems.append(f"step logits with/without cache differ by {diff:.2e}")
msg = (f"{len(texts)}x{new} tokens: cache == no cache == argmax loop, logits max diff {diff:.1e}" if not problems
       else "; ".join(problems))
print(msg)
with open(os.environ["DETAIL"], "a") as f:
    f.write(msg + "\n")
sys.exit(1 if problems else 0)
PY
}

mhc_memory() {  # one bf16-mixed forward+backward of $MODEL: residual=mhc / hc vs pre_ln, peak and saved bytes
  "$PY" - <<'PY'
import os, sys
import torch
from omegaconf import OmegaConf
from cod_train.config import ModelConfig
from cod_train.model import build_model

dev, name, seq = os.environ["DEVICE"], os.environ["MODEL"], int(os.environ["SEQ"])
max_ratio = float(os.environ["MHC_MAX_RATIO"])
base = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(f"configs/model/{name}.yaml"))
B = 8 if dev == "cuda" else 2

def measure(**overrides):
    cfg = OmegaConf.to_object(OmegaConf.merge(base, overrides))
    torch.manual_seed(0)
    model = build_model(cfg, 8192).to(dev).train()
    x = torch.randint(0, model.config.vocab_size, (B, seq), device=dev)
    saved = {}
    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    if dev == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(dev, dtype=torch.bfloat16):
        out = model(input_ids=x, labels=x, shift_labels=x, use_cache=False)
    out.loss.backward()
    peak = (torch.cuda.max_memory_allocated() - start) / 2**30 if dev == "cuda" else float("nan")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    acts = sum(n for ptr, n in saved.items() if ptr not in params) / 2**30
    return peak, acts

rows = {"pre_ln": measure(), "hc": measure(residual="hc"), "mhc": measure(residual="mhc")}
for k, (peak, acts) in rows.items():
    print(f"{k:8} peak {peak:.3f} GiB, saved activations {acts:.3f} GiB")
ratio = rows["mhc"][1] / rows["pre_ln"][1]
msg = (f"{name} B={B} T={seq} bf16-mixed: saved activations mhc {ratio:.2f}x / hc {rows['hc'][1] / rows['pre_ln'][1]:.2f}x"
       f" pre_ln" + (f", peak mhc {rows['mhc'][0] / rows['pre_ln'][0]:.2f}x" if dev == "cuda" else ""))
print(msg)
with open(os.environ["DETAIL"], "a") as f:
    f.write(msg + ("" if ratio <= max_ratio else f" (above {max_ratio}x)") + "\n")
sys.exit(0 if ratio <= max_ratio else 1)
PY
}

plan_memory() {  # cod-plan's planned peak of $MODEL (one process) vs torch.cuda.max_memory_allocated, as a ratio
  needs_cuda
  "$PY" - <<'PY'
import os, sys
import torch
from hydra import compose, initialize_config_dir
from cod_train.config import PretrainConfig, to_typed
from cod_train.engine.distributed import DistEnv
from cod_train.engine.parallelize import parallelize
from cod_train.model import build_model
from cod_train.runs.app import config_dir
from cod_train.runs.plan import make_plan, planned_vocab
from cod_train.train.optim import build_optimizer

max_err = float(os.environ.get("PLAN_MAX_ERR", "0.25"))
rows = []
for precision in ("bf16-mixed", "bf16-pure"):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = to_typed(compose("pretrain", overrides=[
            f"model={os.environ['MODEL']}", f"data.seq_len={os.environ['SEQ']}", "distributed=single",
            f"train.global_batch_size={os.environ['GBS']}", f"train.micro_batch_size={os.environ['MBS']}",
            f"train.precision={precision}"]), PretrainConfig)
    planned = make_plan(cfg, 1, search=False).step.memory.peak
    vocab, micro = planned_vocab(cfg), cfg.train.micro_batch_size
    accum = cfg.train.global_batch_size // micro
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    env = DistEnv(device=torch.device("cuda", 0))
    engine = parallelize(build_model(cfg.model, vocab), cfg.distributed, env, precision=precision,
                         optimizer_fn=lambda m: build_optimizer(m, cfg.train), micro_batch_size=micro,
                         grad_accum_steps=accum, grad_clip=cfg.train.grad_clip)
    ids = torch.randint(0, vocab, (micro, cfg.data.seq_len), device="cuda")
    for _ in range(2):  # the first step creates Adam's state
        for i in range(accum):
            with engine.accumulate(last=i == accum - 1), engine.autocast():
                loss = engine.model(input_ids=ids, labels=ids, shift_labels=ids, use_cache=False,
                                    num_items_in_batch=micro * cfg.data.seq_len * accum).loss
            engine.backward(loss)
            del loss
        engine.clip_grad_norm()
        engine.optimizer_step(1e-4, torch.zeros((), dtype=torch.bool, device="cuda"))
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated()
    ratio = planned / measured
    rows.append((precision, planned, measured, ratio))
    print(f"{precision}: planned {planned / 2**30:.2f} GiB, max_memory_allocated {measured / 2**30:.2f} GiB, "
          f"ratio {ratio:.3f}")
    del engine, ids
msg = "; ".join(f"{p} plan/measured {r:.3f} ({a / 2**30:.2f}/{b / 2**30:.2f} GiB)" for p, a, b, r in rows)
bad = [p for p, _, _, r in rows if abs(r - 1) > max_err]
with open(os.environ["DETAIL"], "a") as f:
    f.write(msg + (f" (off by more than {max_err:.0%}: {bad})" if bad else "") + "\n")
sys.exit(1 if bad else 0)
PY
}

bench() {  # scripts/bench.py: ours vs LlamaForCausalLM, one training step, tokens/s, MFU and peak memory
  local extra
  needs_cuda
  read -ra extra <<<"$BENCH_ARGS"
  set -x
  timeout -k 20 "$BENCH_TIMEOUT" "$PY" scripts/bench.py --device cuda --precision bf16-mixed --sizes "$BENCH_SIZES" \
    --child-timeout 240 ${extra[@]+"${extra[@]}"} --out "$OUT/bench.json"
  { set +x; } 2>/dev/null
  "$PY" - "$OUT/bench.json" "$BENCH_SIZES" <<'PY'
import json, math, os, sys
res, sizes = json.load(open(sys.argv[1])), sys.argv[2].split(",")
rows, problems = res.get("model_step", []), []
if res.get("failed"):
    problems += [f"{f['size']} {f['mode']}: {f['error']}" for f in res["failed"]]
missing = [s for s in sizes if s not in {r["size"] for r in rows}]
if missing:
    problems.append(f"no result for {missing}")
mem = {(m["size"], m["mode"]): m for m in res.get("memory", [])}
parts = []
for r in rows:
    tps, mfu = r["tokens_per_s"], r.get("mfu", {})
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in tps.values()):
        problems.append(f"{r['size']} {r['mode']}: tokens/s {tps}")
    m = mem.get((r["size"], r["mode"]), {})
    for side in ("ours", "hf"):
        if "error" in m.get(side, {}):
            problems.append(f"{r['size']} {r['mode']} memory ({side}): {m[side]['error']}")
    peak = "/".join(f"{m[s]['peak_mib'] / 1024:.1f}" for s in ("ours", "hf") if "peak_mib" in m.get(s, {}))
    parts.append(f"{r['size']} {r['mode']}: {tps['ours']:,.0f} vs HF {tps['hf']:,.0f} tok/s (x{r['ratio_median']:.2f})"
                 + (f", MFU {mfu['ours']:.0%}/{mfu['hf']:.0%}" if mfu.get("ours") is not None else "")
                 + (f", peak {peak} GiB" if peak else ""))
    print(parts[-1])
with open(os.environ["DETAIL"], "a") as f:
    f.write(("; ".join(problems) if problems else "; ".join(parts)) + "\n")
sys.exit(1 if problems else 0)
PY
}

# --- the run ------------------------------------------------------------------------------------------------
echo "gpu_smoke: $( ((PREPARE)) && echo "--prepare (data only, no GPU)" || echo "$GPU_INFO")"
echo "python $PY; output $OUT; cache ${COD_TRAIN_CACHE:-cod_train default}"
if (( ! PREPARE )); then
  record gpu_check PASS "$(awk -v a="$T_START" -v b="$T_GPU" 'BEGIN { printf "%.1f", b - a }')" "$GPU_INFO"
fi
FORCE_STEP=1 step deps deps
[[ ${STATUS[deps]} == PASS ]] || finish
FORCE_STEP=1 step data data
if (( PREPARE )); then finish; fi

train_step single_bf16-mixed python train.precision=bf16-mixed distributed=single
step generate --needs train_single_bf16-mixed generate "$RUNS/single_bf16-mixed/hf"
step fused_loss fused_loss
step host_syncs_single --needs data host_syncs single
train_step single_bf16-pure python train.precision=bf16-pure distributed=single
train_step act_ckpt_full python train.precision=bf16-mixed distributed=single distributed.activation_checkpointing=full
train_step compile python train.precision=bf16-mixed distributed=single distributed.compile=true
train_step fsdp_bf16-mixed torchrun train.precision=bf16-mixed distributed=fsdp
train_step fsdp_bf16-pure torchrun train.precision=bf16-pure distributed=fsdp
train_step fsdp_compile_ac torchrun train.precision=bf16-mixed distributed=fsdp distributed.compile=true \
  distributed.activation_checkpointing=full
train_step deepspeed_z2_bf16-mixed deepspeed train.precision=bf16-mixed distributed=deepspeed distributed.zero_stage=2
train_step deepspeed_z3_bf16-mixed deepspeed train.precision=bf16-mixed distributed=deepspeed distributed.zero_stage=3
train_step mhc_bf16-mixed python train.precision=bf16-mixed distributed=single residual=mhc
step mhc_memory mhc_memory
step plan_memory --needs data plan_memory
train_step ddp_2gpu torchrun2 train.precision=bf16-mixed distributed=ddp
train_step fsdp_2gpu torchrun2 train.precision=bf16-mixed distributed=fsdp
step liger_kernels --needs data liger_kernels
step bench bench
finish
