"""The depth zoo's registry: every placement (`norm_type`) and residual scheme (`residual`) is one module of
`cod_train/model/placements/` or `cod_train/model/residuals/`, registered here by a class decorator.

This module and the scheme modules are free of torch, transformers and omegaconf at import time (a scheme imports
what it builds inside `build_*`), so the run config validates a scheme before any of them is imported. Everything
that depends on the scheme asks the registry instead of naming schemes: config validation (`problems`), run-dir
names and report labels (`scheme_name`), the model (`build_layer`, `join`, `skip`, `open` / `close`), parameter
counts and MACs, exports (`folds`, `remote_code`), learned-scalar diagnostics and the model card.

A scheme defined outside cod_train registers the same way; name its module in `$COD_TRAIN_PLUGINS` (comma
separated) or under the `cod_train.schemes` entry-point group so every command (and a remote-code export) finds it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

PLUGINS_ENV = "COD_TRAIN_PLUGINS"
ENTRY_POINT_GROUP = "cod_train.schemes"
QK_NORMS = ("none", "head", "full")
NORM_FNS = ("rmsnorm", "layernorm", "dyt", "derf")


@dataclass
class ZooAxes:
    """The depth-zoo axes, declared once: the run config's `model.*` and `CodLlamaConfig` both inherit them.
    Equations: the modules of `cod_train/model/placements/` and `cod_train/model/residuals/`."""

    norm_type: str = "pre_ln"  # the placement: a module of cod_train/model/placements
    mix_ln_ratio: float = 0.25  # mix_ln: layers l <= floor(ratio * L) are Post-LN
    embed_norm: bool | None = None  # a norm on the embedding output; null = the placement's own (peri_ln: on)
    qk_norm: str | None = None  # none | head | full: RMSNorm of q and k before RoPE; null = the placement's own
    norm_fn: str = "rmsnorm"  # rmsnorm | layernorm | dyt | derf: the function of every block and final norm
    norm_bias: bool = False  # layernorm / dyt / derf: a learnable per-channel bias (beta)
    norm_alpha_attn: float = 0.8  # dyt / derf initial alpha of the attention-side norms (DyT LLaMA-7B values)
    norm_alpha_mlp: float = 0.2  # ... of the MLP-side norms
    norm_alpha_final: float = 0.2  # ... of the final norm (and the embedding norm)
    embed_scale: bool | None = None  # learnable scalar (init sqrt(d)) on the embedding output; null = on for dyt/derf
    residual: str = "plain"  # how each branch joins the stream: a module of cod_train/model/residuals
    layerscale_init: float = 0.1  # layerscale: initial value of the per-channel branch gains
    depth_alpha: float = 1.0  # depth_scaled: branch x (L / depth_base_layers)^(-alpha); 0.5 depth-muP, 1 CompleteP
    depth_base_layers: int = 1  # depth_scaled: the depth L_base the other hyperparameters were tuned at
    depth_hparams: bool = False  # depth_scaled: CompleteP's per-depth learning-rate and Adam-eps rules
    hc_streams: int = 4  # hc / mhc: number n of parallel residual streams
    hc_dynamic: bool = False  # hc: add the input-dependent terms s * tanh(N(H) W) (DHC); false = static HC
    hc_sinkhorn_iters: int = 20  # mhc: Sinkhorn-Knopp iterations making the stream mixing doubly stochastic
    hc_collapse: str | None = None  # hc / mhc: streams -> one before the final norm: sum | mean | head; null = own
    attnres_blocks: int = 4  # block_attnres: number N of blocks the layers are grouped into (the paper: about 8)
    scaled_init: bool = False  # std / sqrt(2L) on o_proj and down_proj
    denseformer_dilation: int = 1  # denseformer: each depth-weighted average reads every k-th earlier output
    denseformer_period: int = 1  # denseformer: a depth-weighted average after every p-th layer only
    value_residual: bool = False  # ResFormer: every later layer's attention values mixed with the first layer's


AXIS_NAMES = tuple(f.name for f in fields(ZooAxes))
AXIS_DEFAULTS = {f.name: f.default for f in fields(ZooAxes)}


def axis(axes: Any, key: str) -> Any:
    """`key` of a config object or dict, its ZooAxes default where absent."""
    value = axes.get(key, None) if isinstance(axes, dict) else getattr(axes, key, None)
    return AXIS_DEFAULTS.get(key) if value is None else value


class Scheme:
    """What every scheme declares (torch-free)."""

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]] = ()  # the ZooAxes keys that belong to this scheme
    label_keys: ClassVar[tuple[str, ...]] = ()  # the keys its `label` reads
    summary: ClassVar[str] = ""  # one sentence (README table, model card)
    equations: ClassVar[str] = ""  # the sub-layer equations (README table, model card)
    paper: ClassVar[str] = ""
    tags: ClassVar[tuple[str, ...]] = ()  # extra Hub tags of a model card

    def label(self, axes: Any) -> str:
        """This scheme's part of the run-dir name (`lns`, `gpas`, `depth0.5_hp`); "" for none."""
        return self.name

    def detail(self, axes: Any) -> str:
        """What a report label adds to the run-dir name (Mix-LN's ratio where it is not the default)."""
        return ""

    def problems(self, axes: Any) -> list[str]:
        """Combinations of the axes this scheme does not make sense with, each with what does combine."""
        return []

    def key_problems(self, axes: Any) -> list[str]:
        """Checked whatever scheme is chosen: bad values of this scheme's keys, and its keys set while it is not
        chosen where that would be silently ignored."""
        return []

    def card_axes(self, axes: Any) -> dict[str, Any]:
        """The numbers its equations use, that a model card lists even at their defaults."""
        return {}

    def card_phrase(self, axes: Any) -> str:
        """The scheme in the model card's sentence."""
        kind = "normalization placement" if self.name in PLACEMENTS else "residual join"
        return f"{kind} `{self.name}`"


