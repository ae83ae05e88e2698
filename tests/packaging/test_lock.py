"""The environment is the lock: every pinned package is installed at its pinned version, and torch's pin is the
same everywhere it is written."""

from __future__ import annotations

import importlib.metadata
import os
import tomllib

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers.processes import REPO


def _locked() -> list[Requirement]:
    lines = (REPO / "requirements-lock.txt").read_text().splitlines()
    reqs = [Requirement(line.split(" #")[0]) for line in lines if line and not line.startswith((" ", "#", "-"))]
    return [r for r in reqs if r.marker is None or r.marker.evaluate()]


def test_lock_pins_every_package_exactly():
    reqs = _locked()
    assert len(reqs) > 100
    loose = [str(r) for r in reqs if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    assert not loose
    names = {r.name.lower() for r in reqs}
    assert {"transformers", "datasets", "huggingface-hub", "deepspeed", "lm-eval"} <= names and "torch" not in names


@pytest.mark.skipif(os.environ.get("COD_TRAIN_UNLOCKED") == "1", reason="make test-latest: newest releases")
def test_installed_versions_are_the_locked_ones():
    wrong = []
    for req in _locked():
        want = next(iter(req.specifier)).version
        try:
            have = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            have = "missing"
        if have == "missing" or Version(have) != Version(want):
            wrong.append(f"{req.name}: locked {want}, installed {have}")
    assert not wrong, "run `make install` (the environment drifted from requirements-lock.txt): " + "; ".join(wrong)


def test_torch_pin_is_one_version_everywhere():
    pin = Requirement((REPO / "requirements-torch.txt").read_text().strip())
    version = next(iter(pin.specifier)).version
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["dependency-metadata"]
    assert {m["version"] for m in meta if m["name"] == "torch"} == {version}
    assert Version(torch.__version__).base_version == version
