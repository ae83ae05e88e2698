"""The model presets in configs/model/ have the papers' shapes (docs/design.md section 3.1)."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cod_train.config import ModelConfig
from cod_train.model import build_model, total_params

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"

# preset: (hidden, ffn, heads, layers, params in millions) -- docs/design.md section 3.1
TABLE = {
    "llama_60m": (512, 1376, 8, 8, 58.1),
    "llama_71m": (512, 1368, 8, 12, 70.6),
    "llama_130m": (768, 2048, 12, 12, 134.1),
    "llama_250m": (768, 2560, 16, 24, 247.4),
    "llama_350m": (1024, 2736, 16, 24, 368.0),
    "llama_1b": (2048, 5461, 32, 24, 1339.0),
    "llama_7b": (4096, 11008, 32, 32, 6738.0),
}


def load_preset(name: str) -> ModelConfig:
    raw = OmegaConf.load(CONFIGS / f"{name}.yaml")
    raw.merge_with({"norm_type": "pre_ln", "mix_ln_ratio": 0.25})  # normally interpolated from norm=
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw))


@pytest.mark.parametrize("name", sorted(TABLE))
def test_preset_shapes_and_parameter_counts(name):
    hidden, ffn, heads, layers, millions = TABLE[name]
    cfg = load_preset(name)
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (
        hidden, ffn, heads, layers)
    assert cfg.vocab_size == 32000 and not cfg.tie_word_embeddings and cfg.rms_norm_eps == 1e-6
    with torch.device("meta"):
        model = build_model(cfg)
    counted = model.num_params()
    assert counted == total_params(model.config)
    assert abs(counted / 1e6 - millions) / millions < 0.005, counted


def test_tiny_preset_follows_the_tokenizer():
    cfg = load_preset("llama_tiny")
    assert cfg.vocab_size is None
