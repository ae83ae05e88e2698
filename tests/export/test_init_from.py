"""cod-pretrain init_from=: shipped checkpoints that map onto cod-train load with their logits; the rest are
refused with the reason before any work; export -> init_from gives back the same logits."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cod_train.config import ConfigError, PretrainConfig
from cod_train.engine.export import save_hf
from cod_train.runs.init_from import apply_init_from
from cod_train.runs.pretrain import build_model_for
from tests.helpers.models import VOCAB, tiny_model

from .conftest import rel_diff

IDS = torch.tensor([[5, 17, 3, 44, 9, 81, 23, 60, 2, 11]])
SHAPE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def _init_from(path) -> tuple[PretrainConfig, torch.nn.Module]:
    cfg, overrides = apply_init_from(PretrainConfig(init_from=str(path)))
    model = build_model_for(cfg, VOCAB, overrides).eval()
    return cfg, model


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("norm_type", ["lns", "post_ln", "pre_ln"])
def test_export_then_init_from_gives_the_same_logits(tmp_path, norm_type):
    trained = tiny_model(random_norms=True, norm_type=norm_type)
    save_hf(trained, tmp_path / "export")  # lns, pre_ln: LlamaForCausalLM; post_ln: remote code (cod_llama)
    cfg, model = _init_from(tmp_path / "export")
    assert rel_diff(_logits(model), _logits(trained)) <= 1e-5
    assert cfg.model.num_hidden_layers == 4 and cfg.model.hidden_size == 32
    assert cfg.model.norm_type == ("post_ln" if norm_type == "post_ln" else "pre_ln")


def test_qwen2_checkpoint_maps_with_its_biases_and_tokenizer(tmp_path):
    torch.manual_seed(0)
    ref = Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 1:
                p.add_(torch.rand_like(p))  # biases and norms off their init
    ref.save_pretrained(tmp_path / "qwen2")
    from cod_train.data.tokenizer import train_bpe

    train_bpe(iter(["a b c d e f"] * 20), 270).save_pretrained(tmp_path / "qwen2")
    cfg, model = _init_from(tmp_path / "qwen2")
    assert rel_diff(_logits(model), _logits(ref)) <= 1e-5
    assert cfg.data.tokenizer == str(tmp_path / "qwen2")
    assert len(AutoTokenizer.from_pretrained(cfg.data.tokenizer)) > 256


def test_what_does_not_map_is_refused_with_the_reason(tmp_path):
    MistralForCausalLM(MistralConfig(**SHAPE, sliding_window=16)).save_pretrained(tmp_path / "mistral")
    with pytest.raises(ConfigError, match="sliding-window attention"):
        apply_init_from(PretrainConfig(init_from=str(tmp_path / "mistral")))
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=VOCAB)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="model_type 'gpt2' is not one of"):
        apply_init_from(PretrainConfig(init_from=str(tmp_path / "gpt2")))


def test_cli_refuses_before_any_work(tmp_path, monkeypatch, capsys):
    from cod_train.cli import pretrain

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["cod-pretrain", f"run_dir={run_dir}", f"init_from={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit) as exc:
        pretrain.main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and "init_from=" in lines[0]
    assert not run_dir.exists()
