"""Typed configuration: Hydra YAML -> these dataclasses -> each component's ``build``.

Every Hydra app composes YAML from ``configs/`` and then calls :func:`to_typed` with its schema. The merge
against the dataclass rejects unknown keys and wrong types with a message that names the key, before
any work starts. Each component validates its own semantics in ``validate()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cod_train.core.errors import ConfigError  # noqa: F401  (re-exported: cod_train.config.ConfigError)

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
OPTIMIZERS = ("adamw", "adam")
ENGINES = ("single", "ddp", "fsdp", "deepspeed")
BACKENDS = ("auto", "nccl", "gloo")
AC_MODES = ("none", "full", "selective")
FSDP_PARAM_DTYPES = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("sample", "files", "c4", "shards")
TEXT_UNITS = ("line", "paragraph", "file")

# The depth zoo's axes (equations: cod_train/model/modeling.py, README "Normalization and residual schemes").
NORM_TYPES = ("pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln", "reordered_ln",
              "hybrid_ln", "hybrid_ln_star")
QK_NORMS = ("none", "head", "full")
NORM_FNS = ("rmsnorm", "layernorm", "dyt", "derf")
RESIDUALS = ("plain", "layerscale", "rezero", "depth_scaled", "gpas")
HYBRID_NORM_TYPES = ("hybrid_ln", "hybrid_ln_star")
# Residual schemes that widen the stream to `hc_streams` copies (cod_train/model/hyper_connections.py), the
# placements they are defined on (the HC / mHC papers' Pre-Norm blocks; LNS is Pre-LN with scaled norms) and
# how the streams become one before the final norm (null = the scheme's own: sum for hc, head for mhc).
HYPER_RESIDUALS = ("hc", "mhc")
HYPER_PLACEMENTS = ("pre_ln", "lns")
HC_COLLAPSES = ("sum", "mean", "head")


def resolved_qk_norm(norm_type: str, qk_norm: str | None) -> str:
    """`qk_norm: null` = the placement's own: per-head q/k/v norms for HybridNorm, none otherwise."""
    if qk_norm is None:
        return "head" if norm_type in HYBRID_NORM_TYPES else "none"
    return qk_norm


def resolved_embed_norm(norm_type: str, embed_norm: bool | None) -> bool:
    """`embed_norm: null` = on for peri_ln only (the Peri-LN paper treats it as optional)."""
    return norm_type == "peri_ln" if embed_norm is None else embed_norm


def resolved_embed_scale(norm_fn: str, embed_scale: bool | None) -> bool:
    """`embed_scale: null` = on for dyt / derf (the authors' LLaMA / GPT code: a learnable scalar, init sqrt(d),
    multiplies the embedding output), off otherwise."""
    return norm_fn in ("dyt", "derf") if embed_scale is None else embed_scale


def scheme_name(norm_type: str, qk_norm: str | None = None, norm_fn: str = "rmsnorm", residual: str = "plain",
                depth_alpha: float = 1.0, depth_hparams: bool = False, hc_dynamic: bool = False,
                hc_streams: int = 4) -> str:
    """A run's scheme in one word for its run directory: the placement, then each axis off its default
    (``lns``, ``lns+gpas+qk_head``, ``pre_ln+dyt``, ``pre_ln+depth0.5``, ``pre_ln+depth1_hp``, ``pre_ln+dhc4``)."""
    parts = [norm_type]
    if residual in HYPER_RESIDUALS:
        parts.append(f"{'d' if hc_dynamic and residual == 'hc' else ''}{residual}{hc_streams}")
    elif residual == "depth_scaled":
        parts.append(f"depth{depth_alpha:g}" + ("_hp" if depth_hparams else ""))
    elif residual != "plain":
        parts.append(residual)
    if norm_fn != "rmsnorm":
        parts.append(norm_fn)
    if qk_norm is not None and qk_norm != resolved_qk_norm(norm_type, None):
        parts.append(f"qk_{qk_norm}")
    return "+".join(parts)


SCHEME_AXES = ("qk_norm", "norm_fn", "residual", "depth_alpha", "depth_hparams", "hc_dynamic", "hc_streams")


