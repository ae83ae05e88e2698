"""The paper presets reproduce the papers' settings (docs/design.md section 3.2)."""

import pytest
from hydra import compose, initialize_config_dir

from cod_train.runs.app import config_dir

# experiment: (model preset, hidden, ffn, heads, layers, lr, steps, warmup) -- docs/design.md section 3.2
PAPER = {
    "paper_71m": ("llama_71m", 512, 1368, 8, 12, 1e-3, 10_000, 1_000),
    "paper_130m": ("llama_130m", 768, 2048, 12, 12, 1e-3, 20_000, 2_000),
    "paper_250m": ("llama_250m", 768, 2560, 16, 24, 1e-3, 40_000, 4_000),
    "paper_350m": ("llama_350m", 1024, 2736, 16, 24, 5e-4, 60_000, 6_000),
    "paper_1b": ("llama_1b", 2048, 5461, 32, 24, 5e-4, 100_000, 1_000),
    "paper_7b": ("llama_7b", 4096, 11008, 32, 32, 5e-4, 150_000, 15_000),
}


def _compose(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose("pretrain", overrides=list(overrides))


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_preset(experiment):
    name, hidden, ffn, heads, layers, lr, steps, warmup = PAPER[experiment]
    cfg = _compose(f"experiment={experiment}", "norm=lns")
    m, t, d = cfg.model, cfg.train, cfg.data
    assert (m.name, m.hidden_size, m.intermediate_size, m.num_attention_heads, m.num_hidden_layers) == (
        name, hidden, ffn, heads, layers)
    assert m.norm_type == "lns" and m.initializer_range == 0.02 and not m.tie_word_embeddings
    assert (t.lr, t.max_steps, t.warmup_steps) == (lr, steps, warmup)
    assert t.global_batch_size == 512 and t.min_lr_ratio == 0.1
    assert t.optimizer == "adam" and t.weight_decay == 0.0 and t.grad_clip == 0.0
    assert t.precision == "bf16-pure" and t.eval_tokens == 10_000_000
    assert d.source == "c4" and d.tokenizer == "t5-base" and d.seq_len == 256 and d.packing is False


def test_mix_ln_ratio_is_the_papers_quarter():
    cfg = _compose("experiment=paper_250m", "norm=mix_ln")
    assert cfg.model.norm_type == "mix_ln" and cfg.model.mix_ln_ratio == 0.25  # 6 of 24 layers Post-LN
    cfg = _compose("experiment=paper_71m", "norm=mix_ln", "model.mix_ln_ratio=0.5")
    assert cfg.model.mix_ln_ratio == 0.5


def test_norm_keys_on_the_command_line_are_aliases_of_model_keys():
    from cod_train.runs.app import prepare_argv

    argv = prepare_argv(["cod-pretrain", "-m", "norm=mix_ln", "norm.mix_ln_ratio=0.0,0.5", "+norm.x=1"])
    assert argv[-3:] == ["norm=mix_ln", "model.mix_ln_ratio=0.0,0.5", "+model.x=1"]


def test_model_keys_override_the_norm_group_and_name_the_run_dir():
    cfg = _compose("norm=mix_ln", "model.norm_type=lns")
    assert cfg.model.norm_type == "lns" and cfg.run_dir == "runs/llama_tiny-lns"
    assert _compose("norm=deepnorm").run_dir == "runs/llama_tiny-deepnorm"


def test_slurm_launcher_composes_for_cluster_sweeps():
    """`-m hydra/launcher=slurm` submits each run of a sweep as its own (multi-node) SLURM job via submitit."""
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose("pretrain", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 8
