"""cod-analyze refuses a model without the LLaMA layout with a clear message, not a traceback."""

import pytest
import transformers

from cod_train.config import ConfigError
from cod_train.eval.depth_io import model_info


def test_non_llama_layout_is_a_config_error():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel does not have the LLaMA layout"):
        model_info(gpt2, "gpt2-tiny", "gpt2")


def test_llama_layout_is_summarized():
    cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   vocab_size=50)
    info = model_info(transformers.LlamaForCausalLM(cfg), "x", "x")
    assert info["num_layers"] == 3 and info["norm_type"] == "pre_ln"