def model_scheme(model: Any) -> str:
    """:func:`scheme_name` of a model's config (a ``ModelConfig``, a ``CodLlamaConfig`` or either as a dict)."""
    def get(key: str) -> Any:
        return model.get(key) if isinstance(model, dict) else getattr(model, key, None)

    return scheme_name(str(get("norm_type")), **{k: get(k) for k in SCHEME_AXES if get(k) is not None})


def source_name(spec: str) -> str:
    """A model source's short name for a run directory: a local directory's own name (its run's for
    ``<run>/hf``), a hub name with ``_`` for ``/`` (``Qwen/Qwen3-0.6B`` -> ``Qwen_Qwen3-0.6B``)."""
    path = Path(spec.rstrip("/")).expanduser()
    if not path.exists():
        return spec.strip("/").replace("/", "_")
    return path.parent.name if path.name == "hf" and path.parent.name else path.name


def pretrain_run_dir(model_name: str, scheme: str, init_from: str = "") -> str:
    """cod-pretrain's default run_dir: ``runs/<model>-<scheme>``, or ``runs/from-<source name>`` with
    ``init_from=`` (the model is then the source's, whatever ``model=`` / ``norm=`` say)."""
    return f"runs/from-{source_name(init_from)}" if init_from else f"runs/{model_name}-{scheme}"


def _choice_problems(norm_type: str, qk_norm: str | None, norm_fn: str, residual: str) -> list[str]:
    axes = {"norm_type": (norm_type, NORM_TYPES), "norm_fn": (norm_fn, NORM_FNS), "residual": (residual, RESIDUALS + HYPER_RESIDUALS)}
    if qk_norm is not None:
        axes["qk_norm"] = (qk_norm, QK_NORMS)
    return [f"unknown {key} {value!r}; valid: {', '.join(valid)}" for key, (value, valid) in axes.items()
            if value not in valid]


def combination_problems(*, norm_type: str, qk_norm: str | None, norm_fn: str, residual: str,
                         norm_bias: bool = False, depth_hparams: bool = False, scaled_init: bool = False,
                         **_: object) -> list[str]:
    """Combinations of the axes that make no sense, each with what does combine. Everything else composes."""
    problems = _choice_problems(norm_type, qk_norm, norm_fn, residual)
    if problems:
        return problems
    if norm_type in HYBRID_NORM_TYPES and resolved_qk_norm(norm_type, qk_norm) == "none":
        problems.append(f"norm_type={norm_type} normalizes q, k and v by definition, so qk_norm=none does not "
                        "combine with it; use qk_norm=head (the default for HybridNorm) or qk_norm=full")
    if residual == "depth_scaled" and norm_type == "deepnorm":
        problems.append("residual=depth_scaled does not combine with norm_type=deepnorm (both rescale the residual "
                        "stream by depth: DeepNorm up-weights x by (2L)^(1/4)); depth_scaled combines with every "
                        "other placement: " + ", ".join(t for t in NORM_TYPES if t != "deepnorm"))
    if norm_bias and norm_fn == "rmsnorm":
        problems.append("norm_bias=true needs a norm function with a bias: norm_fn=layernorm, dyt or derf "
                        "(RMSNorm has none)")
    if depth_hparams and residual != "depth_scaled":
        problems.append("depth_hparams=true (the CompleteP learning-rate / Adam-epsilon rules) belongs to "
                        "residual=depth_scaled; set residual=depth_scaled or depth_hparams=false")
    if depth_hparams and scaled_init:
        problems.append("depth_hparams=true keeps the init independent of depth (CompleteP), so scaled_init=true "
                        "does not combine with it")
    return problems


