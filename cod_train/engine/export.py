"""Any checkpoint (torch, FSDP2/DCP sharded, DeepSpeed) -> a Hugging Face directory that loads without cod-train.

Formats (``FORMATS``; ``auto`` picks the first the model can take):

- ``llama`` / ``qwen3`` / ``olmo2``: the architecture transformers ships that the scheme rewrites into exactly
  (``cod_train.model.portable``: Pre-LN as is, LNS folded into the norm weights, ...);
- ``remote_code``: ``model_type: cod_llama`` with ``auto_map`` and a generated, self-contained
  ``modeling_cod_llama.py`` (``cod_train.engine.remote_code``): ``trust_remote_code=True`` without cod-train,
  the installed classes where cod-train is imported;
- ``cod_llama``: the weights and config only, for Pythons with cod-train;
- ``gguf``: the Llama form plus ``model-<type>.gguf`` for llama.cpp / ollama (``cod_train.engine.gguf_export``).

Every export is checked before it is written: the exported model's logits against the trained model's.
The directory appears whole or not at all (written next to its place, then renamed). Its config.json and
generation_config.json carry the tokenizer's bos / eos / pad ids, so ``generate()`` stops at its end of text.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors.torch import load_file
from torch import nn

from cod_train.core.errors import ConfigError, RunError
from cod_train.core.io import make_readable
from cod_train.engine.checkpoint import find_checkpoint, read_meta
from cod_train.engine.engines import MODEL_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

FORMATS = ("auto", "llama", "qwen3", "olmo2", "remote_code", "cod_llama", "gguf")
GGUF_TYPES = ("f32", "f16", "q8_0")
# max |exported - trained| / max |trained| over logits, both in fp32: the folds are exact up to rounding
# (measured <= 1e-6); a bf16 / fp16 export is rounded after the check
VERIFY_TOL = 1e-5


@dataclass
class ExportOptions:
    """What the model card and the GGUF file need beyond the model (all optional)."""

    gguf_type: str = "f16"
    run_dir: Path | None = None  # config.yaml, metrics, eval.json for the card
    repo_id: str | None = None  # the Hub name the card's usage snippet loads
    step: int | None = None  # the checkpoint's training step and tokens seen, for the card
    tokens: int | None = None


def possible_formats(config: Any) -> list[str]:
    """The formats ``config``'s model can be exported as, ``auto``'s choice first."""
    from cod_train.model.portable import TARGETS, target_problems

    if getattr(config, "model_type", None) != "cod_llama":
        mt = str(getattr(config, "model_type", "?"))
        return [mt, *(["gguf"] if mt == "llama" else [])]
    shipped = [name for name, t in TARGETS.items() if not target_problems(config, t)]
    return [*shipped, "remote_code", "cod_llama", *(["gguf"] if "llama" in shipped else [])]


def _why_not(config: Any, fmt: str) -> str:
    from cod_train.model.portable import TARGETS, target_problems

    target = TARGETS.get("llama" if fmt == "gguf" else fmt)
    if target is None or getattr(config, "model_type", None) != "cod_llama":
        return f"a {getattr(config, 'model_type', '?')} model is exported as it is"
    return f"no exact {target.architecture} form ({'; '.join(target_problems(config, target))})"


def resolve_format(config: Any, fmt: str) -> str:
    """``fmt`` with ``auto`` resolved; a ConfigError naming the possible formats if the model cannot take it."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is unknown; possible: {', '.join(FORMATS)}")
    possible = possible_formats(config)
    if fmt == "auto":
        return possible[0]
    if fmt not in possible:
        raise ConfigError(f"format={fmt} is not possible for this model: {_why_not(config, fmt)}; possible: "
                          f"{', '.join(['auto', *possible])}")
    return fmt


