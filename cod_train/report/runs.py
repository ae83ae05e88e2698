"""Collect run directories into :class:`RunData`, tolerating missing and partial files.

A run directory (docs/design.md section 2.7) may hold ``config.yaml``, ``metrics.jsonl``, ``eval.json``,
``analysis/*.json``, ``hf/`` and ``checkpoints/``. A crashed run may lack any of them or end with a
truncated ``metrics.jsonl`` line: every problem is recorded in ``RunData.missing`` / ``RunData.notes``
and the report still renders.

A folder holding only ``analysis/`` is a joint analysis (``cod-analyze checkpoint=[a,b,...]``), not a run: each of
its models is given to the run it was trained in (the ``run_dir`` cod-analyze records, or for older files the
``checkpoint`` path), never to another one; a model that is none of the report's runs is left out, with a note.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, TypeGuard, cast

from cod_train.config import ConfigError, flatten_config, model_scheme
from cod_train.eval.depth_registry import DIAG_FILES, SUMMARY_FILE
from cod_train.model import zoo

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FAILED_FILE = "failed.json"  # written by a failed training command (cod_train.runs.app) or the study script
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "eval.json", "hf", "checkpoints", FAILED_FILE)
ANALYSIS_FILES = tuple(DIAG_FILES.values())
MAX_DEPTH = 4
SCHEME_AXES = zoo.label_keys()  # every key the run directory's name (the scheme's label) reads
MAX_LABEL = 48  # longer labels keep only the settings that tell the runs apart (the rest: report.md's run list)
NOT_SETTINGS = ("run_dir", "logger.", "resume", "resume_allow_change", *(f"model.{axis}" for axis in SCHEME_AXES))
SEED_KEYS = ("seed",)  # runs that differ only in these are one group: the same scheme over several seeds


@dataclass
class RunData:
    path: Path
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    diags: list[dict[str, Any]] = field(default_factory=list)
    eval_json: dict[str, Any] | None = None
    analysis: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stem -> this run's model entries
    analysis_from: Path | None = None  # the folder holding analysis/ those entries came from
    params: int | None = None
    saved_model: dict[str, Any] = field(default_factory=dict)  # hf/ or the latest checkpoint's config.json
    settings: dict[str, Any] = field(default_factory=dict)  # config keys whose value differs between the runs
    label_base: str = ""  # the label's first part: the scheme (or, without one, the directory's name)
    group: str = ""  # the label without the seed: runs of one group differ only in their seed
    failure: dict[str, Any] | None = None  # failed.json: the run (or a stage after it) failed
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ derived values for the table
    @property
    def model_cfg(self) -> dict[str, Any]:
        """The run's ``model`` config; for runs whose config has none (cod-sft), the saved model's config."""
        return self.config.get("model") or self.saved_model

    @property
    def variant(self) -> str:
        """The run's whole scheme, named by the function that names its run directory (lns+gpas+qk_head)."""
        cfg = self.model_cfg
        norm = cfg.get("norm_type") or (self.eval_json or {}).get("model", {}).get("norm_type")
        if norm is None and cfg.get("model_type") == "llama":
            norm = "pre_ln"  # a plain Llama (e.g. fine-tuned from a hub model) is Pre-LN
        if not norm:
            return "?"
        axes = {**{k: v for k, v in cfg.items() if v is not None}, "norm_type": str(norm)}
        if axes["norm_type"] not in zoo.placement_names() or axes.get("residual", "plain") not in zoo.residual_names():
            return f"{norm}+{axes['residual']}" if axes.get("residual", "plain") != "plain" else str(norm)
        return model_scheme(axes) + zoo.placement(axes["norm_type"]).detail(axes)

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
    def train_loss(self) -> tuple[float | None, int | None]:
        """The last logged training loss and its step."""
        if not self.train:
            return None, None
        last = self.train[-1]
        return float(last["loss"]), _step(last)

    @property
    def eval_json_step(self) -> int | None:
        """The training step of the weights cod-eval evaluated (None when unknown, e.g. a hub model)."""
        data = self.eval_json or {}
        if isinstance(data.get("step"), int):
            return int(data["step"])
        path = (data.get("model") or {}).get("path")
        return local_weights_step(self.path, Path(path)) if path else None

    @property
    def eval_ppl(self) -> tuple[float | None, str, int | None]:
        """Final eval perplexity, where it comes from (``eval.json`` or the last in-training eval) and its step."""
        ppl = ((self.eval_json or {}).get("perplexity") or {}).get("eval_ppl")
        if _finite(ppl):
            return float(ppl), "eval.json", self.eval_json_step
        rows = [r for r in self.evals if _finite(r.get("eval_ppl")) or _finite(r.get("eval_loss"))]
        if rows:
            last = rows[-1]
            value = last["eval_ppl"] if _finite(last.get("eval_ppl")) else math.exp(last["eval_loss"])
            return float(value), "metrics.jsonl", _step(last)
        return None, "", None

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
    def seed(self) -> int | None:
        value = self.config.get("seed")
        return int(value) if isinstance(value, int) else None

    @property
    def seq_len(self) -> int | None:
        value = (self.config.get("data") or {}).get("seq_len")
        return int(value) if isinstance(value, int) else None

    @property
    def flops_per_token(self) -> int | None:
        """Training FLOPs per token of the saved model at the run's sequence length (cod_train.model.flops: the
        projections, attention and the residual scheme's own multiply-adds)."""
        if not self.saved_model.get("hidden_size") or self.seq_len is None:
            return None
        from cod_train.model.flops import cod_config, flops_per_token

        saved = SimpleNamespace(**{"num_key_value_heads": None, "head_dim": None, **self.saved_model})
        try:  # the model's own config class: every axis the scheme's extra multiply-adds read has its default
            return int(flops_per_token(cod_config(cast("PretrainedConfig", saved)), self.seq_len))
        except Exception:  # noqa: BLE001 - a config the model code cannot read: no count, shown as missing
            return None

    @property
    def train_flops(self) -> float | None:
        """FLOPs of the whole training run: per-token FLOPs x tokens trained on."""
        per_token, tokens = self.flops_per_token, self.tokens
        return float(per_token) * tokens if per_token is not None and tokens is not None else None

    @property
    def status(self) -> str:
        if self.failure is not None:
            stage = self.failure.get("stage") or self.failure.get("command") or "run"
            return f"failed ({stage}, exit {self.failure.get('exit_code', '?')})"
        step, total = self.last_step, self.max_steps
        if step is None:
            return "no metrics"
        if total and step < total:
            return f"incomplete ({step}/{total} steps)"
        return "complete"


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _step(row: dict[str, Any]) -> int | None:
    return int(row["step"]) if _finite(row.get("step")) else None


