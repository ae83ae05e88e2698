"""A LLaMA-style decoder whose residual-stream normalization and scaling are config choices (the depth zoo).

x is the residual stream entering layer l (l = 1..L). A layer's equations are its placement's (`norm_type`, one
module of `cod_train/model/placements/`, e.g. Pre-LN:  h = x (+) Attn(N1(x)),  y = h (+) MLP(N2(h))), written with
the layer's parts: its norms (N1 = `input_layernorm`, N2 = `post_attention_layernorm`, Na = `post_attn_out_norm`,
Nm = `post_mlp_out_norm`, each the `norm_fn` of `cod_train.model.norms`), attention, the MLP, and `x (+) f`, the
join of its residual scheme (`residual`, one module of `cod_train/model/residuals/`: plain x + f, gains, GPAS,
hyper-connections' n streams...). The backbone holds the residual stream: `open_stream` makes it from the
embeddings, `close_stream` makes it one hidden state again (the scheme's `open` / `close`).

QK-norm (`qk_norm`): q = Nq(x Wq), k = Nk(x Wk) (RMSNorm) before RoPE, over each head's head_dim (`head`,
Qwen3) or over the whole projection width (`full`, OLMo 2); a placement with `v_norm` (HybridNorm) also
normalizes v the same way.

The final norm `model.norm` follows the last layer, unscaled, in every placement; `embed_scale` (a learnable
scalar, init sqrt(d)) multiplies the embedding output when on (default for dyt / derf). Parameter names are those
of `transformers.LlamaForCausalLM`; every added parameter has a name of its own. The model knows nothing about
parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from cod_train.core.constants import IGNORE_INDEX
from cod_train.model import kernels
from cod_train.model.configuration import CodLlamaConfig
from cod_train.model.loss import causal_lm_loss
from cod_train.model.norms import RMSNorm, embed_scale, make_norm
from cod_train.model.param_init import normal_full_
from cod_train.model.value_residual import FirstLayerValues, ValueResidualMix, mixed_values

# transformers >= 5.24 calls the KV cache `cache` (forward kwarg and output field); earlier v5 releases call it
# `past_key_values`. Both are accepted and the output uses the installed release's name (no deprecation warning).
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def resolve_cache(cache: Cache | None, past_key_values: Cache | None, extra: dict) -> Cache | None:
    """The one KV cache among the two accepted names; a Cache under any other name is an error, not ignored
    (a cache silently dropped makes `generate()` decode wrong tokens without any error)."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
    stray = [k for k, v in extra.items() if isinstance(v, Cache)]
    if stray:
        raise TypeError(f"unexpected KV cache argument {stray[0]!r}: pass it as `cache` (or `past_key_values`)")
    return cache if cache is not None else past_key_values


