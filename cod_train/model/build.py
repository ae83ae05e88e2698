"""Building the model from the run config's `model` section, and registering it with transformers."""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig

from cod_train.core.errors import ConfigError
from cod_train.model.configuration import CodLlamaConfig
from cod_train.model.flops import cod_config, matmul_params
from cod_train.model.modeling import CodLlamaForCausalLM, CodLlamaModel
from cod_train.model.zoo import model_problems


def register() -> None:
    """Make `cod_llama` known to transformers' Auto classes (idempotent)."""
    try:
        AutoConfig.register("cod_llama", CodLlamaConfig)
        AutoModel.register(CodLlamaConfig, CodLlamaModel)
        AutoModelForCausalLM.register(CodLlamaConfig, CodLlamaForCausalLM)
    except ValueError:  # already registered
        pass


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    return -(-vocab_size // multiple) * multiple


def model_config(model_cfg: Any, vocab_size: int | None = None, **overrides: Any) -> CodLlamaConfig:
    """`CodLlamaConfig` from the typed `model` config (`cod_train.config.ModelConfig`). `vocab_size` (the
    tokenizer's) fills a null `model.vocab_size`, rounded up to a multiple of 64; a set `model.vocab_size` wins."""
    args = {k: v for k, v in vars(model_cfg).items() if k != "name"}
    if args["vocab_size"] is None:
        if vocab_size is None:
            raise ConfigError("model.vocab_size is null and no tokenizer vocabulary size was given")
        args["vocab_size"] = padded_vocab_size(vocab_size)
    elif vocab_size is not None and vocab_size > args["vocab_size"]:
        raise ConfigError(
            f"the tokenizer has {vocab_size} tokens but model.vocab_size={args['vocab_size']}; "
            "set model.vocab_size to at least that (or null to follow the tokenizer)"
        )
    args.update(overrides)
    problems = model_problems(**args)
    if problems:
        raise ConfigError("invalid model config: " + "; ".join(problems))
    rope_theta = args.pop("rope_theta")
    return CodLlamaConfig(**args, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})


def build_model(model_cfg: Any, vocab_size: int | None = None, **overrides: Any) -> CodLlamaForCausalLM:
    """Build (and initialize) the model from the typed `model` config.

    Under `with torch.device("meta"):` this allocates nothing; call `model.to_empty(device=...)` and
    `model.reset_weights()` afterwards (the engines do)."""
    return CodLlamaForCausalLM(model_config(model_cfg, vocab_size, **overrides))


def total_params(config: PretrainedConfig) -> int:
    """Exact parameter count of the model of `config`, without allocating it: a cod-train config (or its
    config.json as an object with its keys as attributes) is built on the meta device and counted; a plain Llama
    config counts its projections, embedding and RMSNorms."""
    if getattr(config, "norm_type", None) is None:
        d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
        embedding = 0 if config.tie_word_embeddings else V * d  # tied: shares lm_head's matrix
        return matmul_params(config) + embedding + (2 * L + 1) * d
    with torch.device("meta"):
        return CodLlamaForCausalLM(cast(CodLlamaConfig, cod_config(config))).num_params()


register()
