"""Run under torchrun: each argument is one model (a space-separated dotlist over ``tiny.py``'s config), built on
the meta device and set up by FSDP2 (``parallelize`` with ``distributed.meta_init=true``: fully_shard, then each
rank initializes only its shards). Rank 0 saves the engine's gathered full weights to ``OUT/<i>.pt``."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.engine_run import tiny_config  # noqa: E402

SEED = 1234


def meta_init_weights(*overrides: str) -> dict[str, torch.Tensor] | None:
    from cod_train.engine.distributed import init_distributed
    from cod_train.engine.parallelize import parallelize
    from cod_train.model import build_model

    cfg = tiny_config("distributed.engine=fsdp", "distributed.meta_init=true", *overrides)
    env = init_distributed(cfg.distributed, device="cpu")
    with torch.device("meta"):
        model = build_model(cfg.model)
    torch.manual_seed(SEED)  # the state reset_weights() starts from, on every rank
    engine = parallelize(model, cfg.distributed, env, optimizer_fn=lambda m: torch.optim.SGD(m.parameters()))
    return engine.full_state_dict()


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    for i, spec in enumerate(sys.argv[2:]):
        state = meta_init_weights(*spec.split())
        if state is not None:
            torch.save(state, out / f"{i}.pt")
    from cod_train.engine.distributed import destroy_distributed

    destroy_distributed()
