#!/usr/bin/env bash
# Several machines with torchrun: run this on every node with the same MASTER_ADDR/MASTER_PORT/RUN_ID.
#   node 0: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/train_multi_node.sh distributed=fsdp ...
#   node 1: NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 scripts/train_multi_node.sh distributed=fsdp ...
# run_dir must be on a filesystem every node sees (checkpoints are written by all ranks).
# Network: NCCL_SOCKET_IFNAME=<iface> and GLOO_SOCKET_IFNAME=<iface> pick the interface the nodes reach each
# other on (gloo, used for host-side sums, otherwise binds to the host name's address, often 127.0.1.1);
# NCCL_DEBUG=WARN to diagnose.
set -euo pipefail
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER_ADDR:?set MASTER_ADDR}"
MASTER_PORT=${MASTER_PORT:-29500}
NPROC=${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 1)')}
# On SIGTERM (preemption) torchrun forwards it to the workers, which save a checkpoint and exit 0; give
# them time to finish writing before torchrun falls back to SIGKILL (its default is 30 s).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}
exec torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NPROC}" \
  --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
  -m cod_train.cli.pretrain "$@"
