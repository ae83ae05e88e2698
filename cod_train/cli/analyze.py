"""``cod-analyze``: depth diagnostics for one or more checkpoints (ours or any HF Llama/Mistral/Qwen2 LM).

    cod-analyze checkpoint=runs/llama_tiny-pre_ln                  # -> runs/llama_tiny-pre_ln/analysis/
    cod-analyze checkpoint=[runs/a,runs/b] labels=[pre_ln,lns] run_dir=runs/compare
    cod-analyze checkpoint=runs/x/hf analyze.diagnostics=[variance,angular] analyze.eval_tokens=65536

Writes ``run_dir/analysis/{layer_variance,angular_distance,layer_pruning,grad_norms}.json`` (each
``{"diagnostic", "eval_tokens", "models": [{"label", "checkpoint", "norm_type", "num_layers", ...}]}``)
and one PNG per diagnostic with one line (one heatmap) per model. Every ``checkpoint=`` is checked before
any model is loaded; a bad one exits with code 2 and a one-line message.
"""

from __future__ import annotations

from cod_train.runs.analyze import AnalyzeConfig
from cod_train.runs.app import hydra_app


@hydra_app("analyze", AnalyzeConfig)
def main(cfg: AnalyzeConfig) -> int:
    from cod_train.runs.analyze import analyze_command

    return analyze_command(cfg)


if __name__ == "__main__":
    main()
