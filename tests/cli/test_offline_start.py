"""A command that needs the hub fails fast offline: the check runs before torch, transformers and datasets
are imported (seconds of CPU), as the README's "Offline" paragraph says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "datasets"}


def _imports_and_messages(stderr: str) -> tuple[set[str], list[str]]:
    """``-X importtime``'s lines as the set of module names imported; the other stderr lines as messages."""
    lines = stderr.splitlines()
    imported = {line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")}
    return imported, [line for line in lines if not line.startswith("import time:")]


def test_hub_data_offline_fails_before_torch_is_imported(tmp_path):
    # the console script: `python -m` imports the model package (torch) on purpose (cod_train/__init__.py)
    command = Path(sys.executable).parent / "cod-pretrain"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-X", "importtime", str(command), "data=c4", f"run_dir={tmp_path / 'run'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    imported, messages = _imports_and_messages(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(messages) == 1, messages
    assert messages[0].startswith("error: the Hugging Face hub is unreachable (HF_HUB_OFFLINE is set)")
    assert "allenai/c4" in messages[0] and "data=sample" in messages[0]
    assert "omegaconf" in imported  # the import list is read as intended
    assert not imported & HEAVY
    assert not (tmp_path / "run").exists()
