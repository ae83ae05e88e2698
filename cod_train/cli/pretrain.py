"""``cod-pretrain``: pre-train a model (default: the embedded CPU run, a few minutes on 2 cores).

    cod-pretrain                                              # tiny model, bundled sample, CPU
    cod-pretrain experiment=paper_130m norm=lns distributed=fsdp logger=wandb
    torchrun --nproc_per_node 8 -m cod_train.cli.pretrain distributed=fsdp ...
    cod-pretrain -m norm=pre_ln,lns,mix_ln                    # a sweep (one run_dir per job)
    cod-pretrain init_from=exports/lns                        # from a checkpoint's weights: runs/from-lns

Exit codes: 0 done or preempted (SIGTERM: checkpoint saved), 2 configuration error (nothing ran),
3 stopped after ``train.max_nonfinite_in_a_row`` non-finite losses (the last good checkpoint is kept),
130 Ctrl-C (checkpoint saved; a second Ctrl-C stops at once, unsaved), 128 + the signal when SIGTERM or Ctrl-C
stopped a local ``-m`` sweep (the running job saved; no later job starts; ``hydra.sweep.dir=<it>`` continues).
"""

from __future__ import annotations

from cod_train.config import PretrainConfig
from cod_train.runs.app import hydra_app


@hydra_app("pretrain", PretrainConfig)
def main(cfg: PretrainConfig) -> int:
    from cod_train.runs.pretrain import pretrain

    return pretrain(cfg)


if __name__ == "__main__":
    main()
