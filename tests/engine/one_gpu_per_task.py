"""Run as a script: SLURM task 5 of 8 on a node whose tasks each see one GPU (``torch.cuda`` faked: one device,
``set_device`` recorded and refusing any other index like the driver does), through ``init_distributed`` and
DeepSpeed's comm init and engine, as far as a CPU-only torch goes. Prints one JSON line: what each consumer chose.

The process group is a real gloo group of one process (DeepSpeed's ``init_process_group`` call is recorded, then
made with world size 1); the host-side group of ``init_distributed`` is skipped here (it needs the 8 ranks; it is
tested with 2 real processes in test_distributed.py)."""

import functools
import json
import os

import torch
import torch.distributed as dist

os.environ.update(SLURM_PROCID="5", SLURM_NTASKS="8", SLURM_LOCALID="5", SLURM_NTASKS_PER_NODE="8",
                  SLURM_JOB_NODELIST="gpu-a", SLURM_JOB_ID="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
    os.environ.pop(var, None)
seen: dict = {"set_device": []}


def set_device(index):
    index = torch.device(index).index if not isinstance(index, int) else index
    seen["set_device"].append(index)
    if index >= torch.cuda.device_count():
        raise RuntimeError("CUDA error: invalid device ordinal")


torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = set_device
torch.cuda.current_device = lambda: seen["set_device"][-1]

from deepspeed.accelerator import set_accelerator  # noqa: E402
from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator  # noqa: E402

set_accelerator(CUDA_Accelerator())  # DeepSpeed's CUDA code paths (its device_id, its set_device)
real_init_process_group = dist.init_process_group


@functools.wraps(real_init_process_group)  # DeepSpeed passes device_id only if the signature has it
def init_process_group(backend, **kwargs):
    seen["init_process_group"] = {"LOCAL_RANK": os.environ.get("LOCAL_RANK"),
                                  "device_id": str(kwargs.get("device_id"))}
    real_init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=kwargs["timeout"])


dist.init_process_group = init_process_group

from deepspeed.runtime.engine import DeepSpeedEngine  # noqa: E402

from cod_train.config import DistributedConfig  # noqa: E402
from cod_train.engine import distributed  # noqa: E402
from cod_train.engine.engines import deepspeed_config  # noqa: E402

distributed._make_host_group = lambda *args: None
real_set_distributed_vars = DeepSpeedEngine._set_distributed_vars


def set_distributed_vars(self, args):
    seen["engine_local_rank"] = self.local_rank
    real_set_distributed_vars(self, args)
    seen["engine_device"] = str(self.device)


DeepSpeedEngine._set_distributed_vars = set_distributed_vars
dist_cfg = DistributedConfig(engine="deepspeed", backend="gloo", zero_stage=3)
env = distributed.init_distributed(dist_cfg, device="cuda")
seen.update(env_device=str(env.device), env_local_rank=env.local_rank, env_rank=env.rank,
            LOCAL_RANK_after_init=os.environ["LOCAL_RANK"])
import deepspeed  # noqa: E402

model = torch.nn.Linear(4, 4)
config = deepspeed_config(dist_cfg, distributed.DistEnv(device=env.device), precision="fp32", micro_batch_size=1,
                          grad_accum_steps=1, grad_clip=0.0)
try:  # the same call as cod_train's DeepSpeedEngine.setup; a CPU-only torch stops at the first CUDA allocation
    deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config,
                         dist_init_required=False)
    seen["engine_error"] = None
except (AssertionError, RuntimeError) as err:
    seen["engine_error"] = f"{type(err).__name__}: {err}"
seen["LOCAL_RANK_at_end"] = os.environ["LOCAL_RANK"]
print("SEEN " + json.dumps(seen), flush=True)
