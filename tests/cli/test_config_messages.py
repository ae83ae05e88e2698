"""A key given at the wrong level names the key it probably is, never ``+key`` (the typed schema refuses new keys),
and the value then gets the range check's own message."""

from __future__ import annotations

from tests.helpers.cli import cod_pretrain


def test_a_model_key_at_the_top_level_names_the_model_key(monkeypatch, capsys, tmp_path) -> None:
    assert cod_pretrain(f"run_dir={tmp_path / 'run'}", "residual=mhc", "hc_streams=0") == 2
    err = capsys.readouterr().err
    assert err == "error: Could not override 'hc_streams': no such key; did you mean model.hc_streams=0?\n"
    assert cod_pretrain(f"run_dir={tmp_path / 'run'}", "residual=mhc", "model.hc_streams=0") == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "hc_streams must be a positive integer" in err and "+" not in err
    assert cod_pretrain(f"run_dir={tmp_path / 'run'}", "train.no_such_key=1") == 2
    assert capsys.readouterr().err == "error: Could not override 'train.no_such_key': no such key\n"
