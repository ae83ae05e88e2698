#!/usr/bin/env bash
# The CPU-scale study: Pre-LN, Post-LN, Mix-LN and LNS on a 12-layer tiny model (llama_tiny_deep) over the
# bundled sample, then the depth diagnostics and the comparison report, in under 45 minutes on 2 cores.
#
#   bash scripts/cpu_study.sh                     # or: make study
#   STEPS=200 OUT=runs/quick bash scripts/cpu_study.sh
#
# Writes runs under $OUT and the report + figures under $REPORT (default docs/cpu_study/).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/cpu_study}
REPORT=${REPORT:-docs/cpu_study}
STEPS=${STEPS:-600}
NORMS=${NORMS:-"pre_ln post_ln mix_ln lns"}
export WANDB_MODE=${WANDB_MODE:-disabled} TOKENIZERS_PARALLELISM=false

runs=()
for norm in $NORMS; do
  run="$OUT/$norm"
  runs+=("$run")
  # resume=auto: re-running the script continues (or skips) finished runs instead of starting over.
  "$BIN/cod-pretrain" model=llama_tiny_deep norm="$norm" run_dir="$run" resume=auto \
    train.max_steps="$STEPS" train.warmup_steps=$((STEPS / 10)) train.lr=2e-3 \
    train.eval_every=$((STEPS / 4)) train.ckpt_every=$((STEPS / 4)) train.diag_every=$((STEPS / 12)) \
    train.eval_tokens=65536 logger=none
  "$BIN/cod-eval" checkpoint="$run" downstream.tasks=[] perplexity.eval_tokens=131072
  "$BIN/cod-analyze" checkpoint="$run" analyze.eval_tokens=32768
done

joined=$(IFS=,; echo "${runs[*]}")
"$BIN/cod-report" runs="[$joined]" out="$REPORT" "title='cod-train CPU study: llama_tiny_deep, $STEPS steps per variant'"
echo "report: $REPORT/report.md"
