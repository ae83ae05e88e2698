"""What every command shares: the Hydra app around a typed config, its errors and exit codes.

    from cod_train.runs.app import hydra_app

    @hydra_app("pretrain", PretrainConfig)
    def main(cfg: PretrainConfig) -> int | None:   # typed config in, exit code out
        ...

- the config directory is ``$COD_TRAIN_CONFIG_DIR``, else the presets shipped in the wheel (``cod_train/configs/``),
  else, in a source checkout (``pip install -e .``), the repository's top-level ``configs/`` they are built from;
  Hydra's ``--config-dir DIR`` adds a directory searched first (your own presets next to ours);
- the composed YAML is converted with :func:`cod_train.config.to_typed` (unknown keys / wrong types fail);
- a :class:`ConfigError` anywhere in the command prints ``error: <message>`` (no traceback) and exits 2;
  a :class:`RunError` (the run failed for a reason outside the configuration) prints ``error: ...`` and exits 1
  (4: a checkpoint could not be written); Ctrl-C outside the training loop prints one line and exits 130 (inside
  it the run saves first: runs/lifecycle.py); Hydra's own composition errors (an unknown preset or key) are found
  first, by composing once, and reported the same way (exit 2);
- ``norm.<key>=`` on the command line is an alias of ``model.<key>=`` (the ``norm=`` group writes into ``model``);
- in a ``-m`` sweep, a ``run_dir`` that was not set on the command line becomes the job's sweep directory
  (``<sweep dir>/<job number>_<overrides, cut to 100 characters>``)
  and every job shares one wandb group (the sweep directory's name) unless ``logger.group`` is set;
- a training command (pretrain, sft) that fails writes ``failed.json`` (exit code, error line) in its run directory
  (:func:`record_failure`): every failure of a local ``-m`` sweep's job, which no longer stops the sweep (the next
  job starts; the sweep exits 1 at its end, naming the failed jobs), and outside a sweep a run that failed after
  it started (not a configuration error, which writes nothing). A job stopped by a signal stops the sweep, as
  before, and is no failure (it resumes). A later successful run in that directory removes the file.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import importlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from cod_train.config import model_scheme, pretrain_run_dir, to_typed
from cod_train.core.errors import ConfigError, RunError

T = TypeVar("T")
EXIT_OK, EXIT_RUN_ERROR, EXIT_CONFIG_ERROR, EXIT_NONFINITE, EXIT_SAVE_FAILED = 0, 1, 2, 3, 4
EXIT_SIGNAL_BASE = 128  # stopped by signal N: 128 + N, the shell's convention (Ctrl-C: 130, SIGTERM: 143)
EXIT_INTERRUPTED = EXIT_SIGNAL_BASE + signal.SIGINT
log = logging.getLogger("cod_train")
PACKAGE_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # an installed wheel (setup.py maps configs/ here)
CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"  # a source checkout: the presets' one copy


# Each primary config `<name>.yaml` starts its defaults list with `<name>_schema`: these dataclasses' defaults.
SCHEMAS = {
    "pretrain": ("cod_train.config", "PretrainConfig"),
    "sft": ("cod_train.sft.config", "SFTConfig"),
    "eval": ("cod_train.runs.evaluate", "EvalConfig"),
    "analyze": ("cod_train.runs.analyze", "AnalyzeConfig"),
    "export": ("cod_train.runs.export", "ExportConfig"),
    "report": ("cod_train.runs.report", "ReportConfig"),
}


def config_dir() -> str:
    """``$COD_TRAIN_CONFIG_DIR``, the presets shipped inside the wheel or a checkout's ``configs/``, ready to
    compose: the schemas their defaults lists name are registered with Hydra's ConfigStore."""
    for name, (module, cls) in SCHEMAS.items():
        register_schema(name, getattr(importlib.import_module(module), cls))
    env = os.environ.get("COD_TRAIN_CONFIG_DIR")
    if env:
        return str(Path(env).expanduser().resolve())
    return str(PACKAGE_CONFIGS if (PACKAGE_CONFIGS / "pretrain.yaml").is_file() else CHECKOUT_CONFIGS)