# ---------------------------------------------------------------------- the step of saved weights
def checkpoint_step(path: Path) -> int | None:
    """The step of a training checkpoint directory: its ``meta.json``, else its name (``step_0000030``)."""
    from cod_train.core.errors import RunError
    from cod_train.engine.checkpoint import STEP_RE, read_meta

    try:
        return int(read_meta(path)["step"])
    except (RunError, TypeError, ValueError):
        match = STEP_RE.match(path.name)
        return int(match.group(1)) if match else None


def export_step(run_dir: Path) -> int | None:
    """The step of ``run_dir/hf``. A run writes it at its end, right after saving its last checkpoint, and a
    checkpoint's ``meta.json`` is written last; so it is the newest checkpoint written before ``hf/`` (a run
    resumed since then only adds newer ones; older ones are deleted first). None when no such checkpoint is left."""
    config = run_dir / "hf" / "config.json"
    if not config.is_file():
        return None
    written = config.stat().st_mtime
    before = [(meta.stat().st_mtime, meta.parent) for meta in (run_dir / "checkpoints").glob("step_*/meta.json")
              if meta.stat().st_mtime <= written]  # fmt: skip
    return checkpoint_step(max(before)[1]) if before else None


def weights_step(path: Path) -> int | None:
    """The training step of the weights in ``path``: a checkpoint directory, or a run's ``hf/`` export (or the run
    directory itself: its ``hf/`` when there is one, else its newest checkpoint, as ``checkpoint=`` resolves it)."""
    path = Path(path)
    if path.name == "hf":
        return export_step(path.parent)
    if (path / "meta.json").is_file() or path.parent.name == "checkpoints":
        return checkpoint_step(path)
    if (path / "hf" / "config.json").is_file():
        return export_step(path)
    ckpts = sorted((path / "checkpoints").glob("step_*/meta.json"))
    return checkpoint_step(ckpts[-1].parent) if ckpts else None


def local_weights_step(run_dir: Path, recorded: Path) -> int | None:
    """The step of weights a file in ``run_dir`` names by a path recorded elsewhere (maybe relative to another
    working directory): the run's own ``hf/`` or ``checkpoints/step_N`` of that name when the path ends so."""
    if recorded.name == "hf":
        return export_step(run_dir)
    if recorded.parent.name == "checkpoints":
        return checkpoint_step(run_dir / "checkpoints" / recorded.name)
    return weights_step(recorded) if recorded.is_dir() else None


