import pytest
import torch

from cod_train.config import ModelConfig
from cod_train.model import build_model


@pytest.fixture
def tiny_model():
    def make(**overrides):
        torch.manual_seed(0)
        args = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64)
        args.update(overrides)
        return build_model(ModelConfig(**args), overrides.pop("vocab", 96))

    return make
