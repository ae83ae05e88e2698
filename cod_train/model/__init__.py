"""The LLaMA-style model with a configurable normalization placement."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from cod_train.model.configuration import NORM_TYPES, CodLlamaConfig, config_problems
from cod_train.model.flops import flops_per_token, matmul_params, total_params
from cod_train.model.modeling import CodLlamaForCausalLM, CodLlamaModel

if TYPE_CHECKING:
    from cod_train.config import ModelConfig

__all__ = [
    "NORM_TYPES",
    "CodLlamaConfig",
    "CodLlamaForCausalLM",
    "CodLlamaModel",
    "build_model",
    "model_config",
    "flops_per_token",
    "matmul_params",
    "total_params",
    "register",
]


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


def model_config(model_cfg: ModelConfig, vocab_size: int | None = None, **overrides: Any) -> CodLlamaConfig:
    """`CodLlamaConfig` from the typed `model` config. `vocab_size` (the tokenizer's) fills a null
    `model.vocab_size`, rounded up to a multiple of 64; a set `model.vocab_size` wins."""
    from cod_train.config import ConfigError

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
    problems = config_problems(**args)
    if problems:
        raise ConfigError("invalid model config: " + "; ".join(problems))
    rope_theta = args.pop("rope_theta")
    return CodLlamaConfig(**args, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})


def build_model(model_cfg: ModelConfig, vocab_size: int | None = None, **overrides: Any) -> CodLlamaForCausalLM:
    """Build (and initialize) the model from the typed `model` config.

    Under `with torch.device("meta"):` this allocates nothing; call `model.to_empty(device=...)` and
    `model.reset_weights()` afterwards (the engines do)."""
    return CodLlamaForCausalLM(model_config(model_cfg, vocab_size, **overrides))


register()
