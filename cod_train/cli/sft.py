"""``cod-sft``: fine-tune a pre-trained checkpoint (or any HF causal LM) on instruction data.

    cod-sft                                                    # bundled alpaca sample, from runs/llama_tiny-pre_ln
    cod-sft checkpoint=runs/x/checkpoints/step_0000300 run_dir=runs/x-sft
    cod-sft sft.paths=[data/my.jsonl] sft.template=alpaca sft.packing=true distributed=fsdp
    cod-sft sft.hub_dataset=yahma/alpaca-cleaned train.max_steps=2000 logger=wandb

The run uses the shared loop (``cod_train.train.train``): the same engines, checkpoints, resume, metrics
and final ``run_dir/hf`` export as pre-training. Bad input (a path that is no checkpoint, instruction data
without the expected fields, an inconsistent config) exits with code 2 and a one-line message before
any model is loaded. Rows hold at most ``sft.max_length`` tokens: unset, the model's max_position_embeddings
(at most 2048); more than that is refused.
"""

from __future__ import annotations

from cod_train.runs.app import hydra_app
from cod_train.sft.config import SFTConfig


@hydra_app("sft", SFTConfig)
def main(cfg: SFTConfig) -> int:
    from cod_train.runs.sft import sft

    return sft(cfg)


if __name__ == "__main__":
    main()
