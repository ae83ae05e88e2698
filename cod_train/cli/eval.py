"""``cod-eval``: perplexity on held-out data plus downstream zero-shot accuracy (lm-eval-harness).

    cod-eval                                                   # runs/llama_tiny-pre_ln-sft, offline tasks
    cod-eval checkpoint=runs/llama_130m-lns/hf downstream.limit=null data=c4
    cod-eval checkpoint=meta-llama/Llama-3.2-1B downstream.tasks=[arc_easy,piqa] downstream.offline=false
    cod-eval checkpoint=runs/x perplexity.enabled=false logger=wandb

``checkpoint=`` is a cod-pretrain/cod-sft run directory or checkpoint, an HF directory or a hub name.
Writes ``run_dir/eval.json`` (``{"checkpoint", "model", "perplexity": {...}, "downstream": {task: {"acc",
"acc_norm", "n"}, "average"}}``) and, with ``logger=wandb``, logs the numbers to the run's wandb run
(resumed through ``run_dir/wandb_id.txt``). An unknown task, a path that is no checkpoint or missing offline
data exits with code 2 before any model is loaded.
"""

from __future__ import annotations

from cod_train.runs.app import hydra_app
from cod_train.runs.evaluate import EvalConfig


@hydra_app("eval", EvalConfig)
def main(cfg: EvalConfig) -> int:
    cfg.validate()
    from cod_train.runs.evaluate import eval_command

    return eval_command(cfg)


if __name__ == "__main__":
    main()