def config_problems(
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int | None,
    vocab_size: int | None,
    max_position_embeddings: int,
    norm_type: str,
    mix_ln_ratio: float,
    initializer_range: float = 0.02,
    embedding_init_std: float | None = None,
    **scheme: Any,
) -> list[str]:
    """Every problem with a model shape, as sentences that say what to change. Empty when valid."""
    problems = []
    sizes = {
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "max_position_embeddings": max_position_embeddings,
    }
    if vocab_size is not None:
        sizes["vocab_size"] = vocab_size
    if num_key_value_heads is not None:
        sizes["num_key_value_heads"] = num_key_value_heads
    for key, value in sizes.items():
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{key} must be a positive integer, got {value!r}")
    problems += combination_problems(norm_type=norm_type, **scheme)
    if not (isinstance(mix_ln_ratio, (int, float)) and 0.0 <= mix_ln_ratio <= 1.0):
        problems.append(f"mix_ln_ratio must be in [0, 1], got {mix_ln_ratio!r}")
    if initializer_range is not None and initializer_range < 0:
        problems.append(f"initializer_range must be >= 0, got {initializer_range}")
    if embedding_init_std is not None and embedding_init_std < 0:
        problems.append(f"embedding_init_std must be >= 0, got {embedding_init_std}")
    problems += _scheme_number_problems(**scheme)
    problems += hyper_problems(norm_type=norm_type, **scheme)
    if problems:  # the divisibility checks below need positive sizes
        return problems
    if hidden_size % num_attention_heads:
        problems.append(
            f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
        )
    kv_heads = num_key_value_heads or num_attention_heads
    if num_attention_heads % kv_heads:
        problems.append(
            f"num_attention_heads ({num_attention_heads}) must be divisible by num_key_value_heads ({kv_heads})"
        )
    elif (hidden_size // num_attention_heads) % 2:
        problems.append(f"head dim {hidden_size // num_attention_heads} must be even for RoPE")
    return problems



def _scheme_number_problems(*, depth_alpha: float = 1.0, depth_base_layers: int = 1, norm_alpha_attn: float = 0.8,
                            norm_alpha_mlp: float = 0.2, norm_alpha_final: float = 0.2, **_: object) -> list[str]:
    problems = []
    if depth_alpha < 0:
        problems.append(f"depth_alpha must be >= 0 (0.5 = depth-muP, 1.0 = CompleteP), got {depth_alpha}")
    if depth_base_layers < 1:
        problems.append(f"depth_base_layers must be >= 1, got {depth_base_layers}")
    for key, value in (("norm_alpha_attn", norm_alpha_attn), ("norm_alpha_mlp", norm_alpha_mlp),
                       ("norm_alpha_final", norm_alpha_final)):
        if value <= 0:
            problems.append(f"{key} must be > 0, got {value}")
    return problems


def hyper_problems(*, norm_type: str, residual: str = "plain", hc_streams: int = 4, hc_dynamic: bool = False,
                   hc_sinkhorn_iters: int = 20, hc_collapse: str | None = None, **_: object) -> list[str]:
    """The keys of the hyper-connection schemes (residual=hc | mhc) and the placements they combine with."""
    problems = []
    if residual in HYPER_RESIDUALS and norm_type not in HYPER_PLACEMENTS:
        problems.append(f"residual={residual} is defined on Pre-Norm blocks (the HC / mHC papers): it combines with "
                        f"norm_type={' or '.join(HYPER_PLACEMENTS)}, not with norm_type={norm_type}")
    if hc_dynamic and residual != "hc":
        problems.append("hc_dynamic=true (input-dependent HC weights) belongs to residual=hc; mhc is always dynamic")
    if residual not in HYPER_RESIDUALS and hc_collapse is not None:
        problems.append(f"hc_collapse={hc_collapse} belongs to residual=hc or mhc")
    if hc_collapse is not None and hc_collapse not in HC_COLLAPSES:
        problems.append(f"unknown hc_collapse {hc_collapse!r}; valid: {', '.join(HC_COLLAPSES)}")
    if not isinstance(hc_streams, int) or hc_streams < 1:
        problems.append(f"hc_streams must be a positive integer (the HC papers use 2 to 8), got {hc_streams!r}")
    if not isinstance(hc_sinkhorn_iters, int) or hc_sinkhorn_iters < 1:
        problems.append(f"hc_sinkhorn_iters must be a positive integer (mHC uses 20), got {hc_sinkhorn_iters!r}")
    return problems


@dataclass
class ModelConfig:
    """LlamaConfig keys plus the normalization placement. ``vocab_size: null`` = take it from the tokenizer."""

    name: str = "llama_tiny"
    hidden_size: int = 128
    intermediate_size: int = 344
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    vocab_size: int | None = None
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    embedding_init_std: float | None = None
    norm_type: str = "pre_ln"  # placement: NORM_TYPES
    mix_ln_ratio: float = 0.25
    embed_norm: bool | None = None  # norm on the embedding output; null = on for peri_ln only
    qk_norm: str | None = None  # none | head | full (RMSNorm of q and k before RoPE); null = head for hybrid_ln*
    norm_fn: str = "rmsnorm"  # rmsnorm | layernorm | dyt | derf: the function of every block and final norm
    norm_bias: bool = False  # layernorm / dyt / derf: a learnable per-channel bias (beta)
    norm_alpha_attn: float = 0.8  # dyt / derf initial alpha of the attention-side norms (DyT LLaMA-7B values)
    norm_alpha_mlp: float = 0.2  # ... of the MLP-side norms
    norm_alpha_final: float = 0.2  # ... of the final norm (and the embedding norm)
    embed_scale: bool | None = None  # learnable scalar (init sqrt(d)) on the embedding output; null = on for dyt/derf
    residual: str = "plain"  # plain | layerscale | rezero | depth_scaled | gpas: how each branch joins the stream
    layerscale_init: float = 0.1  # layerscale: initial value of the per-channel branch gains
    depth_alpha: float = 1.0  # depth_scaled: branch x (L / depth_base_layers)^(-alpha); 0.5 depth-muP, 1 CompleteP
    depth_base_layers: int = 1  # depth_scaled: the depth L_base the other hyperparameters were tuned at
    depth_hparams: bool = False  # depth_scaled: CompleteP's per-depth learning-rate and Adam-eps rules (optim.py)
    hc_streams: int = 4  # hc / mhc: number n of parallel residual streams
    hc_dynamic: bool = False  # hc: add the input-dependent terms s * tanh(N(H) W) (DHC); false = static HC (SHC)
    hc_sinkhorn_iters: int = 20  # mhc: Sinkhorn-Knopp iterations that make the stream-mixing matrix doubly stochastic
    hc_collapse: str | None = None  # hc / mhc: streams -> one before the final norm: sum | mean | head; null = own
    scaled_init: bool = False
    fused_loss: bool = True  # chunked linear + cross-entropy: never all fp32 logits at once
    loss_chunk_size: int = 0  # rows of logits per chunk; 0 = automatic (256 on CPU, 2048 on GPU)
    use_kernels: bool = False  # Liger fused kernels on CUDA when liger_kernel is installed

    def validate(self) -> None:
        problems = config_problems(**{k: v for k, v in vars(self).items() if k != "name"})
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(f"model.{p}" for p in problems))