S = TypeVar("S", bound=type)
PLACEMENTS: dict[str, Any] = {}
RESIDUALS: dict[str, Any] = {}


def register_placement(cls: S) -> S:
    PLACEMENTS[cls.name] = cls()  # type: ignore[attr-defined]
    return cls


def register_residual(cls: S) -> S:
    RESIDUALS[cls.name] = cls()  # type: ignore[attr-defined]
    return cls


_loaded: set[str] = set()


def load_schemes() -> None:
    """Import the built-in scheme modules, the entry points' (once) and every module named in $COD_TRAIN_PLUGINS
    not imported yet (the variable is read on each call: a test or a launcher may set it late)."""
    if not _loaded:
        _loaded.add("cod_train")
        importlib.import_module("cod_train.model.placements")
        importlib.import_module("cod_train.model.residuals")
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            importlib.import_module(ep.value.split(":")[0])
    for name in os.environ.get(PLUGINS_ENV, "").split(","):
        if name.strip() and name.strip() not in _loaded:
            _loaded.add(name.strip())
            importlib.import_module(name.strip())


PLUGIN_HINT = f"(a scheme defined outside cod_train: name its module in ${PLUGINS_ENV})"


def placement(name: str) -> Any:
    load_schemes()
    if name not in PLACEMENTS:
        raise ValueError(f"unknown norm_type {name!r}; valid: {', '.join(PLACEMENTS)} {PLUGIN_HINT}")
    return PLACEMENTS[name]


def residual(name: str) -> Any:
    load_schemes()
    if name not in RESIDUALS:
        raise ValueError(f"unknown residual {name!r}; valid: {', '.join(RESIDUALS)} {PLUGIN_HINT}")
    return RESIDUALS[name]


def placement_names() -> tuple[str, ...]:
    load_schemes()
    return tuple(PLACEMENTS)


def residual_names() -> tuple[str, ...]:
    load_schemes()
    return tuple(RESIDUALS)


def label_keys() -> tuple[str, ...]:
    """Every key a scheme label (`scheme_name`) can read, with `detail`'s."""
    load_schemes()
    keys = ["norm_type", "residual", "norm_fn", "qk_norm", "value_residual"]
    for scheme in [*PLACEMENTS.values(), *RESIDUALS.values()]:
        keys += [k for k in scheme.label_keys if k not in keys]
    return tuple(keys)