def trained_in(path: Path) -> Path:
    """The run directory of a model path: ``run/hf`` and ``run/checkpoints/step_N`` -> ``run``."""
    if path.name == "hf":
        return path.parent
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return path


# ---------------------------------------------------------------------- finding runs and joint analyses
def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)


def is_joint_analysis(path: Path) -> bool:
    """A folder with ``analysis/`` and nothing of a run: where ``cod-analyze`` compares several models."""
    return path.is_dir() and (path / "analysis").is_dir() and not is_run_dir(path)


@dataclass
class Found:
    runs: list[Path] = field(default_factory=list)
    analyses: list[Path] = field(default_factory=list)  # joint-analysis folders

    def add(self, kind: str, paths: Iterable[Path]) -> None:
        known: list[Path] = getattr(self, kind)
        for path in paths:
            if path.resolve() not in {p.resolve() for p in known}:
                known.append(path)


def discover(paths: list[str]) -> Found:
    """Run directories and joint analyses among ``paths``: each is a run directory, a joint analysis, or a (sweep)
    directory searched below. When ``paths`` are only joint analyses, the runs of their models are the report's."""
    if not paths:
        raise ConfigError("runs=[PATH,...] is required: run directories or a sweep directory")
    found = Found()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise ConfigError(f"runs: {raw!r} does not exist")
        if not path.is_dir():
            raise ConfigError(f"runs: {raw!r} is a file, not a run or sweep directory")
        if is_run_dir(path):
            found.add("runs", [path])
        elif is_joint_analysis(path):
            found.add("analyses", [path])
        else:
            runs, analyses = _search(path, MAX_DEPTH)
            if not runs:
                raise ConfigError(f"runs: {raw!r} holds no run directory (none with {', '.join(RUN_MARKERS)})")
            found.add("runs", runs)
            found.add("analyses", analyses)
    if not found.runs:
        found.add("runs", [p for folder in found.analyses for p in analysed_runs(folder) if is_run_dir(p)])
    if not found.runs:
        raise ConfigError(f"runs: the analyses in {[str(p) for p in found.analyses]} name no run directory here")
    return found


def discover_runs(paths: list[str]) -> list[Path]:
    return discover(paths).runs


def _search(root: Path, depth: int) -> tuple[list[Path], list[Path]]:
    runs: list[Path] = []
    analyses: list[Path] = []
    if depth <= 0:
        return runs, analyses
    for child in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural):
        if is_run_dir(child):
            runs.append(child)
        elif is_joint_analysis(child):
            analyses.append(child)
        else:
            more_runs, more_analyses = _search(child, depth - 1)
            runs += more_runs
            analyses += more_analyses
    return runs, analyses


def _natural(path: Path) -> list[Any]:
    """Sort key: numbers by value (a sweep's job 2 before job 10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


# ---------------------------------------------------------------------- reading one run
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


def _read_json(path: Path, notes: list[str], what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{what} could not be read ({type(err).__name__}); ignored")
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
        from cod_train.model.build import total_params

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


def read_run(path: Path) -> RunData:
    """A run's own files, but not its analyses (:func:`attach_analyses`); never raises on missing or partial files."""
    run = RunData(path=path, label=path.name)
    if (path / FAILED_FILE).is_file():
        data = _read_json(path / FAILED_FILE, run.notes, FAILED_FILE)
        run.failure = data if isinstance(data, dict) else {"error": f"{FAILED_FILE} unreadable"}
    if (path / "config.yaml").is_file():
        run.config = _read_config(path / "config.yaml", run)
    elif run.failure is not None and isinstance(run.failure.get("config"), dict):
        run.config = run.failure["config"]  # failed before writing config.yaml: the config it was given
    else:
        run.missing.append("config.yaml")
    if (path / "metrics.jsonl").is_file():
        read_metrics(path / "metrics.jsonl", run)
    else:
        run.missing.append("metrics.jsonl")
    if (path / "eval.json").is_file():
        data = _read_json(path / "eval.json", run.notes, "eval.json")
        run.eval_json = data if isinstance(data, dict) else None
    else:
        run.missing.append("eval.json (run cod-eval)")
    run.saved_model = _saved_model_config(run)
    run.params = _params(run)
    return run


def load_run(path: Path, label: str | None = None) -> RunData:
    """One run on its own, with the analysed models of its ``analysis/`` that are its own; labelled ``label`` or
    by its scheme."""
    run = read_run(path)
    attach_analyses([run], [])
    if label:
        run.label = label
    else:
        assign_labels([run])
    return run


