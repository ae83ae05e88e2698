import pytest
import torch

from cod_train.config import LoggerConfig
from cod_train.train.metrics import gpu_peak_flops, measure_cpu_flops, mfu, wandb_mode
from tests.helpers.engine_run import run


def test_gpu_peak_table_by_name_and_dtype():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe", "bf16-pure") == 756e12
    assert gpu_peak_flops("NVIDIA H200", "bf16-mixed") == 989e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312e12
    assert gpu_peak_flops("NVIDIA B200", "bf16-mixed") == 2.25e15
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") in (156e12, 19.5e12)
    assert gpu_peak_flops("Some GPU", "fp32") is None


def test_mfu_is_clamped_and_cpu_peak_is_measured():
    assert mfu(1e6, 1e9, 1, 1e12) == 1.0  # would be 1000 %
    assert mfu(1e6, 1e3, 2, 1e12) == pytest.approx(5e-4)
    assert mfu(1e6, 1e3, 1, None) is None
    assert measure_cpu_flops(size=64, seconds=0.01) > 0


def test_wandb_mode(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert wandb_mode(LoggerConfig(type="wandb")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(LoggerConfig(type="wandb")) == "online"
    assert wandb_mode(LoggerConfig(type="wandb", mode="disabled")) == "disabled"


def test_wandb_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(f"run_dir={tmp_path}", "train.max_steps=2", "logger.type=wandb", "logger.group=g", "logger.tags=[a,b]")
    assert (tmp_path / "wandb_id.txt").exists()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    torch.set_num_threads(1)
