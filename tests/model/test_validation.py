"""Bad model configuration fails early with a message that says what to change."""

import pytest

from cod_train.config import ConfigError, ModelConfig
from cod_train.model import CodLlamaConfig, build_model, zoo


@pytest.mark.parametrize("overrides,needle", [
    (dict(norm_type="layer_norm"), "valid: " + ", ".join(zoo.placement_names())),
    (dict(hidden_size=130), "hidden_size (130) must be divisible by num_attention_heads (4)"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "num_attention_heads (4) must be divisible by num_key_value_heads (3)"),
    (dict(mix_ln_ratio=1.5), "mix_ln_ratio must be in [0, 1]"),
    (dict(mix_ln_ratio=-0.1), "mix_ln_ratio must be in [0, 1]"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (dict(hidden_size=-8), "hidden_size must be a positive integer"),
    (dict(intermediate_size=0), "intermediate_size must be a positive integer"),
])
def test_bad_model_config_is_a_clear_config_error(overrides, needle):
    with pytest.raises(ConfigError) as err:
        build_model(ModelConfig(**overrides), 100)
    assert needle in str(err.value)


def test_hf_config_validates_too():
    with pytest.raises(Exception, match="unknown norm_type 'nope'"):
        CodLlamaConfig(hidden_size=32, num_attention_heads=4, norm_type="nope")


def test_tokenizer_larger_than_model_vocab_is_rejected():
    with pytest.raises(ConfigError, match="tokenizer has 200 tokens but model.vocab_size=100"):
        build_model(ModelConfig(vocab_size=100), 200)


def test_vocab_follows_tokenizer_rounded_to_64():
    model = build_model(ModelConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=1), 1000)
    assert model.config.vocab_size == 1024