def resolved_qk_norm(norm_type: str, qk_norm: str | None) -> str:
    """`qk_norm: null` = the placement's own (per-head q/k/v norms for HybridNorm, none otherwise)."""
    return placement(norm_type).qk_norm_default if qk_norm is None else qk_norm


def resolved_embed_norm(norm_type: str, embed_norm: bool | None) -> bool:
    """`embed_norm: null` = the placement's own (on for peri_ln only)."""
    return placement(norm_type).embed_norm_default if embed_norm is None else embed_norm


def resolved_embed_scale(norm_fn: str, embed_scale: bool | None) -> bool:
    """`embed_scale: null` = on for dyt / derf (the authors' LLaMA / GPT code: a learnable scalar, init sqrt(d),
    multiplies the embedding output), off otherwise."""
    return norm_fn in ("dyt", "derf") if embed_scale is None else embed_scale


def scheme_of(axes: Any) -> tuple[Any, Any]:
    """(placement, residual) of a config object or dict."""
    return placement(str(axis(axes, "norm_type"))), residual(str(axis(axes, "residual")))


def scheme_name(axes: Any) -> str:
    """A model's scheme in one word for its run directory and every label: the placement, then each axis off its
    default (``lns``, ``lns+gpas+qk_head``, ``pre_ln+dyt``, ``pre_ln+depth0.5``, ``pre_ln+dhc4``)."""
    place, res = scheme_of(axes)
    parts = [place.label(axes), res.label(axes)]
    norm_fn, qk = axis(axes, "norm_fn"), axis(axes, "qk_norm")
    parts.append(norm_fn if norm_fn != "rmsnorm" else "")
    parts.append(f"qk_{qk}" if qk is not None and qk != place.qk_norm_default else "")
    parts.append("vres" if axis(axes, "value_residual") is True else "")
    return "+".join(p for p in parts if p)


def _unknown(axes: Any) -> list[str]:
    choices = {"norm_type": placement_names(), "residual": residual_names(), "norm_fn": NORM_FNS,
               "qk_norm": QK_NORMS}
    return [f"unknown {key} {axis(axes, key)!r}; valid: {', '.join(valid)}"
            + (f" {PLUGIN_HINT}" if key in ("norm_type", "residual") else "") for key, valid in choices.items()
            if axis(axes, key) is not None and axis(axes, key) not in valid]


def scheme_problems(axes: Any) -> list[str]:
    """Every problem with the zoo axes of `axes` (a config object or dict), as sentences that say what to change."""
    problems = _unknown(axes)
    if problems:
        return problems
    place, res = scheme_of(axes)
    problems += place.problems(axes) + res.problems(axes)
    for scheme in [*PLACEMENTS.values(), *RESIDUALS.values()]:
        problems += scheme.key_problems(axes)
    if axis(axes, "norm_bias") and axis(axes, "norm_fn") == "rmsnorm":
        problems.append("norm_bias=true needs a norm function with a bias: norm_fn=layernorm, dyt or derf "
                        "(RMSNorm has none)")
    for key in ("norm_alpha_attn", "norm_alpha_mlp", "norm_alpha_final"):
        if axis(axes, key) <= 0:
            problems.append(f"{key} must be > 0, got {axis(axes, key)}")
    if not isinstance(axis(axes, "value_residual"), bool):
        problems.append(f"value_residual must be true or false, got {axis(axes, 'value_residual')!r}")
    return problems


def run_problems(run: Any) -> list[str]:
    """Problems of a run config (`run.model`, `run.train`, `run.distributed`) with its placement."""
    return list(placement(str(axis(run.model, "norm_type"))).run_problems(run))


