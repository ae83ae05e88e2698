"""The depth zoo's Hydra presets: every named scheme is a `norm=` preset, every axis a group of its own that
composes with any placement and can be swept alone; the run directory names the scheme."""

import pytest
from hydra import compose, initialize_config_dir

from cod_train.config import PretrainConfig, to_typed
from cod_train.runs.app import config_dir

# preset -> what the paper defines it as (norm_type, qk_norm, norm_fn, residual)
NAMED = {
    "reordered_ln": ("reordered_ln", None, "rmsnorm", "plain"),
    "olmo2": ("reordered_ln", "full", "rmsnorm", "plain"),
    "hybrid_ln": ("hybrid_ln", None, "rmsnorm", "plain"),
    "hybrid_ln_star": ("hybrid_ln_star", None, "rmsnorm", "plain"),
    "qk_ln": ("pre_ln", "head", "rmsnorm", "plain"),
    "dyt": ("pre_ln", None, "dyt", "plain"),
    "derf": ("pre_ln", None, "derf", "plain"),
    "pre_ln_gpas": ("pre_ln", None, "rmsnorm", "gpas"),
    "lns_gpas": ("lns", None, "rmsnorm", "gpas"),
    "sandwich_ln_gpas": ("sandwich_ln", None, "rmsnorm", "gpas"),
    "deepnorm_gpas": ("deepnorm", None, "rmsnorm", "gpas"),
    "mix_ln_gpas": ("mix_ln", None, "rmsnorm", "gpas"),
}


def _typed(*overrides):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = to_typed(compose("pretrain", overrides=list(overrides)), PretrainConfig)
    cfg.validate()
    return cfg


@pytest.mark.parametrize("preset", sorted(NAMED))
def test_named_scheme_preset(preset):
    m = _typed(f"norm={preset}").model
    assert (m.norm_type, m.qk_norm, m.norm_fn, m.residual) == NAMED[preset]


def test_axes_compose_with_a_placement_and_name_the_run_dir():
    cfg = _typed("norm=lns", "residual=gpas", "qk_norm=head")
    m = cfg.model
    assert (m.norm_type, m.residual, m.qk_norm, m.norm_fn) == ("lns", "gpas", "head", "rmsnorm")
    assert cfg.run_dir == "runs/llama_tiny-lns+gpas+qk_head"
    cfg = _typed("norm=mix_ln", "norm_fn=dyt")
    assert (cfg.model.norm_type, cfg.model.norm_fn, cfg.run_dir) == ("mix_ln", "dyt", "runs/llama_tiny-mix_ln+dyt")
    assert _typed().run_dir == "runs/llama_tiny-pre_ln"  # defaults: the run directory of before
    assert _typed("residual=depth_mup").run_dir == "runs/llama_tiny-pre_ln+depth0.5"


def test_an_axis_group_overrides_the_preset_that_set_it():
    m = _typed("norm=olmo2", "qk_norm=head").model
    assert (m.norm_type, m.qk_norm) == ("reordered_ln", "head")
    m = _typed("norm=lns_gpas", "residual=plain").model
    assert (m.norm_type, m.residual) == ("lns", "plain")


def test_completep_preset_sets_its_rules():
    m = _typed("residual=completep", "model.depth_base_layers=2").model
    assert (m.residual, m.depth_alpha, m.depth_hparams, m.depth_base_layers) == ("depth_scaled", 1.0, True, 2)
    assert _typed("residual=completep").run_dir == "runs/llama_tiny-pre_ln+completep"  # named as the paper's
    assert _typed("residual=depth_scaled", "model.depth_alpha=0.5", "model.depth_hparams=true").run_dir == \
        "runs/llama_tiny-pre_ln+depth0.5_hp"


@pytest.mark.parametrize("group,options", [
    ("norm", ["pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln", "reordered_ln",
              "hybrid_ln", "hybrid_ln_star"]),
    ("qk_norm", ["none", "head", "full"]),
    ("norm_fn", ["rmsnorm", "layernorm", "dyt", "derf"]),
    ("residual", ["plain", "layerscale", "rezero", "depth_scaled", "depth_mup", "completep", "gpas"]),
])
def test_each_axis_has_a_preset_per_value_and_run_dirs_differ(group, options):
    run_dirs = {_typed(f"{group}={option}").run_dir for option in options}
    assert len(run_dirs) == len(options)
