#!/usr/bin/env bash
# One machine, N processes (GPUs, or CPU processes with gloo):
#   NPROC=8 scripts/train_single_node.sh experiment=paper_130m norm=lns distributed=fsdp logger=wandb
# All arguments are Hydra overrides for cod-pretrain.
set -euo pipefail
NPROC=${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 1)')}
# On SIGTERM (preemption) torchrun forwards it to the workers, which save a checkpoint and exit 0; give
# them time to finish writing before torchrun falls back to SIGKILL (its default is 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}
exec torchrun --standalone --nproc_per_node="${NPROC}" -m cod_train.cli.pretrain "$@"