# ---------------------------------------------------------------------- analyses: each model to its own run
@dataclass
class AnalysisSet:
    """The ``analysis/*.json`` of one folder: a run's own, or a joint analysis of several models."""

    folder: Path
    models: dict[str, list[dict[str, Any]]]  # stem -> model entries
    written: float  # newest file's modification time
    notes: list[str] = field(default_factory=list)


def read_analysis_set(folder: Path) -> AnalysisSet | None:
    files = [folder / "analysis" / f"{stem}.json" for stem in (*ANALYSIS_FILES, SUMMARY_FILE)]
    present = [f for f in files if f.is_file()]
    if not present:
        return None
    out = AnalysisSet(folder, {}, max(f.stat().st_mtime for f in present))
    for path in present:
        data = _read_json(path, out.notes, f"{folder / 'analysis' / path.name}")
        models = data.get("models") if isinstance(data, dict) else None
        if isinstance(models, list) and path.stem != SUMMARY_FILE:
            out.models[path.stem] = [m for m in models if isinstance(m, dict)]
    return out


def analysed_runs(folder: Path) -> list[Path]:
    """The run directories of the models a (joint) analysis folder holds, in its order."""
    found = read_analysis_set(folder)
    paths = [_recorded_run(m) for models in (found.models.values() if found else []) for m in models]
    return list(dict.fromkeys(p for p in paths if p is not None))


def _recorded_run(entry: dict[str, Any]) -> Path | None:
    """Where the model of an analysis entry was trained: cod-analyze's ``run_dir``, else (older files) the
    ``checkpoint`` path when it still names a directory from here."""
    if entry.get("run_dir"):
        return Path(entry["run_dir"])
    spec = entry.get("checkpoint")
    path = Path(str(spec)).expanduser() if spec else None
    return trained_in(path) if path is not None and path.is_dir() else None


def _owner(entry: dict[str, Any], found: AnalysisSet, runs: list[RunData]) -> RunData | None:
    recorded = _recorded_run(entry)
    if recorded is not None and recorded.exists():
        return next((r for r in runs if r.path.resolve() == recorded.resolve()), None)
    if recorded is not None:  # moved since the analysis: the run of that name, when exactly one has it
        named = [r for r in runs if r.path.name == recorded.name]
        return named[0] if len(named) == 1 else None
    own = [r for r in runs if r.path.resolve() == found.folder.resolve()]
    single = all(len(models) == 1 for models in found.models.values())
    return own[0] if own and single else None  # an older single-model analysis in the run's own folder


def attach_analyses(runs: list[RunData], joint: list[Path]) -> list[str]:
    """Give each run the analysed models that are its own, from its folder, another run's folder or a joint
    analysis; the newest folder wins when several hold the run. Returns notes on models left out."""
    sets = [s for s in (read_analysis_set(f) for f in [*(r.path for r in runs), *joint]) if s is not None]
    mine: dict[int, dict[Path, dict[str, list[dict[str, Any]]]]] = {id(r): {} for r in runs}
    notes: list[str] = []
    for found in sets:
        notes += found.notes
        strays: set[str] = set()
        for stem, models in found.models.items():
            for entry in models:
                run = _owner(entry, found, runs)
                if run is None:
                    strays.add(str(entry.get("label") or entry.get("checkpoint") or "?"))
                    continue
                mine[id(run)].setdefault(found.folder, {}).setdefault(stem, []).append(entry)
        if strays:
            notes.append(f"{found.folder}/analysis: {', '.join(sorted(strays))} not among this report's runs "
                         "(or not traceable to a run directory); left out")  # fmt: skip
    written = {s.folder: s.written for s in sets}
    for run in runs:
        folders = mine[id(run)]
        if not folders:
            run.missing.append("analysis/ (run cod-analyze)")
            continue
        run.analysis_from = max(folders, key=lambda f: written[f])
        run.analysis = {stem: [_with_step(e) for e in entries] for stem, entries in folders[run.analysis_from].items()}
        if len(folders) > 1:
            others = ", ".join(str(f) for f in folders if f != run.analysis_from)
            run.notes.append(f"depth analysis from {run.analysis_from} (the newest); older: {others}")
        run.missing += [f"analysis/{stem}.json" for stem in ANALYSIS_FILES if stem not in run.analysis]
    return notes


