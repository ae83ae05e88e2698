"""``cod-pretrain init_from=<HF dir or hub name>``: (continued) pre-training from a shipped checkpoint.

A Llama / Mistral / Qwen2 / Qwen3-family checkpoint whose math is a cod-train Pre-LN model (with per-head
QK-norm for Qwen3), or any cod-train export, becomes the run's model: ``model.*`` takes the checkpoint's sizes
(written to the run's config.yaml), ``data.tokenizer`` its tokenizer unless one was given, and the weights are
loaded into the freshly built model before training starts. Anything that does not map is refused with the
reason, before the run directory exists (``cod_train.model.portable.import_problems``).

The run is named after its source: ``runs/from-<source name>`` unless ``run_dir=`` is given
(``cod_train.config.pretrain_run_dir``), and another ``init_from`` is another run (resuming a run directory
with a different one is refused: runs/identity.py). A value that names a local path (:func:`names_a_local_path`)
and does not exist is "no such directory", never a hub lookup.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

from cod_train.config import DataConfig, ModelConfig, PretrainConfig
from cod_train.core import hub
from cod_train.core.errors import ConfigError, RunError

log = logging.getLogger("cod_train")
HINT = "pass init_from= a local HF directory (config.json + weights), or run where the hub is reachable"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
LOCAL_FOLDERS = ("runs", "exports", "outputs", "multirun")


def names_a_local_path(spec: str) -> bool:
    """Whether ``init_from=spec`` means a local directory rather than a hub model: it cannot be a hub id
    (``name`` or ``owner/name`` of letters, digits, ``-_.``), starts with ``.``, ``/`` or ``~``, or its first
    part is a directory here or one of the folders cod-train writes (``exports/nope`` is a typo, not a model)."""
    first = Path(spec).parts[0] if spec else ""
    return (spec.startswith((".", "/", "~")) or not HUB_ID.match(spec) or first in LOCAL_FOLDERS
            or Path(first).is_dir())


def _load(fn: Any, spec: str, what: str, **kwargs: Any) -> Any:
    local = Path(spec).expanduser()
    if local.is_dir():
        try:
            return fn(str(local), **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"init_from={spec!r}: {what} cannot be read: {str(err).splitlines()[0]}") from None
    if local.exists():
        raise ConfigError(f"init_from={spec!r} is a file, not an HF directory (config.json + weights)")
    if names_a_local_path(spec):
        raise ConfigError(f"init_from={spec!r}: no such directory")
    return hub.cached_or_hub(fn, spec, f"init_from={spec!r} ({what})", HINT, **kwargs)


def source_config(spec: str) -> Any:
    from transformers import AutoConfig

    from cod_train.model.build import register

    register()  # cod_llama with the Auto classes

    return _load(AutoConfig.from_pretrained, spec, "its config.json")


def apply_init_from(cfg: PretrainConfig) -> tuple[PretrainConfig, dict[str, Any]]:
    """Check ``cfg.init_from``; a copy of ``cfg`` whose ``model`` and ``data.tokenizer`` are the checkpoint's,
    and the model overrides ``build_model`` needs beyond ``model``. ``cfg`` is left as it was. Raises
    ConfigError naming why the checkpoint does not map."""
    spec = cfg.init_from
    if not spec:
        return cfg, {}
    from cod_train.model.portable import import_problems, imported_model_fields

    if cfg.distributed.meta_init:
        raise ConfigError("init_from= loads a checkpoint's weights into the model; drop distributed.meta_init")
    config = source_config(spec)
    problems = import_problems(config)
    if problems:
        raise ConfigError(f"init_from={spec!r} does not map onto a cod-train model: {'; '.join(problems)}")
    if cfg.model.norm_type != ModelConfig.norm_type and config.model_type != "cod_llama":
        raise ConfigError(f"init_from={spec!r} is a Pre-LN model; model.norm_type={cfg.model.norm_type} would "
                          "change its math (drop model.norm_type)")
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    values, overrides = imported_model_fields(config, fields)
    model = dataclasses.replace(cfg.model, **values, name=Path(spec).name or spec)
    local = Path(spec).expanduser()
    has_tokenizer = not local.is_dir() or any((local / f).is_file() for f in TOKENIZER_FILES)
    data = cfg.data
    if data.tokenizer == DataConfig.tokenizer and has_tokenizer:
        data = dataclasses.replace(data, tokenizer=spec)
    return dataclasses.replace(cfg, model=model, data=data), overrides


def load_init_weights(model: Any, spec: str) -> None:
    """Fill ``model`` (the freshly built cod-train model) with the weights of ``spec``."""
    from transformers import AutoModelForCausalLM

    from cod_train.model.portable import load_imported

    source = _load(AutoModelForCausalLM.from_pretrained, spec, "its weights", dtype="auto")
    try:
        load_imported(model, source.state_dict())
    except ValueError as err:
        raise RunError(f"init_from={spec!r}: {err}") from None
    log.info("initialized the model from %s", spec)
