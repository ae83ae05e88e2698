"""``cod-plan``: memory, communication and time of a cod-pretrain config on a cluster, planned on the CPU.

    cod-plan experiment=paper_1b distributed=fsdp plan.world_size=8                  # 8 x H100 80GB
    cod-plan experiment=paper_1b residual=mhc distributed=deepspeed distributed.zero_stage=3 train.precision=bf16-mixed \
             plan.world_size=16
    cod-plan experiment=paper_7b distributed=fsdp plan.world_size=16 plan.gpu=a100-40gb plan.mfu=0.35
    cod-plan ... plan.gpu=custom plan.gpu_memory_gb=94 plan.peak_tflops=756

The same config as cod-pretrain (every ``model=`` / ``norm=`` / ``residual=`` / ``distributed=`` / ``train.*``
override) plus ``plan.*`` (cod_train.config.PlanConfig). One training step runs on fake tensors through the real
engine set-up (cod_train/engine/plan.py says what is faked and what is counted). Prints a table and a verdict
(fits / does not fit, by X GiB) and writes ``run_dir/plan.json``. Exit codes: 0 planned (whether it fits or
not), 2 a configuration that cannot run or be planned.
"""

from __future__ import annotations

from cod_train.config import PretrainConfig
from cod_train.runs.app import hydra_app


@hydra_app("pretrain", PretrainConfig)
def main(cfg: PretrainConfig) -> int:
    from cod_train.runs.plan import run_plan

    return run_plan(cfg)


if __name__ == "__main__":
    main()
