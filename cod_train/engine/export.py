"""Any checkpoint (torch, FSDP2/DCP sharded, DeepSpeed) -> a Hugging Face directory.

The output holds ``config.json``, ``model.safetensors`` (and ``generation_config.json``) plus the tokenizer
files, and loads with ``AutoModelForCausalLM.from_pretrained`` after ``import cod_train``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors.torch import load_file
from torch import nn

from cod_train.core.errors import RunError
from cod_train.core.io import make_readable
from cod_train.engine.checkpoint import find_checkpoint, read_meta
from cod_train.engine.engines import MODEL_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


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


def save_hf(model: nn.Module, out_dir: Path, tokenizer: Any = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` (a PreTrainedModel) and ``tokenizer`` as an HF directory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    cast("PreTrainedModel", model).save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    make_readable(out_dir)
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


def _copy_hf(src: Path, out_dir: Path, dtype: torch.dtype | None) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _register_models()
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=dtype or "auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src))
    except (OSError, ValueError):
        tokenizer = None
    return save_hf(model, out_dir, tokenizer)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Export a training checkpoint (or a run directory's latest) to an HF directory; returns ``out_dir``.

    An HF directory as input is re-saved (e.g. to change its dtype)."""
    src = Path(checkpoint).expanduser()
    if is_hf_directory(src):
        return _copy_hf(src, Path(out_dir), dtype)
    ckpt = find_checkpoint(checkpoint)
    model = build_from_checkpoint(ckpt)
    if dtype is None and read_meta(ckpt).get("precision") == "bf16-pure":
        dtype = torch.bfloat16  # as the run's own final export: every engine's checkpoint holds bf16 weights
    out = save_hf(model, Path(out_dir), _load_tokenizer(ckpt), dtype=dtype)
    log.debug("exported %s -> %s", ckpt, out)
    return out


def _register_models() -> None:
    import cod_train.model  # noqa: F401  (registers model_type cod_llama with the Auto classes)
