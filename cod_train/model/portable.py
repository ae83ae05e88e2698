"""Exact rewrites of a cod-train model as an architecture transformers ships (Llama, Qwen3, OLMo 2).

A scheme exports as a shipped architecture only where the rewrite is exact math (no approximation):

- **LNS** (`h = x + Attn(N1(x) / sqrt(l))`): N1(x) / sqrt(l) = (w / sqrt(l)) * x / rms(x), so dividing the
  weights of `input_layernorm` and `post_attention_layernorm` of layer l by sqrt(l) gives a Pre-LN layer.
- **Mix-LN with no Post-LN layer** (floor(ratio * L) = 0) is Pre-LN as it stands.
- **Branch-output factors** (`residual=depth_scaled`: a constant c = (L / L0)^(-alpha); `layerscale`: a
  per-channel gain g; `rezero`: a scalar gain g): the branch adds g * c * (W z + b) = (diag(g c) W) z + g c b,
  so the rows (and bias) of `o_proj` and `down_proj` are scaled; where the branch ends in a norm (reordered
  placement) the norm weight is scaled instead, g c (w * n) = (g c w) * n.
- **Reordered norm with full-width QK-norm** (`h = x + Na(Attn(x))`, q, k normalized over all heads before
  RoPE) is `Olmo2ForCausalLM`; **Pre-LN with per-head QK-norm** is `Qwen3ForCausalLM`.

Not exact, hence exported as self-contained remote code instead: Post-LN and DeepNorm (the sub-layer
output passes a norm before the residual: no Llama layer does that), Sandwich/Peri-LN (a norm on each branch
output plus a norm before it; Peri-LN also normalizes the embeddings), HybridNorm, LayerNorm / DyT / Derf
(other norm functions), norm biases, embedding norms or scales, and GPAS: GPAS scales the residual stream by
a gate, and since RMSNorm's eps does not scale with it, N(s x) != N(x) and no weight change undoes it.

`TARGETS` is the registry: each target names its transformers class and lists, for a given config, the
problems that stop the exact rewrite. Keys of `CodLlamaConfig` beyond LlamaConfig's that no target knows
must be at their default (off), so a new axis is never silently dropped; and every export is checked by
comparing logits (`max_rel_diff`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel

from cod_train.model import zoo
from cod_train.model.configuration import CodLlamaConfig

# cod-only keys that change nothing at inference (init, loss, kernels), or that the checks below consume; a
# foldable residual scheme's own keys are folded into the weights.
INFERENCE_NEUTRAL = frozenset({
    "norm_type", "mix_ln_ratio", "scaled_init", "embedding_init_std", "fused_loss", "loss_chunk_size",
    "use_kernels", "residual", "qk_norm", "norm_fn", "norm_bias", "embed_norm", "embed_scale", "norm_alpha_attn",
    "norm_alpha_mlp", "norm_alpha_final",
})


@dataclass(frozen=True)
class Target:
    name: str  # format name and model_type
    architecture: str  # transformers class
    form: str  # every layer's placement must rewrite into this `export_form` (cod_train.model.zoo.Placement)
    qk_norm: str  # the QK-norm the architecture has: none | head | full
    rename: dict[str, str]  # cod parameter name part -> the target's

    def config_class(self) -> type[PretrainedConfig]:
        import transformers

        return getattr(transformers, self.architecture.replace("ForCausalLM", "Config"))

    def model_class(self) -> type[PreTrainedModel]:
        import transformers

        return getattr(transformers, self.architecture)


TARGETS: dict[str, Target] = {
    "llama": Target("llama", "LlamaForCausalLM", "pre_ln", "none", {}),
    "qwen3": Target("qwen3", "Qwen3ForCausalLM", "pre_ln", "head", {}),
    "olmo2": Target("olmo2", "Olmo2ForCausalLM", "reordered_ln", "full",
                    {"post_attn_out_norm": "post_attention_layernorm",
                     "post_mlp_out_norm": "post_feedforward_layernorm"}),
}


def cod_only_keys() -> set[str]:
    return set(CodLlamaConfig().to_dict()) - set(LlamaConfig().to_dict())


def _scheme(config: CodLlamaConfig) -> dict[str, Any]:
    """The axes (with what they resolve to; absent ones at their off value)."""
    qk = getattr(config, "resolved_qk_norm", "none")
    return {"qk_norm": qk, "norm_fn": getattr(config, "norm_fn", "rmsnorm"),
            "norm_bias": getattr(config, "norm_bias", False), "residual": getattr(config, "residual", "plain"),
            "embed_norm": getattr(config, "has_embed_norm", False),
            "embed_scale": getattr(config, "has_embed_scale", False), "v_norm": getattr(config, "v_norm", False)}


def target_problems(config: CodLlamaConfig, target: Target) -> list[str]:
    """Why ``config`` has no exact ``target`` form (empty = it has one)."""
    s, problems = _scheme(config), []
    layers = [config.placement_scheme.layer(d, config) for d in range(1, config.num_hidden_layers + 1)]
    if any(layer.export_form != target.form for layer in layers):
        names = sorted({layer.name for layer in layers})
        problems.append(f"norm_type={config.norm_type} builds {'/'.join(names)} layers")
    if s["qk_norm"] != target.qk_norm or s["v_norm"]:
        problems.append(f"qk_norm={s['qk_norm']}{' with v_norm' if s['v_norm'] else ''}")
    for key, off in (("norm_fn", "rmsnorm"), ("norm_bias", False), ("embed_norm", False), ("embed_scale", False)):
        if s[key] != off:
            problems.append(f"{key}={s[key]}")
    residual = config.residual_scheme
    if not residual.foldable:
        problems.append(f"residual={s['residual']}")
    if target.name in ("qwen3", "olmo2") and config.mlp_bias:
        problems.append("mlp_bias=true")
    defaults = CodLlamaConfig().to_dict()
    neutral = INFERENCE_NEUTRAL | {k for r in zoo.RESIDUALS.values() if r.foldable for k in r.keys}
    problems += [f"{k}={getattr(config, k)!r}" for k in sorted(cod_only_keys() - neutral)
                 if getattr(config, k, None) != defaults.get(k)]
    return problems


def portable_target(config: PretrainedConfig) -> Target | None:
    """The shipped architecture ``config`` rewrites into exactly, if any (a non-cod config is its own)."""
    if not isinstance(config, CodLlamaConfig):
        return None
    return next((t for t in TARGETS.values() if not target_problems(config, t)), None)


def _scale_rows(state: dict[str, torch.Tensor], name: str, g: torch.Tensor | float) -> None:
    for suffix in ("weight", "bias"):
        key = f"{name}.{suffix}"
        if key in state:
            t = state[key]
            factor = g if isinstance(g, float) else (g[:, None] if t.dim() == 2 and g.numel() > 1 else g)
            state[key] = (t.float() * factor).to(t.dtype)


def fold_state(model: PreTrainedModel, target: Target) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (a CodLlamaForCausalLM) rewritten as ``target``'s, folds applied."""
    config = model.config
    assert isinstance(config, CodLlamaConfig)
    state = {k: v.detach() for k, v in model.state_dict().items()}  # the folds below make new tensors
    residual = config.residual_scheme
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        attn_g, mlp_g = (residual.branch_factor(state, prefix, site, config) for site in ("attn", "mlp"))
        config.placement_scheme.layer(i + 1, config).fold_layer(state, prefix, i + 1, attn_g, mlp_g, _scale_rows)
    for old, new in target.rename.items():
        state = {k.replace(f".{old}.", f".{new}."): v for k, v in state.items()}
    return state