@dataclass
class DataConfig:
    """The ``data=`` group (see ``configs/data/*.yaml`` and ``cod_train/data``)."""

    source: str = "sample"  # sample | files | c4 | shards
    paths: list[str] = field(default_factory=list)  # globs (files, c4 local layout) or one shard dir (shards)
    eval_paths: list[str] = field(default_factory=list)
    tokenizer: str = "train:8192"  # hub name | path (tokenizer.json, .model, HF dir) | train:<vocab> | "" (shards: saved one)
    seq_len: int = 256
    packing: bool = True
    text_field: str = "text"
    shuffle_buffer: int = 10000
    num_workers: int = 0
    hub_dataset: str = "allenai/c4"
    hub_config: str = "en"
    train_split: str = "train"
    eval_split: str = "validation"
    eval_fraction: float = 0.02  # held-out share of a local corpus when no eval_paths are given
    text_unit: str = "line"  # plain-text files: line | paragraph | file = one document each
    cache_dir: str = ""  # "" = $COD_TRAIN_CACHE, else $XDG_CACHE_HOME/cod_train, else ~/.cache/cod_train
    tokenize_workers: int = 0  # processes for tokenizing a local corpus; 0 = all cores
    tokenizer_train_bytes: int = 200_000_000  # text read to train a train:<vocab> tokenizer
    snapshot_every: int = 64  # streaming: full worker state every N batches (resume replays at most N)
    hub_timeout_s: float = 1.0  # reachability check of the hub before streaming

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"unknown data source {self.source!r}: use data=sample, data=files, data=c4 or data=shards")
        if self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be >= 1, got {self.seq_len}")
        if self.text_unit not in TEXT_UNITS:
            raise ConfigError(f"data.text_unit must be one of {TEXT_UNITS}, got {self.text_unit!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.source == "shards" and len(self.paths) != 1:
            raise ConfigError("data=shards needs exactly one directory: data.paths=[DIR] (written by cod-data tokenize)")


@dataclass
class TrainConfig:
    """Optimisation and cadence; the defaults are the embedded CPU run's (``cod-pretrain`` with no arguments)."""

    max_steps: int = 600
    global_batch_size: int = 16  # sequences per optimizer step, over all processes
    micro_batch_size: int = 16  # the most rows per forward/backward on one process (a memory limit)
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the papers' setting)
    precision: str = "fp32"  # fp32 | bf16-mixed | bf16-pure
    log_every: int = 10
    eval_every: int = 200
    eval_tokens: int = 16384
    ckpt_every: int = 200
    keep_last: int = 2
    diag_every: int = 100  # 0 = off
    max_nonfinite_in_a_row: int = 5
    export_hf: bool = True
    cpu_peak_flops: float = 0.0  # 0 = measure a matmul once at start-up

    def validate(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer.lower() not in OPTIMIZERS:
            problems.append(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.global_batch_size <= 0 or self.micro_batch_size <= 0:
            problems.append("train.global_batch_size and train.micro_batch_size must be positive")
        # how they fit together depends on the number of processes: train.loop.micro_batch_rows
        if self.max_steps <= 0:
            problems.append(f"train.max_steps must be positive, got {self.max_steps}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            problems.append("train.lr must be > 0 and train.min_lr_ratio in [0, 1]")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.log_every <= 0:
            problems.append("train.warmup_steps and train.grad_clip must be >= 0, train.log_every > 0")
        if min(self.eval_every, self.ckpt_every, self.keep_last, self.diag_every) < 0:
            problems.append("train.eval_every, ckpt_every, keep_last and diag_every must be >= 0 (0 = off)")
        if self.max_nonfinite_in_a_row <= 0:
            problems.append("train.max_nonfinite_in_a_row must be positive")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class DistributedConfig:
    """The ``distributed=`` group: how the model is wrapped (``cod_train/engine``)."""

    engine: str = "single"  # single | ddp | fsdp | deepspeed
    backend: str = "auto"  # auto = nccl on GPU, gloo on CPU
    zero_stage: int = 2  # deepspeed: ZeRO stage 1 | 2 | 3
    offload_optimizer: bool = False  # deepspeed: optimizer states (and step) on CPU
    compile: bool = False  # torch.compile each decoder block
    activation_checkpointing: str = "none"  # none | full (every block) | selective (every other block)
    reshard_after_forward: bool = True  # fsdp: free gathered weights after forward (ZeRO-3 style)
    fsdp_param_dtype: str = "auto"  # fsdp: auto (bf16 under bf16-mixed) | bf16 | fp32
    meta_init: bool = False  # fsdp: build on the meta device, each rank initializes only its shards
    # fsdp: during gradient accumulation keep each micro-batch's gradients unsharded (fp32) on the rank and
    # reduce-scatter once per optimizer step; false = reduce-scatter every micro-batch (less memory, more traffic)
    fsdp_skip_grad_sync: bool = True
    # fsdp: 1 = plain FSDP over all ranks; R > 1 = HSDP on a (R, world/R) mesh: parameters sharded within each
    # group of world/R consecutive ranks (a node), replicated across the R groups (gradients all-reduced)
    hsdp_replicas: int = 1
    timeout_minutes: int = 30  # collective timeout

    def check_precision(self, precision: str) -> None:
        """Combinations of engine and ``train.precision`` that would not do what they say."""
        if self.engine == "fsdp" and self.fsdp_param_dtype == "fp32" and precision == "bf16-mixed":
            raise ConfigError("distributed.fsdp_param_dtype=fp32 with train.precision=bf16-mixed would compute in "
                              "fp32; use train.precision=fp32, or distributed.fsdp_param_dtype=auto")
        if self.engine == "fsdp" and self.fsdp_param_dtype == "bf16" and precision == "fp32":
            raise ConfigError("distributed.fsdp_param_dtype=bf16 with train.precision=fp32 would compute in bf16 "
                              "on FSDP2 only; use train.precision=bf16-mixed (bf16 matmuls on every engine, FSDP2 "
                              "all-gathers bf16), or distributed.fsdp_param_dtype=auto")
        if self.engine == "deepspeed" and precision == "bf16-pure":
            raise ConfigError("train.precision=bf16-pure keeps weights and Adam state in bf16, which DeepSpeed does "
                              "not do here: use train.precision=bf16-mixed with distributed=deepspeed (fp32 weights "
                              "and Adam state, bf16 matmuls), or distributed=fsdp|ddp|single for bf16-pure")

    def validate(self) -> None:
        choices = {"engine": ENGINES, "backend": BACKENDS, "activation_checkpointing": AC_MODES,
                   "fsdp_param_dtype": FSDP_PARAM_DTYPES}
        problems = [f"distributed.{key} must be one of {valid}, got {getattr(self, key)!r}"
                    for key, valid in choices.items() if getattr(self, key) not in valid]
        if self.zero_stage not in (1, 2, 3):
            problems.append(f"distributed.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.timeout_minutes <= 0:
            problems.append(f"distributed.timeout_minutes must be positive, got {self.timeout_minutes}")
        if self.hsdp_replicas < 1:
            problems.append(f"distributed.hsdp_replicas must be >= 1 (1 = plain FSDP), got {self.hsdp_replicas}")
        elif self.hsdp_replicas > 1 and self.engine != "fsdp":
            problems.append(f"distributed.hsdp_replicas={self.hsdp_replicas} needs distributed.engine=fsdp "
                            f"(HSDP is FSDP2 on a 2-D mesh), got engine {self.engine!r}")
        if self.compile and self.engine == "deepspeed" and self.zero_stage == 3:
            problems.append("distributed.compile=true does not work with DeepSpeed ZeRO-3 (its parameter hooks break "
                            "every compiled block into dozens of graphs until the recompile limit); use "
                            "distributed.zero_stage=1|2, distributed.engine=fsdp, or distributed.compile=false")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class LoggerConfig:
    type: str = "none"  # wandb | none
    project: str = "cod-train"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"  # auto (offline without an API key) | online | offline | disabled


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_dir: str = "runs/default"
    seed: int = 1234
    resume: str = "auto"  # auto | none | PATH
    resume_allow_change: bool = False  # resume even if the model or data stream changed (runs/identity.py)
    device: str = "auto"  # auto | cpu | cuda
    init_from: str = ""  # HF dir or hub name (Llama/Mistral/Qwen2/Qwen3, a cod-train export): start from its weights

    def validate(self) -> None:
        """Every check that needs no process group, data, tokenizer or model: the whole config, in one pass."""
        for part in (self.model, self.data, self.train, self.distributed):
            part.validate()
        self.distributed.check_precision(self.train.precision)
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")


T = TypeVar("T")


def to_typed(cfg: DictConfig | dict[str, Any], schema: type[T]) -> T:
    """Merge a composed config onto ``schema`` and return the dataclass instance.

    Unknown keys and type mismatches become a :class:`ConfigError` naming the key.
    """
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        OmegaConf.resolve(merged)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        first = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
        raise ConfigError(f"invalid configuration{f' at {key!r}' if key else ''}: {first}") from None


def flatten_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.hidden_size": 128, ...}`` from a (nested) dataclass or dict; tuples become lists (JSON-ready)."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = dataclasses.asdict(node)
    if not isinstance(node, dict):
        return {prefix.rstrip("."): list(node) if isinstance(node, tuple) else node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(flatten_config(value, f"{prefix}{key}."))
    return out


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
