"""Typed configuration of ``cod-sft`` (``configs/sft.yaml``), composed from the shared dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cod_train.config import DEVICES, ConfigError, DistributedConfig, LoggerConfig, TrainConfig, source_name

FORMATS = ("auto", "alpaca", "messages")
# sft.max_length=null takes the model's max_position_embeddings, at most this many tokens (LLaMA-Factory's
# cutoff_len default): a 128k-position hub model would otherwise pack 128k-token rows.
MAX_LENGTH_CAP = 2048
TEMPLATES = ("auto", "chat", "alpaca")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_FOLLOWUP = "\n\n### Instruction:\n{instruction}\n\n### Response:\n"  # later turns of a chat


@dataclass
class SFTDataConfig:
    """The ``sft.*`` keys: instruction data, prompt template, sequence layout."""

    paths: list[str] = field(default_factory=list)  # local JSON/JSONL globs; [] and no hub_dataset = bundled sample
    hub_dataset: str | None = None  # e.g. yahma/alpaca-cleaned
    hub_config: str | None = None
    hub_split: str = "train"
    format: str = "auto"  # auto | alpaca (instruction/input/output) | messages (chat JSONL)
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    messages_field: str = "messages"
    template: str = "auto"  # auto = tokenizer's chat template when it has one, else alpaca | chat | alpaca
    prompt: str = ALPACA_PROMPT  # alpaca template: a Python format string with {instruction} and {input}
    prompt_no_input: str = ALPACA_PROMPT_NO_INPUT
    prompt_followup: str = ALPACA_FOLLOWUP
    max_length: int | None = None  # tokens per row (longer examples are truncated); None = the model's positions
    packing: bool = False  # pack several examples per row (no example is split) instead of one per row
    eval_fraction: float = 0.02  # held-out share of the examples for eval_loss
    max_examples: int | None = None  # use only the first N records (quick runs)

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"sft.format must be one of {FORMATS}, got {self.format!r}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"sft.template must be one of {TEMPLATES}, got {self.template!r}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"sft.max_length must be >= 8, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 0.5:
            raise ConfigError(f"sft.eval_fraction must be in [0, 0.5), got {self.eval_fraction}")
        for key in ("prompt", "prompt_no_input", "prompt_followup"):
            template = getattr(self, key)
            try:
                template.format(instruction="", input="", output="")
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(f"sft.{key} is not a valid format string ({err!r}); use {{instruction}} and "
                                  "{input}, and double other braces") from None
            if "{instruction}" not in template:
                raise ConfigError(f"sft.{key} must contain '{{instruction}}'")

    @property
    def row_length(self) -> int:
        """``max_length`` once cod-sft has set it from the model (``cod_train.runs.sft.resolve_max_length``)."""
        if self.max_length is None:
            raise ValueError("sft.max_length is unset: resolve it against the model first")
        return self.max_length


@dataclass
class SFTTrainConfig(TrainConfig):
    """``train.*`` with fine-tuning defaults (smaller lr, fewer steps)."""

    max_steps: int = 100
    micro_batch_size: int = 8
    lr: float = 3e-4
    warmup_steps: int = 10
    eval_every: int = 50
    eval_tokens: int = 32768
    ckpt_every: int = 50
    diag_every: int = 0


@dataclass
class SFTConfig:
    """``cod-sft``: ``checkpoint`` = a cod-pretrain run dir or checkpoint, an HF directory or a hub name."""

    checkpoint: str = "runs/llama_tiny-pre_ln"
    tokenizer: str | None = None  # default: the checkpoint's own tokenizer
    sft: SFTDataConfig = field(default_factory=SFTDataConfig)
    train: SFTTrainConfig = field(default_factory=SFTTrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_dir: str | None = None  # None = default_run_dir(checkpoint)
    seed: int = 1234
    resume: str = "auto"  # auto | none | PATH
    resume_allow_change: bool = False  # resume even if the model or data stream changed (runs/identity.py)
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        for part in (self.sft, self.train, self.distributed):
            part.validate()
        self.distributed.check_precision(self.train.precision)
        self.train.check_engine(self.distributed.engine)
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {DEVICES}, got {self.device!r}")
        if not self.checkpoint:
            raise ConfigError("checkpoint= is required: a cod-pretrain run/checkpoint, an HF directory or a hub name")


def default_run_dir(checkpoint: str, run_dir: Path | None) -> str:
    """``<run_dir>-sft`` for our runs, else ``runs/<name>-sft`` (``name`` from the HF dir or hub name)."""
    if run_dir is not None:
        return f"{str(run_dir).rstrip('/')}-sft"
    return f"runs/{source_name(checkpoint)}-sft"
