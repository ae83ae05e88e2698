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
from cod_train.model import zoo
from cod_train.model.zoo import ZooAxes

PRECISIONS = ("fp32", "bf16-mixed", "bf16-pure")
OPTIMIZERS = ("adamw", "adam", "muon")
MUON_ADJUST_LR = ("match_rms_adamw", "original")
ENGINES = ("single", "ddp", "fsdp", "deepspeed")
BACKENDS = ("auto", "nccl", "gloo")
AC_MODES = ("none", "full", "selective")
FSDP_PARAM_DTYPES = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
SOURCES = ("sample", "files", "c4", "shards")
TEXT_UNITS = ("line", "paragraph", "file")



def model_scheme(model: Any) -> str:
    """A model's scheme in one word, as its run directory is named (``lns+gpas+qk_head``): the registry's
    ``scheme_name`` of a ``ModelConfig``, a ``CodLlamaConfig`` or either as a dict."""
    return zoo.scheme_name(model)


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


@dataclass
class ModelConfig(ZooAxes):
    """LlamaConfig keys plus the depth-zoo axes (``ZooAxes``: `cod_train.model.zoo`, one module per scheme under
    `cod_train/model/placements` and `cod_train/model/residuals`). ``vocab_size: null`` = take it from the
    tokenizer."""

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
    fused_loss: bool = True  # chunked linear + cross-entropy: never all fp32 logits at once
    loss_chunk_size: int = 0  # rows of logits per chunk; 0 = automatic (256 on CPU, 2048 on GPU)
    use_kernels: bool = False  # Liger fused kernels on CUDA when liger_kernel is installed

    def validate(self) -> None:
        problems = zoo.model_problems(**{k: v for k, v in vars(self).items() if k != "name"})
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
    optimizer: str = "adamw"  # adamw | adam | muon (Muon on the blocks' matrices, AdamW on the rest: train/optim.py)
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping (the papers' setting)
    muon_momentum: float = 0.95  # muon: momentum of the matrices' gradient EMA
    muon_nesterov: bool = True  # muon: orthogonalize the Nesterov look-ahead of the momentum
    muon_ns_steps: int = 5  # muon: Newton-Schulz iterations
    muon_adjust_lr: str = "match_rms_adamw"  # muon: match_rms_adamw (update RMS ~0.2 lr, AdamW's) | original
    muon_lr: float = 0.0  # muon: the matrices' peak lr (same schedule); 0 = train.lr (right for match_rms_adamw)
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
        problems += self._muon_problems()
        if problems:
            raise ConfigError("; ".join(problems))


    def _muon_problems(self) -> list[str]:
        problems = []
        if not 0 <= self.muon_momentum < 1:
            problems.append(f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if not 1 <= self.muon_ns_steps < 100:
            problems.append(f"train.muon_ns_steps must be in [1, 99], got {self.muon_ns_steps}")
        if self.muon_adjust_lr not in MUON_ADJUST_LR:
            problems.append(f"train.muon_adjust_lr must be one of {MUON_ADJUST_LR}, got {self.muon_adjust_lr!r}")
        if self.muon_lr < 0:
            problems.append(f"train.muon_lr must be >= 0 (0 = train.lr), got {self.muon_lr}")
        return problems

    def check_engine(self, engine: str) -> None:
        """Optimizers an engine cannot run."""
        if self.optimizer.lower() == "muon" and engine == "deepspeed":
            raise ConfigError("train.optimizer=muon is not supported with distributed.engine=deepspeed (DeepSpeed's "
                              "own Muon is another update rule); use distributed.engine=single|ddp|fsdp with muon, "
                              "or train.optimizer=adamw|adam with deepspeed")


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


# cod-plan's GPUs: usable memory (GiB: torch.cuda.get_device_properties(...).total_memory) and dense peak
# TFLOP/s (bf16 tensor cores; fp32 without TF32), from the vendors' data sheets (SXM parts).
GPUS: dict[str, dict[str, float]] = {
    "h100-80gb": {"memory_gb": 79.2, "bf16_tflops": 989.0, "fp32_tflops": 67.0},
    "a100-80gb": {"memory_gb": 79.2, "bf16_tflops": 312.0, "fp32_tflops": 19.5},
    "a100-40gb": {"memory_gb": 39.4, "bf16_tflops": 312.0, "fp32_tflops": 19.5},
    "h200": {"memory_gb": 140.4, "bf16_tflops": 989.0, "fp32_tflops": 67.0},
}


@dataclass
class PlanConfig:
    """cod-plan (and cod-pretrain's memory check at start): the cluster a run is planned for."""

    world_size: int = 1  # processes (GPUs) the run is planned for; cod-pretrain's check uses its own
    gpu: str = "h100-80gb"  # h100-80gb | a100-80gb | a100-40gb | h200 | custom (gpu_memory_gb, peak_tflops)
    gpu_memory_gb: float = 0.0  # custom: usable GiB per GPU (a named GPU: its own)
    peak_tflops: float = 0.0  # custom: dense peak TFLOP/s at the run's precision (a named GPU: its own)
    mfu: float = 0.4  # assumed model-FLOPs utilization for the time estimate
    reserve_gb: float = 2.0  # per GPU outside torch's tensors: CUDA context, NCCL buffers, allocator slack
    bandwidth_gb_s: float = 50.0  # per-GPU collective bandwidth for the communication time (400 Gb/s NIC)
    search: bool = True  # also find the largest micro-batch that fits
    check: bool = True  # cod-pretrain on a GPU: plan the configured micro-batch at start, warn if it won't fit

    def gpu_spec(self, precision: str) -> tuple[float, float]:
        """(usable GiB, dense peak TFLOP/s at ``precision``) of ``gpu``."""
        if self.gpu == "custom":
            return self.gpu_memory_gb, self.peak_tflops
        spec = GPUS[self.gpu]
        return spec["memory_gb"], spec["fp32_tflops" if precision == "fp32" else "bf16_tflops"]

    def validate(self) -> None:
        problems = []
        if self.gpu != "custom" and self.gpu not in GPUS:
            problems.append(f"unknown plan.gpu {self.gpu!r}: use one of {(*GPUS, 'custom')} (custom: set "
                            "plan.gpu_memory_gb and plan.peak_tflops)")
        if self.gpu == "custom" and (self.gpu_memory_gb <= 0 or self.peak_tflops <= 0):
            problems.append("plan.gpu=custom needs plan.gpu_memory_gb > 0 and plan.peak_tflops > 0")
        if self.world_size < 1:
            problems.append(f"plan.world_size must be >= 1, got {self.world_size}")
        if not 0 < self.mfu <= 1:
            problems.append(f"plan.mfu must be in (0, 1], got {self.mfu}")
        if self.reserve_gb < 0 or self.bandwidth_gb_s <= 0:
            problems.append("plan.reserve_gb must be >= 0 and plan.bandwidth_gb_s > 0")
        if problems:
            raise ConfigError("; ".join(problems))


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
    plan: PlanConfig = field(default_factory=PlanConfig)  # cod-plan; cod-pretrain's memory check (plan.check)

    def validate(self) -> None:
        """Every check that needs no process group, data, tokenizer or model: the whole config, in one pass."""
        for part in (self.model, self.data, self.train, self.distributed, self.plan):
            part.validate()
        self.distributed.check_precision(self.train.precision)
        self.train.check_engine(self.distributed.engine)
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
