"""Running the ``cod-*`` commands in this process, and the overrides of a tiny ``cod-pretrain`` run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from unittest import mock

# a 2-layer width-32 model on the bundled sample, batches of 4 sequences of 32 tokens
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
        "model.num_attention_heads=2", "data.seq_len=32", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.eval_tokens=512", "train.log_every=1", "train.diag_every=0", "train.cpu_peak_flops=1e11"]


def tiny_args(*extra: str, eval_tokens: int = 512) -> list[str]:
    """:data:`TINY` evaluating on ``eval_tokens`` tokens, then ``extra``."""
    return [f"train.eval_tokens={eval_tokens}" if a.startswith("train.eval_tokens=") else a for a in TINY] + list(extra)


def run_command(main: Callable[[], object], name: str, *args: str) -> int:
    """A cod-* command's ``main`` run in this process with ``args``; its exit code."""
    with mock.patch.object(sys, "argv", [name, *args]):
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
    return 0


def cod_pretrain(*args: str) -> int:
    """``cod-pretrain args`` in this process; its exit code."""
    from cod_train.cli import pretrain

    return run_command(pretrain.main, "cod-pretrain", *args)


def cod_pretrain_stderr(capsys, *args: str) -> tuple[int, str]:
    """``cod-pretrain args`` in this process; (exit code, what it wrote to stderr)."""
    capsys.readouterr()
    code = cod_pretrain(*args)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The single ``error:`` line of ``err`` (asserting there is exactly one and no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


# the fault-injection runs: 8 steps, checkpoints at steps 3 and 6 (all kept), no mid-run eval
FAULT_RUN = tiny_args("train.max_steps=8", "train.ckpt_every=3", "train.keep_last=0", "train.eval_every=0",
                      eval_tokens=256)
# the export tests' runs: 3 steps, checkpoints at steps 2 and 3, the end-of-run export in run/hf
EXPORT_RUN = tiny_args("train.max_steps=3", "train.ckpt_every=2", eval_tokens=256)


def scheme_lifecycle(root, *scheme: str, export_format: str | None = None) -> None:
    """A scheme through every command, in ``root``: ``straight`` (4 steps of cod-pretrain ``scheme``), ``resumed``
    (2 steps, then resumed to 4), cod-analyze of ``straight`` (every diagnostic) and cod-report of it in
    ``report``; with ``export_format``, cod-export of ``straight`` to ``export``."""
    from cod_train.cli import analyze, export, pretrain, report

    def run(main: Callable[[], object], name: str, *args: str) -> None:
        assert run_command(main, name, *args) == 0, f"{name} {args} failed"

    run(pretrain.main, "cod-pretrain", *tiny_args(*scheme, "train.max_steps=4"), f"run_dir={root / 'straight'}")
    run(pretrain.main, "cod-pretrain", *tiny_args(*scheme, "train.max_steps=2"), f"run_dir={root / 'resumed'}")
    run(pretrain.main, "cod-pretrain", *tiny_args(*scheme, "train.max_steps=4"), f"run_dir={root / 'resumed'}")
    run(analyze.main, "cod-analyze", f"checkpoint={root / 'straight'}", f"run_dir={root / 'straight'}",
        "analyze.eval_tokens=256", "analyze.seq_len=32", "analyze.progress=false")
    if export_format:
        run(export.main, "cod-export", f"checkpoint={root / 'straight'}", f"out={root / 'export'}",
            f"format={export_format}")
    run(report.main, "cod-report", f"runs=[{root / 'straight'}]", f"run_dir={root / 'report'}")
