"""A built wheel is a working install: the presets of the top-level configs/ inside the package (setup.py maps them
to cod_train/configs/), commands runnable outside the repository."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.helpers.cli import TINY
from tests.helpers.processes import REPO, subprocess_env


def _source_copy(dest: Path) -> Path:
    """The project's sources without build output: an in-tree build/ would leak stale modules into the wheel
    (and building here would leave one in the user's checkout)."""
    top = {".git", "build", "dist", "runs", "reports", "outputs", "multirun", "wandb"}

    def skip(directory: str, names: list[str]) -> set[str]:
        at_top = Path(directory) == REPO
        return {n for n in names if (at_top and (n in top or n.startswith(".venv"))) or n == "__pycache__"
                or n.endswith((".egg-info", "_cache"))}

    return Path(shutil.copytree(REPO, dest, ignore=skip))


def _build_wheel(tmp: Path) -> Path:
    """The wheel as `python -m build` makes it: from the sdist, so a preset left out of the sdist is missed too."""
    src = _source_copy(tmp / "src")
    _run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(tmp / "dist"),
          str(src)], cwd=tmp)
    return next((tmp / "dist").glob("cod_train-*.whl"))


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("PYTHONPATH", None)
    env.pop("COD_TRAIN_CONFIG_DIR", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[0]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A fresh venv outside the repository holding the built wheel; the dependencies are this environment's
    site-packages, added by a plain .pth line (so its editable cod_train is *not* visible)."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    purelib = Path(sysconfig.get_paths(vars={"base": str(env_dir), "platbase": str(env_dir)})["purelib"])
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--quiet",
          "--no-deps", str(wheel)], cwd=tmp)
    return env_dir


def test_wheel_ships_every_config_and_only_current_modules(tmp_path):
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    presets = {f"cod_train/configs/{p.relative_to(REPO / 'configs').as_posix()}"
               for p in (REPO / "configs").rglob("*.yaml")}
    assert len(presets) > 30 and {n for n in names if n.endswith(".yaml")} == presets
    modules = {f"cod_train/{p.relative_to(REPO / 'cod_train')}" for p in (REPO / "cod_train").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == modules


@pytest.mark.slow
def test_installed_wheel_pretrains_and_evaluates_outside_the_repo(wheel_env, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    py = str(wheel_env / "bin" / "python")
    where = _run([py, "-c", "import cod_train; print(cod_train.__file__)"], cwd=work).stdout.strip()
    assert where.startswith(str(wheel_env)), where  # the wheel's copy, not the repository's
    presets = _run([py, "-c", "from cod_train.runs.app import config_dir; print(config_dir())"], cwd=work).stdout
    assert Path(presets.strip()) == Path(where).parent / "configs"
    run = work / "run"
    _run([str(wheel_env / "bin" / "cod-pretrain"), f"run_dir={run}", "train.max_steps=2", "train.eval_every=2",
          *TINY], cwd=work)
    assert (run / "hf" / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    _run([str(wheel_env / "bin" / "cod-eval"), f"checkpoint={run}", "downstream.tasks=[]",
          "perplexity.eval_tokens=512", "perplexity.micro_batch_size=2"], cwd=work)
    ppl = json.loads((run / "eval.json").read_text())["perplexity"]["eval_ppl"]
    assert math.isfinite(ppl) and ppl > 1.0