def _write_format(model: PreTrainedModel, out: Path, fmt: str, dtype: torch.dtype | None, tokenizer: Any) -> str:
    """Save ``model`` in ``fmt`` into ``out`` (with ``tokenizer``'s special-token ids); the architecture written."""
    from cod_train.model.portable import TARGETS, to_target

    out_dtype = dtype or next(model.parameters()).dtype
    nn.Module.to(model, torch.float32)  # folded and checked in fp32 (in place: PreTrainedModel.to's stub is narrower)
    target = TARGETS.get("llama" if fmt == "gguf" else fmt)
    if target is not None and model.config.model_type == "cod_llama":
        exported = to_target(model, target)
        _verify(model, exported, target.architecture)
        model = exported
    elif fmt == "remote_code":
        _write_remote_code(model, out)
    nn.Module.to(model, out_dtype)
    if tokenizer is not None:
        _set_token_ids(model, tokenizer)
    model.save_pretrained(str(out))
    return str((model.config.architectures or [type(model).__name__])[0])


def _set_token_ids(model: PreTrainedModel, tokenizer: Any) -> None:
    """config.json and generation_config.json (the one ``generate()`` reads) get ``tokenizer``'s ids."""
    from cod_train.model.configuration import set_token_ids

    set_token_ids(model.config, tokenizer)
    if model.generation_config is not None:
        set_token_ids(model.generation_config, tokenizer)


def _verify(trained: PreTrainedModel, exported: PreTrainedModel, what: str) -> None:
    from cod_train.model.portable import max_rel_diff

    diff = max_rel_diff(trained.eval(), exported.eval(), trained.config.vocab_size)
    if not diff <= VERIFY_TOL:
        raise RunError(f"the {what} export does not compute what the trained model computes (logits differ by "
                       f"{diff:.2e} relative, tolerance {VERIFY_TOL:.0e}); nothing was written")


def _write_remote_code(model: PreTrainedModel, out: Path) -> None:
    """The generated modeling file, checked by loading it here and comparing logits; auto_map in config.json."""
    from cod_train.engine.remote_code import AUTO_MAP, MODULE_NAME, generate_modeling_source

    config = model.config
    source = generate_modeling_source(MODULE_NAME, str(getattr(config, "norm_type", "")))
    path = out / f"{MODULE_NAME}.py"
    path.write_text(source, encoding="utf-8")
    module = _import_file(path)
    standalone_config = module.CodLlamaConfig.from_dict({**config.to_dict(), "use_kernels": False})
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is loaded next
        standalone = module.CodLlamaForCausalLM(standalone_config)
    standalone.load_state_dict(model.state_dict())
    _verify(model, standalone, "remote-code")
    config.auto_map = dict(AUTO_MAP)
    config.use_kernels = False  # Liger kernels are not part of the generated code


def _import_file(path: Path) -> Any:
    import importlib.util
    import sys

    name = f"_cod_export_{path.stem}_{id(path)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (the @strict config) look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _load_dcp_into(model: nn.Module, dcp_dir: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(dcp_dir), no_dist=True)
    model.load_state_dict(state["model"])


