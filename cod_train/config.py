"""Typed configuration: Hydra YAML -> these dataclasses -> each component's ``build``.

Every Hydra app composes YAML from ``configs/`` and then calls :func:`to_typed` with its schema. The merge
against the dataclass rejects unknown keys and wrong types with a message that names the key, before
any work starts. Each component validates its own semantics in ``validate()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cod_train.core.errors import ConfigError  # noqa: F401  (re-exported: cod_train.config.ConfigError)

NORM_TYPES = ("pre_ln", "post_ln", "mix_ln", "lns", "deepnorm", "sandwich_ln", "peri_ln")
ENGINES = ("single", "ddp", "fsdp", "deepspeed")
PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")


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
    norm_type: str = "pre_ln"
    mix_ln_ratio: float = 0.25
    scaled_init: bool = False
    fused_loss: bool = True  # chunked linear + cross-entropy: never all fp32 logits at once
    loss_chunk_size: int = 0  # rows of logits per chunk; 0 = automatic (256 on CPU, 2048 on GPU)
    use_kernels: bool = False  # Liger fused kernels on CUDA when liger_kernel is installed


@dataclass
class NormConfig:
    """The ``norm=`` group; ``model.norm_type``/``model.mix_ln_ratio`` interpolate from here."""

    norm_type: str = "pre_ln"
    mix_ln_ratio: float = 0.25


@dataclass
class DataConfig:
    """The ``data=`` group (see ``cod_train/configs/data/*.yaml`` and ``cod_train/data``)."""

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


@dataclass
class TrainConfig:
    max_steps: int = 200
    global_batch_size: int = 16
    micro_batch_size: int = 8
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the papers' setting)
    precision: str = "fp32"  # fp32 | bf16-mixed | bf16-pure
    log_every: int = 10
    eval_every: int = 100
    eval_tokens: int = 65536
    ckpt_every: int = 100
    keep_last: int = 2
    diag_every: int = 0  # 0 = off
    max_nonfinite_in_a_row: int = 5
    export_hf: bool = True
    cpu_peak_flops: float = 0.0  # 0 = measure a matmul once at start-up


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
    timeout_minutes: int = 30  # collective timeout


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
    norm: NormConfig = field(default_factory=NormConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_dir: str = "runs/default"
    seed: int = 1234
    resume: str = "auto"  # auto | none | PATH
    device: str = "auto"  # auto | cpu | cuda


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
        raise ConfigError(f"invalid configuration{f' at {key!r}' if key else ''}: {err.msg if hasattr(err, 'msg') else err}") from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
