"""Every export and every checkpoint carries the tokenizer's bos / eos / pad ids (not LlamaConfig's defaults
bos 1 / eos 2, which are `<|pad|>` and "!" in cod-train's tokenizer), so ``generate()`` stops at end of text."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cod_train.cli import export
from cod_train.config import ModelConfig
from cod_train.data.tokenizer import train_bpe
from cod_train.engine.export import save_hf
from cod_train.model import build_model
from tests.helpers.cli import run_command
from tests.helpers.models import TINY_AXES

PROMPT = "The history of the city"
STEPS = 6


def _ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _json_ids(path) -> dict:
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


def test_checkpoint_and_end_of_run_export_carry_the_tokenizers_ids(tiny_run):
    run = tiny_run()
    tok = AutoTokenizer.from_pretrained(run / "hf")
    want = _ids(tok)
    assert want == {"bos_token_id": None, "eos_token_id": 0, "pad_token_id": 1}  # train:<vocab>'s ids
    assert tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    for path in (run / "checkpoints" / "step_0000003" / "config.json", run / "hf" / "config.json",
                 run / "hf" / "generation_config.json"):
        assert _json_ids(path) == want, path


def _greedy(model, ids: torch.Tensor, steps: int) -> list[int]:
    """Plain greedy decoding (argmax of the full forward pass, no stopping rule)."""
    out = ids
    with torch.no_grad():
        for _ in range(steps):
            out = torch.cat([out, model(input_ids=out).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out[0, ids.shape[1]:].tolist()


def _first_new_token(prompt: list[int], continuation: list[int], avoid: int) -> int:
    """k: the first step (1-based) whose greedy token appears neither before it nor in the prompt."""
    for k, token in enumerate(continuation, start=1):
        if token != avoid and token not in prompt and token not in continuation[:k - 1]:
            return k
    raise AssertionError(f"no new token in the greedy continuation {continuation}")


@pytest.mark.parametrize("fmt", ["llama", "remote_code", "cod_llama"])
def test_generate_on_a_cod_export_stops_at_the_tokenizers_eos(tiny_run, tmp_path, fmt):
    """The checkpoint is edited so that the EOS row of the output layer trades places with the row of the token
    greedy decoding emits first at step k: decoding then predicts EOS at step k, and must stop there."""
    run = tiny_run()
    tok = AutoTokenizer.from_pretrained(run / "hf")
    eos = tok.eos_token_id
    reference = AutoModelForCausalLM.from_pretrained(run / "hf", dtype=torch.float32).eval()
    prompt = tok(PROMPT, return_tensors="pt").input_ids
    continuation = _greedy(reference, prompt, STEPS)
    k = _first_new_token(prompt[0].tolist(), continuation, eos)
    assert eos not in continuation[:k]

    ckpt = shutil.copytree(run / "checkpoints" / "step_0000003", tmp_path / "step_0000003")
    weights = load_file(str(ckpt / "model.safetensors"))
    head = weights["lm_head.weight"]
    head[[eos, continuation[k - 1]]] = head[[continuation[k - 1], eos]]
    save_file(weights, str(ckpt / "model.safetensors"))

    out = tmp_path / "export"
    assert run_command(export.main, "cod-export", f"checkpoint={ckpt}", f"out={out}", f"format={fmt}") == 0
    trust = {"trust_remote_code": True} if fmt == "remote_code" else {}
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **trust).eval()
    assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(out).eos_token_id == eos
    assert _json_ids(out / "config.json") == _ids(tok)
    generated = model.generate(prompt, max_new_tokens=STEPS + 4, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert generated == [*continuation[:k - 1], eos]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter([f"tokens of text number {i}, in a tiny corpus. " * 2 for i in range(200)]), 300)


@pytest.mark.parametrize(("fmt", "scheme"), [("qwen3", {"norm_type": "lns", "qk_norm": "head"}),
                                             ("olmo2", {"norm_type": "reordered_ln", "qk_norm": "full"}),
                                             ("gguf", {"norm_type": "pre_ln"})])
def test_cod_export_of_every_shipped_format_carries_the_tokenizers_ids(tmp_path, bpe, fmt, scheme):
    """An HF directory of cod-train's own model (``cod_llama``, saved without a tokenizer's ids in its config)
    exported by cod-export: the format's config.json, generation_config.json and the GGUF metadata."""
    source = tmp_path / "source"
    save_hf(build_model(ModelConfig(**TINY_AXES, **scheme), len(bpe)), source, fmt="cod_llama")
    bpe.save_pretrained(str(source))
    config = json.loads((source / "config.json").read_text())
    config.update(bos_token_id=1, eos_token_id=2, pad_token_id=None)  # as exports before the fix wrote them
    (source / "config.json").write_text(json.dumps(config))

    out = tmp_path / "out"
    assert run_command(export.main, "cod-export", f"checkpoint={source}", f"out={out}", f"format={fmt}") == 0
    want = _ids(bpe)
    assert _json_ids(out / "config.json") == want
    assert _json_ids(out / "generation_config.json") == want
    if fmt == "gguf":
        import gguf

        reader = gguf.GGUFReader(str(out / "model-f16.gguf"))
        fields = {key: int(reader.fields[f"tokenizer.ggml.{key}"].contents())
                  for key in ("eos_token_id", "padding_token_id") if f"tokenizer.ggml.{key}" in reader.fields}
        assert fields == {"eos_token_id": want["eos_token_id"], "padding_token_id": want["pad_token_id"]}

