"""Every multi-process training command the docs show composes and fits the world size it states: the global
batch splits over the processes and into micro-batches (a command that exits 2 at once is a broken promise)."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir

from cod_train.config import PretrainConfig, to_typed
from cod_train.runs.app import config_dir, prepare_argv
from cod_train.train.loop import grad_accum_steps, micro_batch_rows
from tests.helpers.processes import REPO

DOCS = ["README.md", "docker/README.md", "docker/Dockerfile", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "scripts").glob("*") if p.suffix in (".sh", ".sbatch"))]
WORLD = [(re.compile(r"--nproc_per_node[= ](\d+)"), 1), (re.compile(r"--num_gpus (\d+)"), 1),
         (re.compile(r"\bNPROC=(\d+)"), 1)]
LAUNCHES = ("cod_train.cli.pretrain", "train_single_node.sh", "slurm_pretrain.sbatch")


def _logical_lines(text: str) -> list[str]:
    """Lines with shell continuations joined and comment markers stripped."""
    joined = re.sub(r"\\\n\s*#?\s*", " ", text)
    return [ln.strip().lstrip("#").strip() for ln in joined.splitlines()]


def _world(line: str, sbatch_tasks: int) -> int | None:
    if "slurm_pretrain.sbatch" in line:
        return sbatch_tasks
    for pattern, _ in WORLD:
        if m := pattern.search(line):
            return int(m.group(1))
    return None


def documented_commands() -> list[tuple[str, int, list[str]]]:
    sbatch = (REPO / "scripts" / "slurm_pretrain.sbatch").read_text()
    tasks = int(re.search(r"--nodes=(\d+)", sbatch).group(1)) * int(re.search(r"--ntasks-per-node=(\d+)", sbatch)
                                                                     .group(1))
    found = []
    for doc in DOCS:
        for line in _logical_lines((REPO / doc).read_text()):
            world = _world(line, tasks)
            if world is None or world < 2 or not any(x in line for x in LAUNCHES):
                continue
            if "`" in line:  # prose naming a script, not a command
                continue
            words = shlex.split(line.split(" #")[0], posix=True)
            overrides = [w for w in words if re.match(r"^[+~]*[a-z][\w./]*=", w) and not w.startswith("--")]
            found.append((f"{doc}: {line[:80]}", world, overrides))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_multi_gpu_commands():
    assert len(COMMANDS) >= 4 and {w for _, w, _ in COMMANDS} >= {8, 16}


@pytest.mark.parametrize(("where", "world", "overrides"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_fits_its_world_size(where, world, overrides):
    args = prepare_argv(["cod-pretrain", *overrides])[1:]
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = to_typed(compose("pretrain", overrides=[a for a in args if not a.startswith("hydra")]), PretrainConfig)
    cfg.validate()
    rows = micro_batch_rows(cfg.train, world)
    assert rows * grad_accum_steps(cfg.train, world) * world == cfg.train.global_batch_size
    assert rows <= cfg.train.micro_batch_size


@pytest.mark.parametrize(("gbs", "mbs", "world", "rows", "accum"), [
    (512, 256, 1, 256, 2),   # the papers' one-GPU setting
    (512, 256, 8, 64, 1),    # 8 GPUs: each takes its share of 64 rows at once
    (512, 32, 16, 32, 1),
    (512, 16, 8, 16, 4),
    (16, 16, 8, 2, 1),
])
def test_micro_batch_is_the_share_when_the_share_is_smaller(gbs, mbs, world, rows, accum):
    from cod_train.config import TrainConfig

    cfg = TrainConfig(global_batch_size=gbs, micro_batch_size=mbs)
    assert (micro_batch_rows(cfg, world), grad_accum_steps(cfg, world)) == (rows, accum)


@pytest.mark.parametrize(("overrides", "match"), [
    (["distributed=deepspeed", "train.precision=bf16-pure"], "DeepSpeed"),
    (["distributed=fsdp", "distributed.fsdp_param_dtype=fp32", "train.precision=bf16-mixed"], "compute in fp32"),
])
def test_engine_and_precision_that_would_not_do_what_they_say_are_refused(overrides, match):
    from cod_train.config import ConfigError

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = to_typed(compose("pretrain", overrides=overrides), PretrainConfig)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()
