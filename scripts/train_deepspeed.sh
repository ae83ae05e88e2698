#!/usr/bin/env bash
# The deepspeed launcher (one node, or several with a hostfile: "host slots=8" per line).
#   scripts/train_deepspeed.sh distributed=deepspeed distributed.zero_stage=3 experiment=paper_1b \
#     train.precision=bf16-mixed      # DeepSpeed's bf16 mode; the papers' bf16-pure is refused with DeepSpeed
#   HOSTFILE=hosts.txt scripts/train_deepspeed.sh distributed=deepspeed ...
# The launcher's --local_rank argument is consumed by cod-pretrain (LOCAL_RANK).
set -euo pipefail
NGPUS=${NGPUS:-$(python -c 'import torch; print(torch.cuda.device_count() or 1)')}
ARGS=(--num_gpus "${NGPUS}")
if [[ -n "${HOSTFILE:-}" ]]; then ARGS=(--hostfile "${HOSTFILE}"); fi
exec deepspeed "${ARGS[@]}" --module cod_train.cli.pretrain "$@"
