"""Every hub path fails fast (< 2 s) and names the local options when the hub is offline or unreachable,
also when the offline variable is set after the hub libraries were imported (huggingface_hub would retry)."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest

from cod_train.config import ConfigError, DataConfig
from cod_train.core import hub
from cod_train.data import build_tokenizer
from cod_train.eval.downstream import DownstreamConfig, prepare_tasks
from cod_train.runs.models import load_model, resolve_checkpoint
from cod_train.sft.config import SFTDataConfig
from cod_train.sft.records import SFTDataError, load_examples


@pytest.fixture(params=["offline_after_import", "unreachable"])
def no_hub(request, monkeypatch):
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as if imported while online
    if request.param == "offline_after_import":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens on the discard port
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
    return request.param


def _fails_fast(fn, error, match: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        fn()
    assert time.monotonic() - t0 < 2.0


def test_tokenizer_from_the_hub(no_hub, tmp_path):
    cfg = DataConfig(source="sample", tokenizer="nobody/no-such-tokenizer", cache_dir=str(tmp_path))
    _fails_fast(lambda: build_tokenizer(cfg), ConfigError, r"hub is unreachable.*train:8192")


def test_model_from_the_hub(no_hub):
    source = resolve_checkpoint("nobody/no-such-model")
    _fails_fast(lambda: load_model(source), ConfigError, r"hub is unreachable.*local run directory")


def test_c4_stream(no_hub):
    from cod_train.data.sources import hub_data_files

    _fails_fast(lambda: hub_data_files(DataConfig(source="c4"), "train"), ConfigError, r"unreachable.*data=files")


def test_lm_eval_online_tasks(no_hub):
    _fails_fast(lambda: prepare_tasks(DownstreamConfig(tasks=["piqa"], offline=False)), ConfigError,
                r"unreachable.*downstream.offline=true")


def test_sft_hub_dataset(no_hub):
    hint = "offline mode is on" if no_hub == "offline_after_import" else "unreachable"
    _fails_fast(lambda: load_examples(SFTDataConfig(hub_dataset="nobody/no-such-dataset")), SFTDataError,
                rf"{hint}.*sft.paths")


def test_offline_variable_set_after_import_reaches_huggingface_hub(monkeypatch):
    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.offline_reason() == "HF_DATASETS_OFFLINE is set"
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True and huggingface_hub.is_offline_mode()