def _with_step(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with ``step``: the analysed weights' training step (recorded by cod-analyze, else looked up)."""
    if "step" in entry:
        return entry
    spec = entry.get("checkpoint")
    path = Path(str(spec)).expanduser() if spec else None
    return {**entry, "step": weights_step(path) if path is not None and path.is_dir() else None}


# ---------------------------------------------------------------------- labels: the scheme plus what differs
def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, str) and "/" in value:
        return "/".join(Path(value).parts[-2:])
    if isinstance(value, list):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def differing_settings(runs: list[RunData]) -> list[dict[str, Any]]:
    """Per run, the config keys (present in every run) whose values differ between the runs, except the scheme
    (the label's first part), paths of the run itself and the model shape a differing ``model.name`` implies."""
    every = [flatten_config(r.config) for r in runs]
    flat = [f for f in every if f]  # a run without any config (failed before writing one) has no settings
    keys = [k for k in flat[0] if all(k in f for f in flat[1:])] if flat else []
    keys = [k for k in keys if not k.startswith(NOT_SETTINGS) and len({json.dumps(f[k]) for f in flat}) > 1]
    if "model.name" in keys:  # a preset's shape follows its name: keep only what the name does not explain
        keys = [k for k in keys if not k.startswith("model.") or k == "model.name" or not _follows(flat, k)]
    return [{k: f[k] for k in keys if k in f} for f in every]


def _follows(flat: list[dict[str, Any]], key: str) -> bool:
    by_name: dict[str, set[str]] = {}
    for f in flat:
        by_name.setdefault(str(f["model.name"]), set()).add(json.dumps(f[key]))
    return all(len(values) == 1 for values in by_name.values())


def _names(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its last part, unless two keys share it."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else k for k, leaf in zip(keys, leaves, strict=True)}


def _labels(runs: list[RunData], keys: list[str]) -> list[str]:
    names = _names(keys)
    return [" ".join([r.label_base, *(f"{names[k]}={_value(r.settings[k])}" for k in keys if k in r.settings)])
            for r in runs]  # fmt: skip


def assign_labels(runs: list[RunData]) -> None:
    """Label each run by its scheme plus the settings that differ between the runs (``pre_ln+dhc8 lr=0.001``);
    past MAX_LABEL characters only the settings needed to tell the runs apart; repeats get ``[2]``, ``[3]``."""
    for run, settings in zip(runs, differing_settings(runs), strict=True):
        run.settings = settings
        run.label_base = run.variant if run.variant != "?" else _short(run.path.name)
    widest: dict[str, Any] = max((r.settings for r in runs), key=len) if runs else {}
    keys = list(widest)
    labels = _fitting_labels(runs, keys)
    groups = _fitting_labels(runs, [k for k in keys if k not in SEED_KEYS])
    seen: dict[str, int] = {}
    for run, label in zip(runs, labels, strict=True):
        seen[label] = seen.get(label, 0) + 1
        run.label = label if labels.count(label) == 1 else f"{label} [{seen[label]}]"
    for run, group in zip(runs, groups, strict=True):
        run.group = group


def _fitting_labels(runs: list[RunData], keys: list[str]) -> list[str]:
    """The labels with every key of ``keys``, or past MAX_LABEL characters only those that tell the runs apart."""
    labels = _labels(runs, keys)
    if max((len(label) for label in labels), default=0) > MAX_LABEL:
        labels = _labels(runs, _separating_keys(runs, keys))
    return labels


def _separating_keys(runs: list[RunData], keys: list[str]) -> list[str]:
    """Greedily, the keys that split the runs into the most groups, until no key splits them further."""
    chosen: list[str] = []
    groups = len(set(_labels(runs, chosen)))
    while True:
        gains = {k: len(set(_labels(runs, [*chosen, k]))) for k in keys if k not in chosen}
        best = max(gains, key=lambda k: gains[k], default=None)
        if best is None or gains[best] <= groups:
            return [k for k in keys if k in chosen]  # in config order
        chosen.append(best)
        groups = gains[best]


@dataclass
class Collection:
    """The runs of a report and the notes that belong to no single run (models left out of joint analyses)."""

    runs: list[RunData]
    notes: list[str] = field(default_factory=list)
    analyses: list[Path] = field(default_factory=list)


def collect(paths: list[str]) -> Collection:
    """The runs named by ``paths`` (ConfigError when a path is bad), each with its own analysed models, labelled."""
    found = discover(paths)
    runs = [read_run(d) for d in found.runs]
    notes = attach_analyses(runs, found.analyses)
    assign_labels(runs)
    return Collection(runs, notes, found.analyses)


def load_runs(paths: list[str]) -> list[RunData]:
    return collect(paths).runs