def is_main_process() -> bool:
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def setup_logging() -> None:
    """INFO on rank 0, WARNING on the other ranks; quiet third-party loggers."""
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.getLogger().setLevel(level)
    logging.getLogger("cod_train").setLevel(level)
    for name in ("DeepSpeed", "torch.distributed", "httpx", "urllib3", "datasets", "lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _short_dirname(text: str, limit: int = 100) -> str:
    """A sweep job's directory name from its overrides (``norm=lns,train.lr=0.001`` -> ``norm-lns_train.lr-0.001``):
    no ``/``, ``=`` or ``,``, so the path can be passed back as ``checkpoint=`` / ``runs=`` without quoting."""
    safe = text.replace("/", "_").replace("=", "-").replace(",", "_").replace(" ", "")
    return safe[:limit].rstrip("_-") or "job"


def _scheme_label(model: Any) -> str:
    """The `model` node's scheme (the registry's name: ``lns+gpas``)."""
    return model_scheme(OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else model)


if not OmegaConf.has_resolver("cod_short"):
    OmegaConf.register_new_resolver("cod_short", _short_dirname)
if not OmegaConf.has_resolver("cod_scheme"):  # run_dir: runs/<model>-<placement>[+<each axis off its default>]
    OmegaConf.register_new_resolver("cod_scheme", _scheme_label)
if not OmegaConf.has_resolver("cod_run_dir"):  # runs/<model>-<scheme>, or runs/from-<source> with init_from=
    OmegaConf.register_new_resolver("cod_run_dir", pretrain_run_dir)


def _sweep_run_dir(raw: DictConfig) -> None:
    """In multirun mode, default each job's run_dir to its own sweep sub-directory and, unless
    ``logger.group`` is set, put every job of the sweep in one wandb group named after the sweep directory."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return
    if hc.mode != RunMode.MULTIRUN:
        return
    if "logger" in raw and raw.logger.get("group") is None:
        raw.logger.group = Path(hc.sweep.dir).name
    if "run_dir" not in raw or any(o.split("=", 1)[0].lstrip("+~") == "run_dir" for o in hc.overrides.task):
        return
    raw.run_dir = hc.runtime.output_dir


def local_sweep_job() -> tuple[str, int] | None:
    """``(sweep directory, job number)`` when this process runs a ``-m`` sweep's jobs one after another (Hydra's
    basic launcher), else None (a single run, or a job that a launcher such as submitit started on its own)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hc.mode != RunMode.MULTIRUN or not str(hc.launcher.get("_target_", "")).endswith(".BasicLauncher"):
        return None
    return str(hc.sweep.dir), int(hc.job.num)


