"""Collect run directories into :class:`RunData`, tolerating missing and partial files.

A run directory (docs/design.md section 2.7) may hold ``config.yaml``, ``metrics.jsonl``, ``eval.json``,
``analysis/*.json``, ``hf/`` and ``checkpoints/``. A crashed run may lack any of them or end with a
truncated ``metrics.jsonl`` line: every problem is recorded in ``RunData.missing`` / ``RunData.notes``
and the report still renders.
"""

from __future__ import annotations

import json
import math
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from cod_train.config import ConfigError, scheme_name
from cod_train.eval.depth_names import DIAG_FILES

if TYPE_CHECKING:
    from transformers import PretrainedConfig

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "eval.json", "analysis", "hf", "checkpoints")
ANALYSIS_FILES = tuple(DIAG_FILES.values())
MAX_DEPTH = 4


@dataclass
class RunData:
    path: Path
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    diags: list[dict[str, Any]] = field(default_factory=list)
    eval_json: dict[str, Any] | None = None
    analysis: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    params: int | None = None
    saved_model: dict[str, Any] = field(default_factory=dict)  # hf/ or the latest checkpoint's config.json
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ derived values for the table
    @property
    def model_cfg(self) -> dict[str, Any]:
        """The run's ``model`` config; for runs whose config has none (cod-sft), the saved model's config."""
        return self.config.get("model") or self.saved_model

    @property
    def variant(self) -> str:
        norm = self.model_cfg.get("norm_type") or (self.eval_json or {}).get("model", {}).get("norm_type")
        if norm is None and self.model_cfg.get("model_type") == "llama":
            norm = "pre_ln"  # a plain Llama (e.g. fine-tuned from a hub model) is Pre-LN
        if not norm:
            return "?"
        # the depth-zoo axes off their defaults, as in the run directory's name (lns+gpas+qk_head)
        axes = ("qk_norm", "norm_fn", "residual", "depth_alpha", "depth_hparams")
        name = scheme_name(str(norm), **{k: self.model_cfg[k] for k in axes if self.model_cfg.get(k) is not None})
        if norm == "mix_ln" and self.model_cfg.get("mix_ln_ratio") not in (None, 0.25):
            return f"{name} (ratio {self.model_cfg['mix_ln_ratio']})"
        return name

    @property
    def num_layers(self) -> int | None:
        value = self.model_cfg.get("num_hidden_layers") or (self.eval_json or {}).get("model", {}).get(
            "num_layers"
        )
        return int(value) if value else None

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.train + self.evals if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None

    @property
    def max_steps(self) -> int | None:
        value = (self.config.get("train") or {}).get("max_steps")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def tokens(self) -> int | None:
        values = [r["tokens"] for r in self.train if isinstance(r.get("tokens"), (int, float))]
        return int(values[-1]) if values else None

    @property
    def tokens_per_s(self) -> float | None:
        values = [r["tokens_per_s"] for r in self.train if _finite(r.get("tokens_per_s"))]
        if len(values) > 2:
            values = values[1:]  # the first logged window includes warm-up / compilation
        return statistics.median(values) if values else None

    @property
    def eval_ppl(self) -> tuple[float | None, str]:
        """Final eval perplexity and where it comes from (``eval.json`` or the last in-training eval)."""
        ppl = ((self.eval_json or {}).get("perplexity") or {}).get("eval_ppl")
        if _finite(ppl):
            return float(ppl), "eval.json"
        values = [r["eval_ppl"] for r in self.evals if _finite(r.get("eval_ppl"))]
        if values:
            return float(values[-1]), "metrics.jsonl"
        losses = [r["eval_loss"] for r in self.evals if _finite(r.get("eval_loss"))]
        if losses:
            return math.exp(losses[-1]), "metrics.jsonl"
        return None, ""

    @property
    def downstream(self) -> dict[str, float]:
        """``{task: accuracy, "average": ...}`` from ``eval.json`` (empty when absent)."""
        raw = (self.eval_json or {}).get("downstream") or {}
        out = {}
        for task, scores in raw.items():
            value = scores.get("acc") if isinstance(scores, dict) else scores
            if _finite(value):
                out[task] = float(value)
        return out

    @property
    def status(self) -> str:
        step, total = self.last_step, self.max_steps
        if step is None:
            return "no metrics"
        if total and step < total:
            return f"incomplete ({step}/{total} steps)"
        return "complete"


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def discover_runs(paths: list[str]) -> list[Path]:
    """Run directories among ``paths``: each is a run directory, or a (sweep) directory searched below."""
    if not paths:
        raise ConfigError("runs=[PATH,...] is required: run directories or a sweep directory")
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ConfigError(f"runs: {raw!r} does not exist")
        if not path.is_dir():
            raise ConfigError(f"runs: {raw!r} is a file, not a run or sweep directory")
        hits = [path] if is_run_dir(path) else _search(path, MAX_DEPTH)
        if not hits:
            raise ConfigError(f"runs: {raw!r} holds no run directory (none with {', '.join(RUN_MARKERS)})")
        found.extend(h for h in hits if h.resolve() not in {f.resolve() for f in found})
    return found


