"""``cod-export``: any training checkpoint (single/DDP, FSDP2 sharded, DeepSpeed) -> an HF directory that loads
without cod-train.

    cod-export checkpoint=runs/x/checkpoints/step_0000300 out=exports/x
    cod-export checkpoint=runs/x run_dir=runs/x          # latest checkpoint of the run -> runs/x/hf
    cod-export checkpoint=... out=... dtype=bfloat16
    cod-export checkpoint=runs/x out=exports/x format=llama          # refused where the scheme has no Llama form
    cod-export checkpoint=runs/x out=exports/x format=remote_code    # trust_remote_code, any scheme
    cod-export checkpoint=runs/x out=exports/x format=gguf gguf_type=q8_0   # + model-q8_0.gguf (llama.cpp)
    cod-export checkpoint=runs/x out=exports/x push_to_hub=me/my-model      # and upload it
"""

from __future__ import annotations

from cod_train.runs.app import hydra_app
from cod_train.runs.export import ExportConfig


@hydra_app("export", ExportConfig)
def main(cfg: ExportConfig) -> int:
    from cod_train.runs.export import export_command

    return export_command(cfg)


if __name__ == "__main__":
    main()