def target_config(config: CodLlamaConfig, target: Target) -> PretrainedConfig:
    """``config`` as ``target``'s config class: every key that class has, taken over unchanged."""
    cls = target.config_class()
    known = set(cls().to_dict()) - {"model_type", "transformers_version", "architectures", "auto_map"}
    values = {k: v for k, v in config.to_dict().items() if k in known}
    if "layer_types" in known:
        values["layer_types"] = ["full_attention"] * config.num_hidden_layers
    if "use_sliding_window" in known:
        values["use_sliding_window"] = False
    out = cls(**values)
    out.architectures = [target.architecture]
    # the scheme it was trained with, for labels (cod-eval, cod-analyze); transformers keeps unknown keys as is
    out.norm_type = config.norm_type
    return out


def to_target(model: PreTrainedModel, target: Target) -> PreTrainedModel:
    """A ``target`` model (same dtype) computing what ``model`` computes."""
    config = model.config
    assert isinstance(config, CodLlamaConfig)
    out_config = target_config(config, target)
    state = fold_state(model, target)
    from transformers.initialization import no_init_weights

    with no_init_weights():  # every weight is overwritten below; buffers (RoPE tables) are computed
        out = target.model_class()(out_config)
    missing, unexpected = out.load_state_dict(state, strict=False, assign=True)  # no copy: shared with model
    tied = set(getattr(out, "all_tied_weights_keys", None) or {})
    if [k for k in missing if k not in tied] or unexpected:
        raise ValueError(f"{target.architecture}: weights do not map: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")
    out.tie_weights()
    torch.nn.Module.to(out, next(model.parameters()).dtype)  # in place (PreTrainedModel.to's stub is narrower)
    return out.eval()