def _search(root: Path, depth: int) -> list[Path]:
    if depth <= 0:
        return []
    hits = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        hits.extend([child] if is_run_dir(child) else _search(child, depth - 1))
    return hits


def read_metrics(path: Path, run: RunData) -> None:
    """Split ``metrics.jsonl`` into train / eval / diagnostic rows; bad lines become notes."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            where = "last line" if number == len(lines) else f"line {number}"
            run.notes.append(f"metrics.jsonl {where} is not valid JSON (truncated write?); skipped")
            continue
        if not isinstance(row, dict):
            continue
        if any(k.startswith("diag/") for k in row):
            run.diags.append(row)
        if _finite(row.get("eval_loss")) or _finite(row.get("eval_ppl")):
            run.evals.append(row)
        if _finite(row.get("loss")):
            run.train.append(row)


def _read_json(path: Path, run: RunData, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        run.notes.append(f"{what} could not be read ({type(err).__name__}); ignored")
        return None


def _read_config(path: Path, run: RunData) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        return cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {})
    except Exception as err:  # noqa: BLE001 - any YAML problem only degrades the report
        run.notes.append(f"config.yaml could not be parsed ({type(err).__name__}); ignored")
        return {}


def _safetensors_params(path: Path) -> int | None:
    """Parameter count from a safetensors header (no tensor data is read)."""
    try:
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _config_params(config_json: Path) -> int | None:
    try:
        cfg = json.loads(config_json.read_text(encoding="utf-8"))
        from cod_train.model.flops import total_params

        ns = SimpleNamespace(**{"num_key_value_heads": None, "tie_word_embeddings": False, **cfg})
        return int(total_params(cast("PretrainedConfig", ns)))  # duck-typed: only attributes are read
    except Exception:  # noqa: BLE001 - a count we cannot make is shown as missing
        return None


def _saved_model_config(run: RunData) -> dict[str, Any]:
    ckpts = sorted((run.path / "checkpoints").glob("step_*/config.json"))
    for config_json in [run.path / "hf" / "config.json", *reversed(ckpts)]:
        try:
            data = json.loads(config_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def _params(run: RunData) -> int | None:
    hf = run.path / "hf"
    count = _safetensors_params(hf / "model.safetensors") if (hf / "model.safetensors").is_file() else None
    if count is None and (hf / "config.json").is_file():
        count = _config_params(hf / "config.json")
    if count is None:
        ckpts = sorted((run.path / "checkpoints").glob("step_*/config.json"))
        count = _config_params(ckpts[-1]) if ckpts else None
    if count is None and run.eval_json:
        count = (run.eval_json.get("model") or {}).get("params")
    return count


def _read_analysis(run: RunData) -> None:
    folder = run.path / "analysis"
    if not folder.is_dir():
        run.missing.append("analysis/ (run cod-analyze)")
        return
    for stem in ANALYSIS_FILES:
        path = folder / f"{stem}.json"
        if not path.is_file():
            run.missing.append(f"analysis/{stem}.json")
            continue
        data = _read_json(path, run, f"analysis/{stem}.json")
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, list):
            run.analysis[stem] = [m for m in models if isinstance(m, dict)]


def load_run(path: Path, label: str | None = None) -> RunData:
    """Everything the report needs from one run directory; never raises on missing or partial files."""
    run = RunData(path=path, label=label or path.name)
    if (path / "config.yaml").is_file():
        run.config = _read_config(path / "config.yaml", run)
    else:
        run.missing.append("config.yaml")
    if (path / "metrics.jsonl").is_file():
        read_metrics(path / "metrics.jsonl", run)
    else:
        run.missing.append("metrics.jsonl")
    if (path / "eval.json").is_file():
        data = _read_json(path / "eval.json", run, "eval.json")
        run.eval_json = data if isinstance(data, dict) else None
    else:
        run.missing.append("eval.json (run cod-eval)")
    _read_analysis(run)
    run.saved_model = _saved_model_config(run)
    run.params = _params(run)
    return run


def unique_labels(paths: list[Path]) -> list[str]:
    """Run directory names, made unique with their parent's name where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def load_runs(paths: list[str]) -> list[RunData]:
    dirs = discover_runs(paths)
    return [load_run(d, label) for d, label in zip(dirs, unique_labels(dirs), strict=True)]