class Placement(Scheme):
    """A `norm_type`: where the norms sit in a layer. `forward(b, x, attn)` is the layer's equations, written with
    the block's parts: its norms (`norms`, built by name), `b.self_attn` / `b.mlp`, and the residual scheme's
    `b.join(x, f, site)` (x (+) f where no norm follows) and `b.skip(x)` / `b.branch(f, site)` (inside a post-norm)."""

    norms: ClassVar[tuple[tuple[str, str], ...]] = (("input_layernorm", "attn"), ("post_attention_layernorm", "mlp"))
    qk_norm_default: ClassVar[str] = "none"
    embed_norm_default: ClassVar[bool] = False
    v_norm: ClassVar[bool] = False  # attention normalizes v as well (same granularity as qk_norm)
    pre_norm: ClassVar[bool] = False  # x passes unnormalized from layer to layer (what hyper-connections need)
    export_form: ClassVar[str | None] = None  # the shipped layer it rewrites into exactly: pre_ln | reordered_ln
    mid_stream: ClassVar[str] = "post_attention_layernorm"  # the module whose input is the stream between sub-layers
    final_norm: ClassVar[bool] = True  # the backbone ends with `model.norm` (nGPT: the stream is unit already)

    def layer(self, depth: int, config: Any) -> Placement:
        """The placement of the layer at 1-based `depth` (Mix-LN: Post-LN, then Pre-LN)."""
        return self

    def build_layer(self, block: Any, config: Any) -> None:
        """Anything beyond the norms a layer of this placement holds (plain floats, init stds)."""

    def build_model(self, model: Any, config: Any) -> None:
        """The backbone's own parts of this placement (after its layers are built)."""

    def build_head(self, config: Any) -> Any:
        """The output layer `lm_head` (an nn.Module with a `weight` [vocab, d]); None = a plain nn.Linear."""
        return None

    def callbacks(self, config: Any) -> list[Any]:
        """The training loop's callbacks of this placement (`cod_train.train.loop.Callback`; nGPT renormalizes
        its weights after each optimizer step)."""
        return []

    def run_problems(self, run: Any) -> list[str]:
        """Problems of a whole run config (`run.train`, `run.distributed`) with this placement."""
        return []

    def forward(self, b: Any, x: Any, attn: Any) -> Any:
        raise NotImplementedError

    def fold_layer(self, state: dict[str, Any], prefix: str, depth: int, attn_g: Any, mlp_g: Any,
                   scale_rows: Any) -> None:
        """Rewrite the layer's weights in `state` as `export_form`'s, the branch factors (`attn_g`, `mlp_g`: the
        residual scheme's) folded in: by default into the rows of `o_proj` and `down_proj`."""
        scale_rows(state, f"{prefix}.self_attn.o_proj", attn_g)
        scale_rows(state, f"{prefix}.mlp.down_proj", mlp_g)