@torch.no_grad()
def max_rel_diff(a: PreTrainedModel, b: PreTrainedModel, vocab: int, length: int = 12) -> float:
    """max |logits_a - logits_b| / max |logits_b| on a fixed pseudo-random input (fp32)."""
    ids = torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0))
    la = a(input_ids=ids).logits.float()
    lb = b(input_ids=ids).logits.float()
    return float((la - lb).abs().max() / lb.abs().max().clamp_min(1e-30))




# -- import: a shipped checkpoint as a cod-train model (``cod-pretrain init_from=``) --

IMPORTABLE = ("llama", "mistral", "qwen2", "qwen3", "cod_llama")


def import_problems(config: PretrainedConfig) -> list[str]:
    """Why the checkpoint of ``config`` does not map exactly onto a cod-train Pre-LN model (empty: it does)."""
    mt = getattr(config, "model_type", None)
    if mt not in IMPORTABLE:
        return [f"model_type {mt!r} is not one of {', '.join(IMPORTABLE)}"]
    if mt == "cod_llama":
        return []
    c, problems = config, []
    rope = getattr(c, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"RoPE scaling {rope.get('rope_type')!r} (cod-train computes plain RoPE)")
    if getattr(c, "hidden_act", "silu") != "silu":
        problems.append(f"activation {c.hidden_act!r} (cod-train's MLP is SwiGLU with silu)")
    window = getattr(c, "sliding_window", None)
    if window and (mt == "mistral" or getattr(c, "use_sliding_window", False)) and window < c.max_position_embeddings:
        problems.append(f"sliding-window attention ({window} of {c.max_position_embeddings} positions)")
    if any(t != "full_attention" for t in (getattr(c, "layer_types", None) or ())) and not problems:
        problems.append("layers other than full attention")
    head_dim = getattr(c, "head_dim", None)
    if head_dim and head_dim * c.num_attention_heads != c.hidden_size:
        problems.append(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    if getattr(c, "mlp_bias", False):
        problems.append("MLP biases")
    if mt == "llama" and getattr(c, "attention_bias", False):
        problems.append("attention biases")
    return problems


def imported_model_fields(config: PretrainedConfig, fields: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config values, CodLlamaConfig overrides)`` of the cod-train model ``config``'s checkpoint
    maps onto. ``fields`` are the keys of cod-train's model config; what they cannot say goes in overrides."""
    values = {k: getattr(config, k) for k in fields if k != "name" and hasattr(config, k)}
    rope = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" in rope:
        values["rope_theta"] = float(rope["rope_theta"])
    overrides: dict[str, Any] = {}
    if config.model_type != "cod_llama":
        values.update(norm_type="pre_ln", qk_norm="head" if config.model_type == "qwen3" else "none")
        if config.model_type == "qwen2":  # q, k, v biases; o_proj's (cod-train has one) starts at zero
            overrides["attention_bias"] = True
    return {k: v for k, v in values.items() if k in fields}, overrides


def load_imported(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
    """Fill ``model`` (cod-train) with a shipped checkpoint's ``state``; a bias it lacks must be ``o_proj``'s
    (Qwen2), set to zero so the function is the checkpoint's."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    zero = [k for k in missing if k.endswith("self_attn.o_proj.bias")]
    left = [k for k in missing if k not in zero and k not in tied]
    if left or unexpected:
        raise ValueError(f"the checkpoint's weights do not map: missing {left[:4]}, unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name in zero:
            model.get_parameter(name).zero_()