def write_config(cfg: Any, run_dir: str | Path, name: str = "config.yaml") -> Path | None:
    """Write the resolved config to ``run_dir/name`` (rank 0 only)."""
    if not is_main_process():
        return None
    path = Path(run_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    node = OmegaConf.structured(cfg) if not isinstance(cfg, DictConfig) else cfg
    path.write_text(OmegaConf.to_yaml(node, resolve=True))
    return path


def report_error(err: ConfigError | RunError) -> int:
    """One ``error:`` line on stderr; the exit code of the error's kind (2: the input, 1: the run)."""
    print(f"error: {err}", file=sys.stderr, flush=True)
    return EXIT_CONFIG_ERROR if isinstance(err, ConfigError) else err.exit_code


def run_typed(fn: Callable[[T], int | None], raw: DictConfig, schema: type[T],
              errors: list[str] | None = None) -> int:  # fmt: skip
    """Convert ``raw`` and call ``fn``; a ConfigError or RunError becomes a one-line message (also appended to
    ``errors``) and its exit code."""
    try:
        _sweep_run_dir(raw)
        return int(fn(to_typed(raw, schema)) or 0)
    except (ConfigError, RunError) as err:
        if errors is not None:
            errors.append(str(err))
        return report_error(err)


FAILED_FILE = "failed.json"  # a failed run's exit code and error line (cod-report lists the run as failed)
RECORDS_FAILURE = ("pretrain", "sft")  # the commands whose run_dir is a training run
FAILED_JOBS: list[str] = []  # this process's failed local-sweep jobs: "<run_dir> (exit N)"


def _job_run_dir(raw: DictConfig) -> Path | None:
    try:
        value = raw.get("run_dir")
        return Path(str(value)) if value else None
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve: no directory to write into
        return None


def record_failure(raw: DictConfig, command: str, code: int, error: str) -> Path | None:
    """Write ``run_dir/failed.json``: the command, exit code, error line, sweep job and the composed config (so
    cod-report can label a run that failed before writing its config.yaml)."""
    run_dir = _job_run_dir(raw)
    if run_dir is None or not is_main_process():
        return None
    try:
        config = OmegaConf.to_container(raw, resolve=True)
    except Exception:  # noqa: BLE001 - the config that failed may not resolve; the marker is written without it
        config = None
    sweep = local_sweep_job()
    record = {"command": command, "exit_code": code, "error": error, "job": sweep[1] if sweep else None,
              "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "config": config}  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FAILED_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return run_dir


def run_job(fn: Callable[[T], int | None], raw: DictConfig, schema: type[T], command: str) -> int:
    """:func:`run_typed`; for a training command, a failure is recorded in its run directory and, in a local
    sweep, an unexpected exception becomes exit code 1 (its traceback logged) so that the next job starts."""
    if command not in RECORDS_FAILURE:
        return run_typed(fn, raw, schema)
    sweep = local_sweep_job() is not None
    errors: list[str] = []
    try:
        code = run_typed(fn, raw, schema, errors)
    except Exception as err:
        record_failure(raw, command, EXIT_RUN_ERROR, f"{type(err).__name__}: {err}")
        if not sweep:
            raise
        log.exception("the job failed; the sweep goes on with the next job")
        code = EXIT_RUN_ERROR
    else:
        stopped = code >= EXIT_SIGNAL_BASE  # a signal: resumable, not a failure
        if code == EXIT_OK and (run_dir := _job_run_dir(raw)) is not None:
            (run_dir / FAILED_FILE).unlink(missing_ok=True)
        elif code and not stopped and (sweep or code != EXIT_CONFIG_ERROR):
            record_failure(raw, command, code, errors[-1] if errors else f"exit code {code}")
    if code and sweep and code < EXIT_SIGNAL_BASE:
        FAILED_JOBS.append(f"{_job_run_dir(raw)} (exit {code})")
        return EXIT_OK  # the sweep goes on; main() reports the failed jobs at its end
    return code


# Applied unless given on the command line: log to the console only and write nothing outside run_dir.
HYDRA_DEFAULTS = ("hydra/job_logging=stdout", "hydra.output_subdir=null", "hydra.run.dir=.", "hydra.job.chdir=false")


ALIASES = {"norm.": "model."}  # the norm= group is `# @package model`: its keys live under model


def _alias(arg: str) -> str:
    for old, new in ALIASES.items():
        for prefix in ("", "+", "++", "~"):
            if arg.startswith(prefix + old):
                return prefix + new + arg[len(prefix + old):]
    return arg


def prepare_argv(argv: list[str]) -> list[str]:
    """Drop the ``--local_rank=N`` the deepspeed launcher appends (exported as LOCAL_RANK instead), rewrite
    :data:`ALIASES` and add :data:`HYDRA_DEFAULTS` the user did not set."""
    args: list[str] = []
    skip_next = False
    for i, arg in enumerate(argv[1:], start=1):
        if skip_next:
            skip_next = False
            continue
        if arg.startswith(("--local_rank", "--local-rank")):
            value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "0")
            skip_next = "=" not in arg
            os.environ.setdefault("LOCAL_RANK", value)
            continue
        args.append(_alias(arg))
    given = {a.split("=", 1)[0].lstrip("+~") for a in args}
    extra = [d for d in HYDRA_DEFAULTS if d.split("=", 1)[0] not in given]
    # next to the user's overrides (argparse wants all of them in one run, e.g. after `-m`)
    at = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), len(args))
    return [argv[0], *args[:at], *extra, *args[at:]]


