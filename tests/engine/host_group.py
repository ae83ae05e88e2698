"""Run under torchrun (2 processes, gloo, ``distributed.timeout_minutes=7``): init_distributed's host-side group.
argv[1] ``ok``, or ``gloo_fails``: creating a gloo group raises on every rank (as when gloo cannot connect).
Prints per rank whether the host group is a gloo group, its and the default group's timeouts, and
host_all_reduce's sums of (rank + 1, 10 * (rank + 1))."""

import json
import sys

import torch
import torch.distributed as dist

from cod_train.config import DistributedConfig
from cod_train.engine import distributed

if sys.argv[1] == "gloo_fails":
    real_new_group = dist.new_group

    def new_group(*args, backend=None, **kwargs):
        if backend == "gloo":
            raise dist.DistBackendError("Gloo connectFullMesh failed with [../gloo/transport/tcp/pair.cc:144] "
                                        "no error (injected)")
        return real_new_group(*args, backend=backend, **kwargs)

    dist.new_group = new_group


def timeout_s(group) -> float:
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()


env = distributed.init_distributed(DistributedConfig(engine="ddp", timeout_minutes=7), "cpu")
host = distributed._HOST_GROUP[0]
sums = distributed.host_all_reduce([env.rank + 1.0, 10.0 * (env.rank + 1)], env)
print("HOST " + json.dumps({"rank": env.rank, "gloo": host.group is not None, "sums": sums,
                            "timeout_s": timeout_s(host.group) if host.group is not None else None,
                            "default_timeout_s": timeout_s(dist.group.WORLD)}), flush=True)
distributed.destroy_distributed()