def rope_cos_sin(
    config: CodLlamaConfig, position_ids: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for `position_ids` [B, T]. Recomputed per call: no buffer for `to_empty()` to wipe."""
    # LlamaConfig.__post_init__ fills `head_dim` and standardizes `rope_parameters`: neither is None here.
    head_dim = cast(int, config.head_dim)
    theta = cast("dict[str, float]", config.rope_parameters)["rope_theta"]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim))
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    """Grouped-query attention with RoPE through `F.scaled_dot_product_attention`, and the optional RMSNorms of
    q and k (`qk_norm`: `q_norm`, `k_norm`, transformers' Qwen3 / Olmo2 names) and of v (HybridNorm: `v_norm`).
    A placement may set `softmax_scale` (None: SDPA's 1/sqrt(head_dim)) and a module `qk_scale`, applied to q and
    k after RoPE and before the KV cache (nGPT)."""

    softmax_scale: float | None = None

    def __init__(self, config: CodLlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        # LlamaConfig.__post_init__ fills `num_key_value_heads` and `head_dim` when they are not given.
        self.n_heads, self.n_kv_heads = config.num_attention_heads, cast(int, config.num_key_value_heads)
        self.head_dim = cast(int, config.head_dim)
        d, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=bias)
        self.use_kernels = kernels.wanted(config)
        self.qk_norm = config.resolved_qk_norm
        if self.qk_norm != "none":
            per_head = self.qk_norm == "head"
            width = {"q": self.n_heads * self.head_dim, "k": self.n_kv_heads * self.head_dim,
                     "v": self.n_kv_heads * self.head_dim}
            for name in ("q", "k", "v") if config.v_norm else ("q", "k"):
                norm = RMSNorm(self.head_dim if per_head else width[name], config.rms_norm_eps)
                setattr(self, f"{name}_norm", norm)
        if config.value_residual and layer_idx > 0:  # ResFormer: v mixed with the first layer's (value_residual.py)
            self.value_mix = ValueResidualMix()

    def _project(self, x: torch.Tensor, name: str, heads: int) -> torch.Tensor:
        """x W, normalized per `qk_norm` where this projection has a norm, as [B, heads, T, head_dim]."""
        b, t, _ = x.shape
        y = getattr(self, f"{name}_proj")(x)
        norm = getattr(self, f"{name}_norm", None)
        if norm is not None and self.qk_norm == "full":
            y = norm(y)
        y = y.view(b, t, heads, self.head_dim)
        if norm is not None and self.qk_norm == "head":
            y = norm(y)
        return y.transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, values: FirstLayerValues | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self._project(x, "q", self.n_heads)
        k = self._project(x, "k", self.n_kv_heads)
        v = mixed_values(self._project(x, "v", self.n_kv_heads), values, getattr(self, "value_mix", None))
        if kernels.active(self.use_kernels, q):
            q, k = kernels.rope(q, k, *rope)
        else:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        qk_scale = getattr(self, "qk_scale", None)
        if qk_scale is not None:
            q, k = qk_scale(q, k)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        # Grouped KV heads are broadcast inside SDPA (`enable_gqa`) instead of being copied n_heads/n_kv times.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1,
                                             enable_gqa=self.n_kv_heads != self.n_heads, scale=self.softmax_scale)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward; a placement may set a module `gate_up_scale` (gate, up) -> (gate, up) (nGPT)."""

    def __init__(self, config: CodLlamaConfig):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias)
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.use_kernels = kernels.wanted(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        gate_up_scale = getattr(self, "gate_up_scale", None)
        if gate_up_scale is not None:
            gate, up = gate_up_scale(gate, up)
        if kernels.active(self.use_kernels, x):
            return self.down_proj(kernels.swiglu(gate, up))
        return self.down_proj(F.silu(gate) * up)


AttnFn = Callable[[torch.Tensor], torch.Tensor]


class DecoderLayer(GradientCheckpointingLayer):
    """One layer: its placement's norms and equations, its residual scheme's parameters and join."""

    # the norms its placement builds, set by name in __init__
    input_layernorm: nn.Module
    post_attention_layernorm: nn.Module
    post_attn_out_norm: nn.Module
    post_mlp_out_norm: nn.Module

    def __init__(self, config: CodLlamaConfig, layer_idx: int):
        super().__init__()
        self.depth = layer_idx + 1
        self.placement_scheme = config.placement_scheme.layer(self.depth, config)
        self.placement = self.placement_scheme.name
        self.residual = config.residual_scheme
        self.self_attn = Attention(config, layer_idx)
        self.mlp = MLP(config)
        for name, site in self.placement_scheme.norms:
            setattr(self, name, make_norm(config, config.hidden_size, site))
        # plain Python floats, not buffers: `to_empty()` (meta-device init) would wipe a buffer
        self.lns_scale, self.residual_scale = 1.0, 1.0
        self.placement_scheme.build_layer(self, config)
        self.residual.build_layer(self, config)
        if config.scaled_init:  # std / sqrt(2L) on the projections that write into the stream
            for proj in (self.self_attn.o_proj, self.mlp.down_proj):
                # nn.Module.__setattr__ is typed Tensor | Module, yet any attribute may be set on a module
                proj.init_std = (getattr(proj, "init_std", config.initializer_range)  # type: ignore[assignment]
                                 / math.sqrt(2.0 * config.num_hidden_layers))

    def branch(self, f: torch.Tensor, site: str) -> torch.Tensor:
        """The output of sub-layer `site` (attn | mlp) as it joins the stream (inside a post-norm)."""
        return self.residual.branch(self, f, site)

    def join(self, x: torch.Tensor, f: torch.Tensor, site: str) -> torch.Tensor:
        """x (+) f where no norm follows the sum."""
        return self.residual.join(self, x, f, site)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The skip path inside a post-norm: the scheme's, times DeepNorm's a."""
        x = self.residual.skip(self, x)
        return self.residual_scale * x if self.residual_scale != 1.0 else x

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, values: FirstLayerValues | None = None,
                **kwargs: Any) -> torch.Tensor:
        def attn(h: torch.Tensor) -> torch.Tensor:
            return self.self_attn(h, rope, mask, past_key_values, values)

        out = self.residual.layer_forward(self, x, attn)
        return out if out is not None else self.placement_scheme.forward(self, x, attn)


class CodLlamaPreTrainedModel(PreTrainedModel):
    config_class = CodLlamaConfig
    config: CodLlamaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        cfg = self.config
        if isinstance(module, nn.Linear):
            normal_full_(module.weight, mean=0.0, std=getattr(module, "init_std", cfg.initializer_range))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = cfg.embedding_init_std if cfg.embedding_init_std is not None else cfg.initializer_range
            normal_full_(module.weight, mean=0.0, std=std)
        elif callable(reset := getattr(module, "reset_parameters", None)):  # norms, gains, schemes' modules
            reset()
        unit_dim = getattr(module, "unit_dim", None)  # nGPT: the weight's vectors along this dim on the unit sphere
        if unit_dim is not None and not getattr(module.weight, "_is_hf_initialized", False):
            from cod_train.model.ngpt import unit_normalize_

            unit_normalize_(cast(torch.Tensor, module.weight), unit_dim)

    @torch.no_grad()
    def reset_weights(self) -> None:
        """Re-initialize every parameter (e.g. after `to_empty()` on a meta-device model)."""
        for module in self.modules():
            # transformers' own init flag, absent from the torch stubs (Module.__setattr__ is typed Tensor | Module)
            module._is_hf_initialized = False  # type: ignore[assignment]
            for p in module.parameters(recurse=False):
                p._is_hf_initialized = False  # type: ignore[attr-defined]
        self.initialize_weights()


def build_attention_mask(attention_mask: torch.Tensor | None, past_len: int, q_len: int,
                         dtype_device: torch.device) -> torch.Tensor | None:
    """Boolean [B, 1, Tq, Tk] mask (True = attend) or None when plain causal attention suffices."""
    if attention_mask is None or (past_len == 0 and bool(attention_mask.all())):
        return None if past_len == 0 or q_len == 1 else _causal(None, past_len, q_len, dtype_device)
    return _causal(attention_mask.bool(), past_len, q_len, dtype_device)


def _causal(key_padding: torch.Tensor | None, past_len: int, q_len: int, device: torch.device) -> torch.Tensor:
    k_len = past_len + q_len
    q_pos = torch.arange(past_len, k_len, device=device)[:, None]
    k_pos = torch.arange(k_len, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None]
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, -k_len:]
        mask = mask | (k_pos == q_pos)[None, None]  # a padded query still sees itself: no all-masked rows
    return mask


class CodLlamaModel(CodLlamaPreTrainedModel):
    def __init__(self, config: CodLlamaConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.has_embed_scale:
            self.embed_scale = embed_scale(config.hidden_size)
        if config.has_embed_norm:
            self.embed_norm = make_norm(config, config.hidden_size, "final")
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        final_norm = config.placement_scheme.final_norm
        self.norm = make_norm(config, config.hidden_size, "final") if final_norm else nn.Identity()
        config.placement_scheme.build_model(self, config)
        config.residual_scheme.build_model(self, config)
        self.post_init()

    def open_stream(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream the first layer reads, from the (scaled / normalized) embeddings [B, T, d]."""
        return self.config.residual_scheme.open(self, x)

    def close_stream(self, stream: torch.Tensor) -> torch.Tensor:
        """The stream between layers as one hidden state [B, T, d], as the final norm sees it."""
        return self.config.residual_scheme.close(self, stream)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        past_key_values = resolve_cache(cache, past_key_values, kwargs)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        positions = (position_ids if position_ids is not None
                     else torch.arange(past_len, past_len + x.shape[1], device=x.device)[None])
        rope = rope_cos_sin(self.config, positions, x.dtype)
        mask = build_attention_mask(attention_mask, past_len, x.shape[1], x.device)
        if hasattr(self, "embed_scale"):
            x = self.embed_scale(x)
        if hasattr(self, "embed_norm"):
            x = self.embed_norm(x)
        hidden_states = [x] if output_hidden_states else None
        x = self.open_stream(x)
        values = FirstLayerValues() if self.config.value_residual else None  # the first layer's v, this forward
        for layer in self.layers:
            x = layer(x, rope, mask, past_key_values, values)
            if hidden_states is not None:  # the stream as one, as the final norm sees it
                hidden_states.append(self.close_stream(x))
        x = self.norm(self.close_stream(x))
        cache_out: dict[str, Any] = {CACHE_FIELD: past_key_values if use_cache else None}
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **cache_out,
        )


class CodLlamaForCausalLM(CodLlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: CodLlamaConfig):
        super().__init__(config)
        self.model = CodLlamaModel(config)
        head = config.placement_scheme.build_head(config)
        self.lm_head = head if head is not None else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Labels follow transformers: `labels` are shifted here; `shift_labels` are already aligned
        (position t predicts `shift_labels[t]`). The loss is sum / `num_items_in_batch` (default: mean).
        With `config.fused_loss` and labels given, logits are not materialized and come back as None.
        The KV cache may be passed as `cache` (transformers >= 5.24) or `past_key_values`."""
        past_key_values = resolve_cache(cache, past_key_values, kwargs)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache if use_cache is not None else (past_key_values is not None),
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        targets: torch.Tensor | None = shift_labels
        if targets is None and labels is not None:
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        loss, logits = None, None
        if targets is not None and self.config.fused_loss and self.training:
            weight = self.lm_head.loss_weight() if hasattr(self.lm_head, "loss_weight") else self.lm_head.weight
            loss = causal_lm_loss(h, weight, targets, num_items_in_batch,
                                  chunk_size=self.config.loss_chunk_size,
                                  use_kernels=kernels.active(kernels.wanted(self.config), h))
        else:
            logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
            if targets is not None:
                loss = causal_lm_loss(None, None, targets, num_items_in_batch, logits=logits)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: getattr(out, CACHE_FIELD)}
        )

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if exclude_embeddings else n

    def num_flops_per_token(self, seq_len: int) -> int:
        from cod_train.model.flops import flops_per_token

        return flops_per_token(self.config, seq_len)