def load_weights_into(model: nn.Module, ckpt: Path) -> None:
    """Fill ``model`` (an unwrapped CPU model) with the weights of training checkpoint ``ckpt``."""
    meta = read_meta(ckpt)
    fmt = meta.get("format")
    if fmt == "dcp":
        _load_dcp_into(model, ckpt / "dcp")
        return
    if fmt not in ("torch", "deepspeed") or not (ckpt / MODEL_FILE).is_file():
        raise RunError(f"checkpoint {ckpt} is damaged or incomplete: unknown format {fmt!r} or missing {MODEL_FILE}")
    state = load_file(str(ckpt / MODEL_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # One end of a tie (lm_head.weight <-> model.embed_tokens.weight) may be absent from the file: safetensors'
    # save_model keeps one name per shared tensor. transformers lists the ties, config-aware, in the public
    # ``all_tied_weights_keys`` ({target: source}, set by ``post_init``).
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    partner = {**tied, **{source: target for target, source in tied.items()}}
    missing = [k for k in missing if partner.get(k) not in state]
    if missing or unexpected:
        raise RunError(f"checkpoint {ckpt} is damaged: its weights do not match its config.json: missing "
                       f"{missing[:5]}, unexpected {unexpected[:5]}")


def build_from_checkpoint(ckpt: Path) -> nn.Module:
    """The model of a training checkpoint, on CPU, in fp32 or the dtype it was trained in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _register_models()
    config = AutoConfig.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_config(config)
    load_weights_into(model, ckpt)
    return model.eval()


def save_hf(model: nn.Module, out_dir: Path, tokenizer: Any = None, dtype: torch.dtype | None = None,
            fmt: str = "auto", options: ExportOptions | None = None) -> Path:
    """Write ``model`` (a PreTrainedModel) and ``tokenizer`` as an HF directory of format ``fmt``. ``model`` is
    cast in place (to fp32 for the fold and its check, then to ``dtype``, default: its own)."""
    from cod_train.data.common import atomic_dir

    pm = cast("PreTrainedModel", model)
    fmt = resolve_format(pm.config, fmt)
    opts = options or ExportOptions()
    out_dir = Path(out_dir)
    from cod_train.engine.model_card import write_card

    with atomic_dir(out_dir) as tmp:
        architecture = _write_format(pm, tmp, fmt, dtype, tokenizer)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if fmt == "gguf":
            from cod_train.engine.gguf_export import write_gguf

            write_gguf(tmp, opts.gguf_type)
        write_card(tmp, pm.config, fmt, opts, out_dir, architecture)
        make_readable(tmp)
    log.debug("exported %s as %s", out_dir, fmt)
    return out_dir


def _load_tokenizer(ckpt: Path) -> Any:
    tok_dir = ckpt / "tokenizer"
    if not tok_dir.is_dir():
        log.warning("checkpoint %s has no tokenizer/ directory; exporting the model only", ckpt)
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def is_hf_directory(path: Path) -> bool:
    weights = any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()
    return (path / "config.json").is_file() and not (path / "meta.json").exists() and weights


def _source_config(src: Path, ckpt: Path | None) -> Any:
    from transformers import AutoConfig

    _register_models()
    try:
        return AutoConfig.from_pretrained(str(ckpt or src))
    except (OSError, ValueError) as err:
        raise ConfigError(f"checkpoint={str(src)!r}: its config.json cannot be read: {err}") from None


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
                      fmt: str = "auto", options: ExportOptions | None = None) -> Path:
    """Export a training checkpoint (or a run directory's latest, or an HF directory) to ``out_dir``.

    The format is checked against the model's config before any weight is read or anything written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(checkpoint).expanduser()
    ckpt = None if is_hf_directory(src) else find_checkpoint(checkpoint)
    fmt = resolve_format(_source_config(src, ckpt), fmt)
    if fmt == "gguf":
        from cod_train.engine.gguf_export import tokenizer_problem

        problem = tokenizer_problem((src if ckpt is None else ckpt / "tokenizer") / "tokenizer.json")
        if problem:
            raise ConfigError(f"format=gguf: {problem}")
    if ckpt is None:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype or "auto").eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(src))
        except (OSError, ValueError):
            tokenizer = None
    else:
        model = build_from_checkpoint(ckpt)
        tokenizer = _load_tokenizer(ckpt)
        if dtype is None and read_meta(ckpt).get("precision") == "bf16-pure":
            dtype = torch.bfloat16  # as the run's own final export: every engine's checkpoint holds bf16 weights
    if ckpt is not None:
        options = _with_checkpoint(options or ExportOptions(), ckpt)
    out = save_hf(model, Path(out_dir), tokenizer, dtype=dtype, fmt=fmt, options=options)
    log.debug("exported %s -> %s (%s)", ckpt or src, out, fmt)
    return out


def _with_checkpoint(options: ExportOptions, ckpt: Path) -> ExportOptions:
    """``options`` plus what the card says about training checkpoint ``ckpt``: its step, tokens and run."""
    meta = read_meta(ckpt)
    run_dir = options.run_dir or (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None)
    return dataclasses.replace(options, run_dir=run_dir, step=meta.get("step"), tokens=meta.get("tokens"))


def _register_models() -> None:
    from cod_train.model.build import register

    register()  # cod_llama with the Auto classes