def register_schema(config_name: str, schema: type) -> None:
    """Make the dataclass defaults the base of ``<config_name>.yaml`` (its defaults list starts with
    ``<config_name>_schema``), so the YAML files hold presets and overrides only and every key can be overridden.
    Stored as plain values: types are checked by :func:`to_typed` (one ``error:`` line), not by Hydra."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=f"{config_name}_schema", node=OmegaConf.to_container(OmegaConf.structured(schema)))


def composition_problem(config_name: str, args: list[str]) -> str | None:
    """What Hydra would reject in ``args`` (an unknown preset such as ``model=nope``, a key that does not
    exist), as one line, found by composing the config once; None when it composes. Sweeps (``-m``), Hydra's
    own flags and ``--config-dir`` searches are left to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    missing = _missing_preset(overrides, [Path(config_dir()), *_searched_dirs(args)])
    if missing or any(a.startswith("-") for a in args):
        return missing
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        try:
            compose(config_name, overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            problem = _one_line(str(err))
            return problem + _unknown_key_hint(problem, compose(config_name), overrides)
    return None


def _unknown_key_hint(problem: str, base: DictConfig, overrides: list[str]) -> str:
    """For ``Could not override 'K'``: the keys of the same name elsewhere (``hc_streams=0`` -> did you mean
    ``model.hc_streams=0``), else the closest key name. Adding the key (``+K=``) never helps: the typed schema
    refuses keys it does not know."""
    match = re.match(r"Could not override '([^']+)'", problem)
    if match is None:
        return ""
    key = match.group(1)
    keys = _dotted_keys(OmegaConf.to_container(base, resolve=False))
    leaf = key.rsplit(".", 1)[-1]
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf] or difflib.get_close_matches(key, keys, n=1, cutoff=0.85)
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), "")
    return f"; did you mean {' or '.join(f'{k}={value}' for k in near)}?" if near else ""


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    """Every leaf of a config as ``a.b.c``."""
    if isinstance(node, dict) and node:
        return [k for name, child in node.items() for k in _dotted_keys(child, f"{prefix}.{name}" if prefix else str(name))]
    return [prefix] if prefix else []


def _searched_dirs(args: list[str]) -> list[Path]:
    """The directories Hydra's ``--config-dir DIR`` (``-cd DIR``, ``--config-dir=DIR``) adds to the search."""
    dirs = [a.split("=", 1)[1] for a in args if a.startswith(("--config-dir=", "-cd="))]
    dirs += [after for flag, after in zip(args, args[1:], strict=False) if flag in ("--config-dir", "-cd")]
    return [Path(d).expanduser() for d in dirs]


def _missing_preset(overrides: list[str], roots: list[Path]) -> str | None:
    """``group=name`` naming no preset in any of ``roots``. Hydra skips a missing *optional* group
    (``experiment``) silently, so a typo such as ``experiment=paper_130M`` would train the default model; it is
    an error here."""
    for override in overrides:
        key, values = override.split("=", 1)
        groups = [root / key.lstrip("+~") for root in roots if (root / key.lstrip("+~")).is_dir()]
        if "." in key or not groups:
            continue
        for value in values.split(","):  # a sweep lists several
            if value in ("null", "") or any((group / f"{value}.yaml").is_file() for group in groups):
                continue
            options = ", ".join(sorted({p.stem for group in groups for p in group.glob("*.yaml")}))
            return f"{key}={value}: no such preset in {groups[0].name}/; options: {options}"
    return None


def _one_line(message: str) -> str:
    """Hydra's multi-line composition error as one line (the options of a group listed inline)."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    first = lines[0].split(": ", 1)[-1].rstrip(".") if lines else "the configuration does not compose"
    if first.startswith("Could not override"):
        first += ": no such key"
    return first


def hydra_app(config_name: str, schema: type[T]) -> Callable[[Callable[[T], int | None]], Callable[[], None]]:
    """Decorator turning ``fn(typed_cfg) -> exit code`` into a console-script ``main()``."""
    import hydra

    def decorate(fn: Callable[[T], int | None]) -> Callable[[], None]:
        @hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")
        def _hydra_main(raw: DictConfig) -> None:
            setup_logging()
            code = run_job(fn, raw, schema, config_name)
            if code:
                sys.exit(code)

        @functools.wraps(fn)
        def main() -> None:
            try:
                sys.argv = prepare_argv(sys.argv)
                problem = composition_problem(config_name, sys.argv[1:])
                if problem:
                    sys.exit(report_error(ConfigError(problem)))
                _hydra_main()
                if FAILED_JOBS:
                    print(f"error: {len(FAILED_JOBS)} job(s) of the sweep failed (each run directory holds "
                          f"{FAILED_FILE}): {', '.join(FAILED_JOBS)}", file=sys.stderr, flush=True)
                    sys.exit(EXIT_RUN_ERROR)
            except KeyboardInterrupt:  # outside the training loop (which saves on Ctrl-C), or a second Ctrl-C
                print("interrupted (Ctrl-C): stopped at once; what was already written (checkpoints, results) is "
                      "kept", file=sys.stderr, flush=True)
                sys.exit(EXIT_INTERRUPTED)

        return main

    return decorate
