"""Access to the residual stream of a LLaMA-layout causal LM, shared by the depth diagnostics.

Works for `CodLlamaForCausalLM` and for any HF model with the LLaMA layout (Llama, Mistral, Qwen2):
``model.model.embed_tokens``, ``model.model.layers`` (a ModuleList of decoder layers),
``model.model.norm`` and ``model.lm_head``. Wrappers are stripped first (DDP / DeepSpeed ``.module``,
``torch.compile``'s ``_orig_mod``); FSDP2 shards in place, so a fully-sharded model is its own module.

Hidden state h_0 is the input of the first layer (the embedding output), h_l (l = 1..L) is the output of
layer l, *before* the final norm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import torch
from torch import nn

from cod_train.core.constants import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif (
            hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "lm_head")
        ):
            model = model.module
        else:
            break
    return model


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack (``model.model``) of a LLaMA-layout causal LM."""
    model = unwrap_model(model)
    inner = getattr(model, "model", None)
    if inner is None or not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__} does not have the LLaMA layout (model.model.layers); "
            "depth diagnostics need a Llama/Mistral/Qwen2-style causal LM"
        )
    return inner


def residual_scheme(model: nn.Module) -> Any:
    """The model's residual scheme (`cod_train.model.zoo.Residual`), None for a model that is not cod-train's."""
    return getattr(getattr(backbone(unwrap_model(model)), "config", None), "residual_scheme", None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers``."""
    return cast(nn.ModuleList, backbone(model).layers)  # checked by backbone()


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def first_tensor(out: Any) -> torch.Tensor:
    """Decoder layers return a tensor (transformers v5) or a tuple whose first item is the hidden state; a residual
    scheme's stream object (``residual_stream``: the history of outputs of AttnRes / DenseFormer) is returned whole,
    as the stream the next layer reads (``close_stream`` makes it one hidden state)."""
    if isinstance(out, torch.Tensor) or getattr(out, "residual_stream", False):
        return cast(torch.Tensor, out)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    hidden = getattr(out, "hidden_states", None) or getattr(out, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden state in a decoder layer output of type {type(out).__name__}")


def _local(t: torch.Tensor) -> torch.Tensor:
    """Activations are plain tensors even under FSDP2; this guards against DTensor activations (TP)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


StateFn = Callable[[int, torch.Tensor], None]


def close_stream(model: nn.Module, stream: torch.Tensor) -> torch.Tensor:
    """The residual stream between layers as one hidden state [.., d], as the final norm sees it: the backbone's
    ``close_stream`` (hyper-connection models pass n streams between layers); the identity for a backbone without
    one (transformers' Llama, Mistral, Qwen2)."""
    close = getattr(backbone(model), "close_stream", None)
    return close(stream) if close is not None else stream


@contextlib.contextmanager
def residual_stream_hooks(model: nn.Module, fn: StateFn) -> Iterator[None]:
    """Call ``fn(l, h_l)`` for l = 0..L on every forward inside the block; hooks are removed on exit.

    ``h_l`` is detached. Index 0 is the first layer's input (embedding output), index l its l-th output.
    """
    layers = decoder_layers(model)
    handles = []

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        assert hidden is not None, "the first decoder layer was called without hidden states"
        fn(0, _local(close_stream(model, hidden.detach())))

    handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
    for idx, layer in enumerate(layers):

        def post_hook(_module: nn.Module, _args: tuple, out: Any, depth: int = idx + 1) -> None:
            fn(depth, _local(close_stream(model, first_tensor(out).detach())))

        handles.append(layer.register_forward_hook(post_hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_backbone(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Forward the decoder stack (no cache) and return the final-norm hidden state ``[B, T, D]``."""
    inner = backbone(model)
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    return first_tensor(inner(**kwargs))


def token_losses_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over valid positions (labels already shifted, -100 ignored).

    Logits come from ``lm_head(model.model(...))`` so the loss does not depend on a model's loss
    conventions (``shift_labels``, fused losses). Returns (loss sum as a tensor, number of valid tokens).
    """
    return head_loss_sum(model, run_backbone(model, batch), batch["labels"])


def head_loss_sum(model: nn.Module, normed: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cross-entropy sum of ``lm_head(normed)`` (``normed``: the final-norm hidden state ``[B, T, D]``)."""
    head = cast(nn.Module, unwrap_model(model).lm_head)
    labels = labels.to(normed.device)
    total = normed.new_zeros((), dtype=torch.float32)
    for row in range(normed.shape[0]):  # row by row: the [T, V] logits of one row at a time
        logits = head(normed[row]).float()
        total = total + nn.functional.cross_entropy(
            logits, labels[row], ignore_index=IGNORE_INDEX, reduction="sum"
        )
    return total, int((labels != IGNORE_INDEX).sum())


def _label_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions with a label, or whose token was the target of the previous position."""
    has = labels != IGNORE_INDEX
    mask = has.clone()
    mask[:, 1:] |= has[:, :-1]
    mask[~has.any(dim=1)] = True  # no labels at all: treat the row as packed text without padding
    return mask


def last_token_index(batch: Batch) -> torch.Tensor:
    """``[B]`` index of each row's last real (non-pad) token.

    Uses ``attention_mask`` when the batch has one; else derives it from the shifted labels: position t
    is real if ``labels[t] != -100`` or ``labels[t-1] != -100`` (the token t-1 predicted is real).
    """
    mask = batch["attention_mask"].bool() if "attention_mask" in batch else _label_mask(batch["labels"])
    positions = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, positions[None, :], -1).max(dim=1).values.clamp(min=0)


def valid_token_mask(batch: Batch) -> torch.Tensor:
    """``[B, T]`` bool: real tokens. ``attention_mask`` when present, else every position up to the
    row's last real token (prompt tokens of SFT rows have -100 labels but are real; padding is on the right).
    """
    if "attention_mask" in batch:
        return batch["attention_mask"].bool()
    last = last_token_index(batch)
    positions = torch.arange(batch["labels"].shape[1], device=last.device)
    return positions[None, :] <= last[:, None]


def _per_layer_config_lists(config: Any, num: int) -> dict[str, list]:
    """Config attributes holding one entry per layer (e.g. Qwen2's ``layer_types``), indexed by position."""
    found = {}
    for key in ("layer_types",):
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) == num:
            found[key] = list(value)
    return found


@contextlib.contextmanager
def pruned_layers(model: nn.Module, drop: Sequence[int]) -> Iterator[nn.Module]:
    """Temporarily remove the decoder layers with 0-based indices ``drop``; restored on exit.

    The layer list is replaced by a shallow copy without those layers: the kept layers are the same
    module objects, so each keeps its own state — its original depth (the LNS 1/sqrt(l) factor), and
    ``self_attn.layer_idx`` (still unique and < L, so a KV cache sized for L layers stays valid; the
    diagnostics run without a cache anyway). The final norm and lm_head are untouched. Per-layer config
    lists such as Qwen2's ``layer_types`` are shortened to match, and restored.
    """
    inner = backbone(model)
    original = cast(nn.ModuleList, inner.layers)  # checked by backbone()
    total = len(original)
    drop_set = {int(i) for i in drop}
    if any(i < 0 or i >= total for i in drop_set):
        raise IndexError(f"layer indices {sorted(drop_set)} out of range for {total} layers")
    keep = [i for i in range(total) if i not in drop_set]
    config = getattr(inner, "config", None)
    saved = _per_layer_config_lists(config, total) if config is not None else {}
    inner.layers = nn.ModuleList([original[i] for i in keep])
    for key, values in saved.items():
        setattr(config, key, [values[i] for i in keep])
    try:
        yield model
    finally:
        inner.layers = original
        for key, values in saved.items():
            setattr(config, key, values)


def model_device(model: nn.Module) -> torch.device:
    for param in unwrap_model(model).parameters():
        return param.device
    return torch.device("cpu")


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
