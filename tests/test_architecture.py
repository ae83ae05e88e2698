"""The layering drawn in docs/architecture.md holds (import-linter's contracts in pyproject.toml), functions
stay short, and importing cod_train (or a command) does not import torch before the config is validated."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers.processes import REPO, subprocess_env

MAX_FUNCTION_LINES = 60


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in sorted((REPO / "cod_train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long


def _imports_after(code: str) -> set[str]:
    probe = f"import sys; sys.argv[0] = 'cod-pretrain'\n{code}\nprint(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(proc.stdout.split())


def test_commands_import_without_torch():
    """A bad config must exit 2 at once; torch takes seconds to import, so a command's process imports nothing
    that needs it before the config is validated (``cod_train/__init__`` defers the Auto registration there)."""
    cmds = "; ".join(f"import cod_train.cli.{c}" for c in ("pretrain", "sft", "eval", "analyze", "export", "report",
                                                            "data"))
    assert "torch" not in _imports_after(f"import cod_train; {cmds}")


def test_import_cod_train_registers_cod_llama_with_the_auto_classes():
    for code in ("import cod_train\nfrom transformers import AutoConfig",
                 "from transformers import AutoModelForCausalLM, AutoConfig\nimport cod_train"):
        probe = code + "\nprint(type(AutoConfig.for_model('cod_llama')).__name__)"
        proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=subprocess_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.stdout.strip() == "CodLlamaConfig", proc.stderr[-3000:]


def test_every_public_function_has_type_hints():
    """mypy (make lint) checks the hints; this checks that no public function goes without them."""
    bare = []
    for path in sorted((REPO / "cod_train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            a = node.args
            params = [p for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            if node.returns is None or any(p.annotation is None for p in params):
                bare.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not bare
