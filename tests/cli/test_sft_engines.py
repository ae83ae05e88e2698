"""A checkpoint pre-trained with each engine (single, FSDP2, DeepSpeed) fine-tunes with cod-sft and evaluates
with cod-eval. Pre-training: 2 steps per engine in one subprocess (tests/engine/tiny.py, ~10 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cod_train.config import DataConfig, DistributedConfig
from cod_train.engine.distributed import destroy_distributed, init_distributed
from cod_train.eval.downstream import DownstreamConfig
from cod_train.runs.evaluate import EvalConfig, PerplexityOptions, evaluate
from cod_train.runs.sft import preflight, run_sft
from cod_train.sft.config import SFTConfig, SFTDataConfig, SFTTrainConfig
from cod_train.sft.loader import SFTBatches, build_sft_data
from cod_train.sft.records import load_examples
from tests.helpers.tokenizers import char_tokenizer

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ("single", "fsdp", "deepspeed")
FORMATS = {"single": "torch", "fsdp": "dcp", "deepspeed": "deepspeed"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engines")
    runs = [f"distributed.engine={e} run_dir={root / e} train.max_steps=2 train.ckpt_every=2" for e in ENGINES]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(ROOT / "tests/engine/tiny.py"), *runs], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("assets")
    char_tokenizer().save_pretrained(root / "tok")
    records = [{"instruction": f"Count to {i % 5 + 1}.", "input": "", "output": " ".join(str(j) for j in range(i % 5 + 1))}
               for i in range(40)]
    (root / "alpaca.json").write_text(json.dumps(records))
    text = [{"text": "the quick brown fox jumps over the lazy dog " * 3} for _ in range(30)]
    (root / "text.jsonl").write_text("".join(json.dumps(t) + "\n" for t in text))
    return {"tok": str(root / "tok"), "data": str(root / "alpaca.json"), "text": str(root / "text.jsonl"),
            "cache": str(root / "cache")}


def sft_config(ckpt: Path, run_dir: Path, assets: dict[str, str], engine: str = "single") -> SFTConfig:
    return SFTConfig(
        checkpoint=str(ckpt), tokenizer=assets["tok"], run_dir=str(run_dir), seed=5,
        sft=SFTDataConfig(paths=[assets["data"]], template="alpaca", max_length=48, eval_fraction=0.1,
                          prompt_no_input="Q: {instruction}\nA: "),
        train=SFTTrainConfig(max_steps=2, global_batch_size=4, micro_batch_size=2, lr=1e-3, warmup_steps=0,
                             log_every=1, eval_every=0, ckpt_every=0, cpu_peak_flops=1e11),
        distributed=DistributedConfig(engine=engine),
    )


def expected_first_loss(cfg: SFTConfig, ckpt: Path) -> float:
    """Mean response-token loss of the first global batch under the pre-trained weights (loaded here)."""
    from cod_train.engine.export import build_from_checkpoint

    tok = char_tokenizer()
    data = build_sft_data(cfg.sft, tok, cfg.seed, examples=load_examples(cfg.sft))
    batch = next(SFTBatches(data, global_batch_size=cfg.train.global_batch_size, seed=cfg.seed))
    model = build_from_checkpoint(ckpt)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    return float(F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100))


def run_cli_sft(cfg: SFTConfig):
    run, source, examples = preflight(cfg)
    env = init_distributed(cfg.distributed, "cpu")
    try:
        return run_sft(run, env, source, examples)
    finally:
        destroy_distributed()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_pretrained_with_each_engine_fine_tunes_and_evaluates(engine, pretrained, assets, tmp_path):
    ckpt = pretrained / engine / "checkpoints" / "step_0000002"
    assert json.loads((ckpt / "meta.json").read_text())["format"] == FORMATS[engine]
    cfg = sft_config(pretrained / engine, tmp_path / "sft", assets)  # the run dir: its latest checkpoint
    result = run_cli_sft(cfg)
    assert result.stopped == "max_steps" and result.step == 2
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    # step 1 starts from the pre-trained weights: its loss is the loss of those weights on batch 0
    assert train_rows[0]["loss"] == pytest.approx(expected_first_loss(cfg, ckpt), rel=1e-4)
    assert any("eval_loss" in r for r in rows) and (tmp_path / "sft" / "hf" / "model.safetensors").is_file()

    ecfg = EvalConfig(checkpoint=str(tmp_path / "sft"), device="cpu",
                      data=DataConfig(source="files", paths=[assets["text"]], eval_paths=[assets["text"]],
                                      seq_len=32, cache_dir=assets["cache"], tokenize_workers=1),
                      perplexity=PerplexityOptions(eval_tokens=256, micro_batch_size=4),
                      # lm-eval once (its start-up costs seconds); tests/eval/test_downstream.py checks its numbers
                      downstream=DownstreamConfig(tasks=["arc_easy"] if engine == "deepspeed" else [], limit=2))
    out = evaluate(ecfg)
    saved = json.loads((tmp_path / "sft" / "eval.json").read_text())
    assert saved["perplexity"]["eval_tokens"] == 256 and saved["perplexity"]["eval_ppl"] > 1
    assert saved["model"]["kind"] == "hf" and saved["model"]["norm_type"] == "pre_ln"
    if engine == "deepspeed":
        assert saved["downstream"]["arc_easy"]["n"] == 2
        assert out["downstream"]["average"] == saved["downstream"]["average"]
    # cod-eval also reads the engine-native pre-training checkpoint itself (no HF export needed)
    ecfg.checkpoint, ecfg.tokenizer, ecfg.run_dir = str(ckpt), assets["tok"], str(tmp_path / "eval-pre")
    ecfg.downstream = DownstreamConfig(tasks=[])
    raw = evaluate(ecfg)
    assert raw["model"]["kind"] == "checkpoint" and raw["perplexity"]["eval_ppl"] > 1


@pytest.mark.slow
def test_sft_runs_under_fsdp_and_resumes(pretrained, assets, tmp_path):
    cfg = sft_config(pretrained / "fsdp", tmp_path / "sft", assets, engine="fsdp")
    assert run_cli_sft(cfg).step == 2
    cfg.train.max_steps = 3  # resume=auto continues from step 2 with the same data order
    result = run_cli_sft(cfg)
    assert result.step == 3
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3]
