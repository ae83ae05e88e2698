"""The README's depth-zoo tables are the scheme registry's (scripts/zoo_table.py), and a scheme is validated before
torch is imported (the registry and the scheme modules are torch-free)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from cod_train.model import zoo
from tests.helpers.processes import REPO


def _zoo_table():
    spec = importlib.util.spec_from_file_location("zoo_table", REPO / "scripts" / "zoo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _built_in(names: tuple[str, ...], lookup) -> list[str]:
    """The schemes of cod_train itself (another test may have registered a plugin in this process)."""
    return [n for n in names if type(lookup(n)).__module__.startswith("cod_train.")]


def test_readme_tables_are_the_registry():
    module = _zoo_table()
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(module.START):readme.index(module.END) + len(module.END)]
    assert block == module.tables(), "README.md's zoo tables are stale: run `python scripts/zoo_table.py`"
    for name in _built_in(zoo.placement_names(), zoo.placement):
        assert f"| `{name}` | {zoo.placement(name).equations} |" in block
    for name in _built_in(zoo.residual_names(), zoo.residual):
        assert f"| `{name}` | {zoo.residual(name).equations} |" in block


def test_every_scheme_validates_without_importing_torch():
    probe = ("import sys; sys.argv = ['cod-pretrain']\n"
             "from cod_train.config import ModelConfig\n"
             "from cod_train.model import zoo\n"
             "names = zoo.placement_names() + zoo.residual_names()\n"
             "problems = zoo.scheme_problems(ModelConfig(norm_type='post_ln', residual='hc'))\n"
             "print(len(names), 'torch' in sys.modules, 'transformers' in sys.modules, problems[0][:40])")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    count, torch_loaded, transformers_loaded, problem = out.stdout.split(" ", 3)
    built_in = _built_in(zoo.placement_names(), zoo.placement) + _built_in(zoo.residual_names(), zoo.residual)
    assert int(count) == len(built_in)
    assert (torch_loaded, transformers_loaded) == ("False", "False"), out.stdout
    assert problem.startswith("residual=hc is defined on Pre-Norm")