class Residual(Scheme):
    """A `residual`: how each branch output f joins the stream x. The default is the plain sum."""

    foldable: ClassVar[bool] = False  # the branch factor folds exactly into weights (exports to shipped classes)
    placements: ClassVar[tuple[str, ...] | None] = None  # the norm types it is defined on (None: every one)
    placement_reason: ClassVar[str] = ""  # why (for the error)
    multi_stream: ClassVar[bool] = False  # the stream between layers is n streams [.., n, d], not one [.., d]
    layer_reads_history: ClassVar[bool] = False  # a layer reads earlier layers' outputs, not only the stream
    scalar_params: ClassVar[tuple[str, ...]] = ()  # its learned scalars by name inside a layer (diagnostics)
    # cod-analyze's figures of its `analyses`: PNG stem -> "module:function", drawn by `function(entries, path)`
    # (None when no entry has what it draws); named, not imported: the report layer sits above the model
    figures: ClassVar[dict[str, str]] = {}

    def label(self, axes: Any) -> str:
        return "" if self.name == "plain" else self.name

    def problems(self, axes: Any) -> list[str]:
        norm_type = axis(axes, "norm_type")
        if self.placements is None or norm_type in self.placements:
            return []
        return [f"residual={self.name} is defined on {self.placement_reason}: it combines with "
                f"norm_type={' or '.join(self.placements)}, not with norm_type={norm_type}"]

    def build_layer(self, block: Any, config: Any) -> None:
        """The layer's own parameters of this scheme (attached to the block under their public names)."""

    def build_model(self, model: Any, config: Any) -> None:
        """The backbone's own parameters of this scheme."""

    def branch(self, b: Any, f: Any, site: str) -> Any:
        """The branch output of sub-layer `site` (attn | mlp) as it joins the stream."""
        return f

    def shape_problems(self, axes: Any, num_hidden_layers: int) -> list[str]:
        """Problems of its axes with the model's depth (checked once the depth is known to be valid)."""
        return []

    def join(self, b: Any, x: Any, f: Any, site: str) -> Any:
        """x (+) f where no norm follows the sum."""
        return x + self.branch(b, f, site)

    def skip(self, b: Any, x: Any) -> Any:
        """The skip path inside a post-norm: N(skip(x) + branch(f))."""
        return x

    def layer_forward(self, b: Any, x: Any, attn: Any) -> Any:
        """The whole layer, for a scheme that changes what a sub-layer reads (None: the placement's equations)."""
        return None

    def open(self, model: Any, x: Any) -> Any:
        """The residual stream the first layer reads, from the embedding output."""
        return x

    def close(self, model: Any, stream: Any) -> Any:
        """The stream between layers as one hidden state, as the final norm sees it."""
        return stream

    def branch_factor(self, state: dict[str, Any], prefix: str, site: str, config: Any) -> Any:
        """For an export fold: the factor the branch output is multiplied by (a float or a per-channel tensor),
        its parameters removed from `state`."""
        return 1.0

    def extra_macs(self, config: Any) -> int:
        """Forward multiply-adds per token beyond the projections and attention."""
        return 0

    def learned_scalars(self, backbone: Any, value: Any = None, batch: Any = None) -> dict[str, Any]:
        """Diagnostics of this scheme's own weights beyond the generic learned scalars, per layer (`value` gathers
        a sharded parameter: a collective, every rank calls it); with a `batch`, also their token means where
        they depend on the input."""
        return {}

    def recorder(self, backbone: Any, mask: Any) -> Any:
        """A context manager that records this scheme's input-dependent weights during the forwards run inside
        it (`.stats()`: the `learned_scalars` keys with the suffix `.tokens`); None where there are none."""
        return None

    def analyses(self, backbone: Any, batch: Any) -> dict[str, Any]:
        """cod-analyze's extra outputs of this scheme (hyper-connections: `hc_connection_map`)."""
        return {}

    def optimizer_scales(self, config: Any) -> tuple[float, float]:
        """(learning-rate factor, Adam-eps factor) of every parameter inside the blocks."""
        return 1.0, 1.0



def model_problems(*, hidden_size: int, intermediate_size: int, num_hidden_layers: int, num_attention_heads: int,
                   num_key_value_heads: int | None, vocab_size: int | None, max_position_embeddings: int,
                   initializer_range: float = 0.02, embedding_init_std: float | None = None,
                   **axes: Any) -> list[str]:
    """Every problem with a model config (its shape and its zoo axes), as sentences that say what to change."""
    sizes = {"hidden_size": hidden_size, "intermediate_size": intermediate_size,
             "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
             "max_position_embeddings": max_position_embeddings, "vocab_size": vocab_size,
             "num_key_value_heads": num_key_value_heads}
    problems = [f"{key} must be a positive integer, got {value!r}" for key, value in sizes.items()
                if value is not None and (not isinstance(value, int) or value <= 0)]
    problems += scheme_problems({**axes, "num_attention_heads": num_attention_heads,
                                 "num_key_value_heads": num_key_value_heads})
    if initializer_range is not None and initializer_range < 0:
        problems.append(f"initializer_range must be >= 0, got {initializer_range}")
    if embedding_init_std is not None and embedding_init_std < 0:
        problems.append(f"embedding_init_std must be >= 0, got {embedding_init_std}")
    if problems:  # the divisibility checks below need positive sizes
        return problems
    kv_heads = num_key_value_heads or num_attention_heads
    if hidden_size % num_attention_heads:
        problems.append(f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})")
    if num_attention_heads % kv_heads:
        problems.append(f"num_attention_heads ({num_attention_heads}) must be divisible by num_key_value_heads "
                        f"({kv_heads})")
    elif (hidden_size // num_attention_heads) % 2:
        problems.append(f"head dim {hidden_size // num_attention_heads} must be even for RoPE")
    problems += scheme_of(axes)[1].shape_problems(axes, num_hidden_layers)
    return problems
